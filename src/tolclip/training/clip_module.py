"""The Lightning training module: contrastive image–caption training of a `towers.CLIP`."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from tolclip.core.captions import TEXT_TYPES
from tolclip.models.freeze import lock_towers
from tolclip.models.loss import ClipLoss
from tolclip.models.pretrained import load_into
from tolclip.training.feature_cache import MicroBatch, feature_cache_step
from tolclip.training.schedule import ScheduledModule


class CLIPLitModule(ScheduledModule):
    """Trains a CLIP net with the CLIP loss.

    `mixed_per` decides how the `mixed` text type is drawn when the batch carries all five captions
    ([B, 5, L]): "step" picks one text type for the whole global batch (BioCLIP's reference does
    this; the draw is seeded by the step, so every DDP rank agrees) and "sample" picks per image.
    `patch_dropout` (FLIP, training only) and `compile` (`torch.compile` of each tower in place) are
    throughput options: eval outputs, parameter names and checkpoints are the same without them.
    `accum_freq` K > 1 makes one optimiser step of K loader batches whose contrastive loss is taken over
    all of them together (`feature_cache`), so every negative is kept; `grad_clip` clips the gradient
    norm in both modes (Lightning's `trainer.gradient_clip_val` only works with accum_freq 1).
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
        init_from: str | None = None,
        init_quick_gelu: bool | None = None,
        init_sha256: str | None = None,
        lock_image: bool = False,
        lock_image_unlocked_groups: int = 0,
        lock_text: bool = False,
        lock_text_unlocked_layers: int = 0,
        patch_dropout: float = 0.0,
        compile: bool = False,
        accum_freq: int = 1,
        grad_clip: float | None = None,
    ):
        super().__init__()
        if mixed_per not in ("step", "sample"):
            raise ValueError(f"mixed_per must be 'step' or 'sample', not {mixed_per!r}")
        # accum_freq > 1 takes several backward passes per optimiser step: manual optimisation.
        self.automatic_optimization = _check_accumulation(accum_freq, grad_clip) == 1
        self._micro_batches: list[MicroBatch] = []
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        if init_from:  # released weights before step 0, however the module is built (init_sha256: a record)
            load_into(self.net, init_from, init_quick_gelu)
        lock_towers(self.net, lock_image, lock_image_unlocked_groups, lock_text, lock_text_unlocked_layers)
        self.loss_fn = ClipLoss(**dict(loss or {}))
        if grad_checkpointing:
            self.net.set_grad_checkpointing(True)
        # Throughput options last, on the final net: neither changes parameter names or the net config.
        self.net.set_patch_dropout(patch_dropout)
        if not isinstance(compile, bool):
            raise ValueError(f"model.compile must be true or false, got {compile!r}")
        if compile:
            self.net.compile_towers()

    def setup(self, stage: str) -> None:
        # Rank and world size are only known once the strategy has launched the processes.
        self.loss_fn = ClipLoss(
            **dict(self.hparams.loss or {}), rank=self.global_rank, world_size=self.trainer.world_size
        )

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.net(images, tokens)

    def select_text(self, text: torch.Tensor, step: int, micro: int = 0) -> tuple[torch.Tensor, str]:
        """Pick the tokens to train on at `step` from a [B, L] or all-types [B, 5, L] batch.

        `micro` numbers the micro-batches of one accumulated step: "step" draws once per optimiser
        step whatever it is, "sample" draws afresh for each micro-batch."""
        if text.ndim == 2:
            return text, "single"
        if self.hparams.mixed_per == "step":
            idx = random.Random(self.hparams.seed * 1_000_003 + step).randrange(text.shape[1])
            return text[:, idx], TEXT_TYPES[idx]
        key = (self.hparams.seed, step, self.global_rank) + ((micro,) if micro else ())
        gen = torch.Generator().manual_seed(hash(key) & 0x7FFFFFFF)
        idx = torch.randint(text.shape[1], (text.shape[0],), generator=gen).to(text.device)
        return text[torch.arange(text.shape[0], device=text.device), idx], "per_sample"

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.hparams.accum_freq > 1:
            return self._accumulate(batch)
        tokens, drawn = self.select_text(batch["text"], self.global_step)
        image_features, text_features, logit_scale = self.net(batch["image"], tokens)
        loss = self.loss_fn(image_features, text_features, logit_scale)
        self._log_step(loss, logit_scale.detach(), drawn, batch["image"].shape[0])
        return loss

    def _log_step(self, loss: torch.Tensor, logit_scale: torch.Tensor, drawn: str, bs: int) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/logit_scale", logit_scale, batch_size=bs)
        if drawn in TEXT_TYPES:  # `mixed` drawn per step: which caption type this step trained on
            self.log("train/text_type_index", float(TEXT_TYPES.index(drawn)), batch_size=bs)

    def _accumulate(self, batch: dict) -> None:
        """accum_freq K > 1: keep each micro-batch; on the K-th, one feature-cache step over all K."""
        tokens, drawn = self.select_text(batch["text"], self.global_step, len(self._micro_batches))
        self._micro_batches.append((batch["image"], tokens))
        if len(self._micro_batches) < self.hparams.accum_freq:
            return None
        micro_batches, self._micro_batches = self._micro_batches, []
        # Every backward but the last skips DDP's gradient all-reduce (single device: nothing to skip).
        no_sync = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        step = feature_cache_step(self.net, self.loss_fn, micro_batches, self.manual_backward, no_sync)
        optimizer = self.optimizers()
        optimizer.step()  # clipping (model.grad_clip) runs in on_before_optimizer_step, after AMP unscaling
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self._log_step(step.loss, step.logit_scale, drawn, step.samples)
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.hparams.grad_clip:
            self.clip_gradients(optimizer, self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        if self._micro_batches:  # an epoch whose length is not a multiple of accum_freq
            rank_zero_warn(
                f"dropped the last {len(self._micro_batches)} batch(es) of the epoch: an optimiser step takes "
                f"model.accum_freq={self.hparams.accum_freq} batches (make the epoch a multiple of it)"
            )
            self._micro_batches = []

    def steps_per_epoch(self, batches: int) -> int:
        if self.hparams.accum_freq > 1:
            return batches // self.hparams.accum_freq  # a short last group is dropped, not stepped
        return super().steps_per_epoch(batches)

    def configure_callbacks(self) -> list:
        # The earliest hook with the trainer attached: Lightning validates manual optimisation before
        # `setup`, and its messages cannot point at model.accum_freq / model.grad_clip.
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} would shrink the contrastive "
                "batch (each micro-batch only sees its own negatives): use model.accum_freq instead, which "
                "keeps every negative"
            )
        if trainer.gradient_clip_val and (self.hparams.accum_freq > 1 or self.hparams.grad_clip):
            raise ValueError(
                f"trainer.gradient_clip_val={trainer.gradient_clip_val} cannot be used with model.accum_freq > 1 "
                "or together with model.grad_clip: set model.grad_clip only"
            )
        return []

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Keep exp(logit_scale) <= max (100), as CLIP does, after every optimiser step.
        self.net.clamp_logit_scale_()


def _check_accumulation(accum_freq: int, grad_clip: float | None) -> int:
    if isinstance(accum_freq, bool) or not isinstance(accum_freq, int) or accum_freq < 1:
        raise ValueError(f"model.accum_freq must be a whole number >= 1, got {accum_freq!r}")
    if grad_clip is not None and (
        isinstance(grad_clip, bool) or not isinstance(grad_clip, int | float) or grad_clip <= 0
    ):
        raise ValueError(f"model.grad_clip must be a positive number or null, got {grad_clip!r}")
    return accum_freq
