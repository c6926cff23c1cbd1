"""Numbers every stage must agree on."""

# OpenAI CLIP's image normalisation: BioCLIP keeps it, so pretrained towers see what they were trained on.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
