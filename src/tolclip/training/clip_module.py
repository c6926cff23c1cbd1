"""The Lightning training module: contrastive image–caption training of a `towers.CLIP`."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tolclip.core.captions import TEXT_TYPES
from tolclip.models.loss import ClipLoss
from tolclip.training.schedule import ScheduledModule


class CLIPLitModule(ScheduledModule):
    """Trains a CLIP net with the CLIP loss.

    `mixed_per` decides how the `mixed` text type is drawn when the batch carries all five captions
    ([B, 5, L]): "step" picks one text type for the whole global batch (BioCLIP's reference does
    this; the draw is seeded by the step, so every DDP rank agrees) and "sample" picks per image.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        loss: Mapping[str, Any] | None = None,
        mixed_per: str = "step",
        grad_checkpointing: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if mixed_per not in ("step", "sample"):
            raise ValueError(f"mixed_per must be 'step' or 'sample', not {mixed_per!r}")
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.loss_fn = ClipLoss(**dict(loss or {}))
        if grad_checkpointing:
            self.net.set_grad_checkpointing(True)

    def setup(self, stage: str) -> None:
        # Rank and world size are only known once the strategy has launched the processes.
        self.loss_fn = ClipLoss(
            **dict(self.hparams.loss or {}), rank=self.global_rank, world_size=self.trainer.world_size
        )

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.net(images, tokens)

    def select_text(self, text: torch.Tensor, step: int) -> tuple[torch.Tensor, str]:
        """Pick the tokens to train on at `step` from a [B, L] or all-types [B, 5, L] batch."""
        if text.ndim == 2:
            return text, "single"
        if self.hparams.mixed_per == "step":
            idx = random.Random(self.hparams.seed * 1_000_003 + step).randrange(text.shape[1])
            return text[:, idx], TEXT_TYPES[idx]
        gen = torch.Generator().manual_seed(hash((self.hparams.seed, step, self.global_rank)) & 0x7FFFFFFF)
        idx = torch.randint(text.shape[1], (text.shape[0],), generator=gen).to(text.device)
        return text[torch.arange(text.shape[0], device=text.device), idx], "per_sample"

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens, drawn = self.select_text(batch["text"], self.global_step)
        image_features, text_features, logit_scale = self.net(batch["image"], tokens)
        loss = self.loss_fn(image_features, text_features, logit_scale)
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/logit_scale", logit_scale.detach(), batch_size=bs)
        if drawn in TEXT_TYPES:  # `mixed` drawn per step: which caption type this step trained on
            self.log("train/text_type_index", float(TEXT_TYPES.index(drawn)), batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Keep exp(logit_scale) <= max (100), as CLIP does, after every optimiser step.
        self.net.clamp_logit_scale_()
