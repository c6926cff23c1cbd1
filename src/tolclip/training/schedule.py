"""What every tolclip training module shares: AdamW over the net's own weight-decay groups, a linear
warmup then cosine learning rate, and epoch-seeded data (so a resumed run replays its epoch)."""

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
