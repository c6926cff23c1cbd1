"""Networks: the CLIP towers, the supervised classifier, the contrastive loss, open_clip interop and safe model I/O."""
