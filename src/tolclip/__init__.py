"""tolclip: BioCLIP-style CLIP models for the tree of life."""

__version__ = "0.1.0"
