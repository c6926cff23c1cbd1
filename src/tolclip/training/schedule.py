"""What every tolclip training module shares: AdamW over the net's own weight-decay groups, a linear
warmup then cosine learning rate, and epoch-seeded data (the stateful train loader then resumes
mid-epoch exactly where a checkpoint left it)."""

from __future__ import annotations

import math

import lightning as L
import torch


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LR multiplier: linear warmup from 0, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def resolve_fused(value: object, device: torch.device) -> bool:
    """`model.optimizer.fused`: "auto" is PyTorch's fused AdamW kernel on CUDA (one kernel for all
    parameters instead of several per tensor) and the default multi-tensor loop elsewhere; true/false force it."""
    if value == "auto":
        return device.type == "cuda"
    if isinstance(value, bool):
        return value
    raise ValueError(f"model.optimizer.fused must be auto, true or false, got {value!r}")


class ScheduledModule(L.LightningModule):
    """What every tolclip training module shares: epoch seeding, AdamW + warmup-cosine.

    Needs `self.net.param_groups(weight_decay)` and `optimizer` / `scheduler` hyperparameters.
    """

    def on_train_epoch_start(self) -> None:
        # Resampling and augmentation seeds follow the epoch (the loader state then finds the batch).
        dm = getattr(self.trainer, "datamodule", None)
        if hasattr(dm, "set_epoch"):
            dm.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)

    def steps_per_epoch(self, batches: int) -> int:
        """Optimiser steps in an epoch of `batches` loader batches (Lightning also steps on a short last group)."""
        return math.ceil(batches / self.trainer.accumulate_grad_batches)

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
        total = trainer.max_epochs * self.steps_per_epoch(per_epoch)
        return min(total, trainer.max_steps) if trainer.max_steps > 0 else total

    def configure_optimizers(self):
        opt = dict(self.hparams.optimizer)
        # No decay on biases, norms, logit scale (and embeddings unless decay_embeddings, open_clip's
        # rule): the net knows which those are.
        include_embeddings = not opt.pop("decay_embeddings", False)
        groups = self.net.param_groups(opt.pop("weight_decay", 0.0), include_embeddings)
        device = next((p.device for g in groups for p in g["params"]), self.device)
        optimizer = torch.optim.AdamW(
            groups,
            lr=opt.pop("lr"),
            betas=tuple(opt.pop("betas", (0.9, 0.98))),
            eps=opt.pop("eps", 1e-6),
            fused=resolve_fused(opt.pop("fused", "auto"), device),
            **opt,
        )
        sched = dict(self.hparams.scheduler)
        total = self.total_steps()
        factor = warmup_cosine(
            int(sched.get("warmup_steps", 0)), total, float(sched.get("min_lr_ratio", 0.0))
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
