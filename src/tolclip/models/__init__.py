"""Networks: the CLIP towers and their typed configs, the supervised classifier, the contrastive loss,
open_clip interop (configs, state dicts, weights, export), our Lightning checkpoints and safe model I/O."""
