"""The supervised baseline's net: the CLIP image tower with a linear species head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tolclip.models.towers import ImageTower, WeightDecayRule


class SpeciesClassifier(WeightDecayRule, nn.Module):
    """An `ImageTower` (as in `towers.CLIP`) with a linear species head on its pooled embedding."""

    def __init__(self, embed_dim: int, vision: Mapping[str, Any], num_classes: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        # Named `visual` as in CLIP, so weight-decay names and tower weights line up between the two.
        self.visual = ImageTower(embed_dim, **dict(vision))
        self.head = nn.Linear(embed_dim, num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> species logits ``[B, num_classes]``."""
        return self.head(self.visual(images))
