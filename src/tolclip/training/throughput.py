"""Training throughput as scalars for every logger: samples/s and the share of wall time spent waiting
for data.

Over a window of N loader batches (`every_n_batches`, default the trainer's `log_every_n_steps`):

* `throughput/samples_per_s`: samples of all ranks (this rank's count × world size) / window wall time;
* `throughput/data_wait_frac`: the time between the end of one train batch and the start of the next
  (the loader's `next()`, the host-to-device copy, and whatever else runs between steps) / window
  wall time. Near 0: the model is the bottleneck; near 1: the data is.

Only host clocks are read, no device synchronisation: on a GPU a single step's end is when its work
was queued, but over a window of many steps the two agree (the queue cannot run ahead for long).
A window starts with its epoch (so loader start-up counts as waiting) and never spans epoch ends
(checkpointing, evaluation).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its images (or of its first tensor)."""
    if isinstance(batch, dict):
        value = batch.get("image", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
    elif isinstance(batch, list | tuple) and batch:
        value = batch[0]
    else:
        value = batch
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() else 0


class Throughput(Callback):
    """Logs samples/s and the data-wait fraction every N loader batches (module doc); `last` holds the
    latest figures."""

    def __init__(self, every_n_batches: int | None = None):
        super().__init__()
        if every_n_batches is not None and every_n_batches < 1:
            raise ValueError(
                f"callbacks.throughput.every_n_batches must be >= 1 or null; got {every_n_batches}"
            )
        self.every_n_batches = every_n_batches
        self.last: dict[str, float] = {}
        self._start(None)

    def _start(self, now: float | None) -> None:
        self._window_start = now
        self._last_end = now
        self._wait = 0.0
        self._samples = 0
        self._batches = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(time.perf_counter())

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, _: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is None:  # a batch without an epoch start (a loop we do not know): start here
            self._start(now)
        self._wait += now - self._last_end

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, _: int
    ) -> None:
        now = time.perf_counter()
        self._last_end = now
        self._samples += batch_size(batch)
        self._batches += 1
        if self._batches < (self.every_n_batches or max(1, trainer.log_every_n_steps)):
            return
        elapsed = now - self._window_start
        if elapsed > 0:
            self.last = {
                "throughput/samples_per_s": self._samples * trainer.world_size / elapsed,
                "throughput/data_wait_frac": min(1.0, self._wait / elapsed),
            }
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(self.last, step=trainer.global_step)
        self._start(now)
