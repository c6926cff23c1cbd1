"""The Lightning training module: contrastive image–caption training of a `towers.CLIP`."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from tolclip.core.captions import TEXT_TYPES
from tolclip.models.loss import ClipLoss


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LR multiplier: linear warmup from 0, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ScheduledModule(L.LightningModule):
    """What every tolclip training module shares: epoch seeding, AdamW + warmup-cosine.

    Needs `self.net.param_groups(weight_decay)` and `optimizer` / `scheduler` hyperparameters.
    """

    def on_train_epoch_start(self) -> None:
        # Resampling and augmentation seeds follow the epoch, so a resumed run replays it exactly.
        dm = getattr(self.trainer, "datamodule", None)
        if hasattr(dm, "set_epoch"):
            dm.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)

    def total_steps(self) -> int:
        """Optimiser steps in the whole run, for the schedule.

        Taken from the DataModule's declared epoch length when it has one: asking the trainer
        (`estimated_stepping_batches`) would build the train loader before a resumed checkpoint's
        epoch is restored, and the first resumed epoch would replay epoch 0's data.
        """
        trainer = self.trainer
        per_epoch = getattr(trainer.datamodule, "train_batches_per_epoch", lambda: None)()
        if per_epoch is None or trainer.max_epochs is None or trainer.max_epochs < 0:
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total) or total <= 0:
                raise ValueError(
                    "the run length is unknown (a finite shard stream has no length): set trainer.max_steps, "
                    "or use data.resampled=true with data.epoch_samples"
                )
            return int(total)
        total = trainer.max_epochs * math.ceil(per_epoch / trainer.accumulate_grad_batches)
        return min(total, trainer.max_steps) if trainer.max_steps > 0 else total

    def configure_optimizers(self):
        opt = dict(self.hparams.optimizer)
        # No decay on biases, norms, logit scale and embeddings: the net knows which those are.
        optimizer = torch.optim.AdamW(
            self.net.param_groups(opt.pop("weight_decay", 0.0)),
            lr=opt.pop("lr"),
            betas=tuple(opt.pop("betas", (0.9, 0.98))),
            eps=opt.pop("eps", 1e-6),
            **opt,
        )
        sched = dict(self.hparams.scheduler)
        total = self.total_steps()
        factor = warmup_cosine(
            int(sched.get("warmup_steps", 0)), total, float(sched.get("min_lr_ratio", 0.0))
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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
