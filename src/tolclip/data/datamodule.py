"""The Lightning DataModules: a training stream plus named evaluation sets, read from shards."""

from __future__ import annotations

import fcntl
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from tolclip.core.captions import MIXED, TEXT_TYPES, check_text_type
from tolclip.core.taxonomy import SpeciesKey, species_key
from tolclip.data.mixing import is_weighted, require_resampled, train_sources
from tolclip.data.shards import scan_species
from tolclip.data.stream import DataError, ShardLoader, ShardStream, StreamConfig, expand_shards
from tolclip.data.transforms import eval_transform, train_transform


def _check_options(pipe_timeout: Any, targets: Any) -> None:
    if not isinstance(pipe_timeout, int | float) or isinstance(pipe_timeout, bool) or pipe_timeout <= 0:
        raise ValueError(f"data.pipe_timeout must be a positive number of seconds, got {pipe_timeout!r}")
    if targets not in ("captions", "species"):
        raise ValueError(f"data.targets must be 'captions' or 'species', not {targets!r}")


class ShardDataModule(L.LightningDataModule):
    """Train stream plus named evaluation sets, all read from Tree-of-Life shards.

    `train_shards` is one shard set (pattern, glob or list) or named sources mixed by weight,
    `{name: {shards: ..., weight: ...}}` (see `tolclip.data.mixing`; needs `resampled`).
    `text_type` selects the caption (`mixed` tokenizes all five so the model can draw per step or
    per sample). `batch_size` is per device; `epoch_samples` is the global number of samples in one
    epoch of a resampled stream.

    `targets` is what a training batch carries beside its images: `captions` (tokens, for CLIP) or
    `species` (each sample's `species_key`, None without a species, for the supervised baseline).
    `generate` (kwargs of `build_synthetic_dataset`) makes `prepare_data` write the synthetic tree of
    life first: the embedded default data.

    Sizes and counts are checked here, so a bad one fails when the config is read. A stream that
    gets no usable sample in `max_consecutive_skips` attempts in a row, or an epoch that gives no
    batch, raises `DataError` naming the shards (see `tolclip.data.stream`).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str] | Mapping[str, Any] | None,
        eval_sets: dict[str, str | Sequence[str]] | None = None,
        text_type: str = "mixed",
        image_size: int = 224,
        context_length: int = 77,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        shuffle_buffer: int = 5000,
        resampled: bool = True,
        epoch_samples: int | None = None,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        seed: int = 0,
        targets: str = "captions",
        generate: Mapping[str, Any] | None = None,
        max_consecutive_skips: int = 2000,
        pipe_timeout: float = 600.0,
    ):
        super().__init__()
        check_text_type(text_type)
        _check_sizes(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            epoch_samples=epoch_samples,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            image_size=image_size,
            context_length=context_length,
            max_consecutive_skips=max_consecutive_skips,
        )
        _check_options(pipe_timeout, targets)
        _check_train_shards(train_shards, resampled, epoch_samples)
        self.train_shards = train_shards
        self.eval_sets = dict(eval_sets or {})
        self.text_type = text_type
        self.text_types = TEXT_TYPES if text_type == MIXED else (text_type,)
        self.image_size = image_size
        self.context_length = context_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.epoch_samples = epoch_samples
        self.crop_scale = tuple(crop_scale)
        self.seed = seed
        self.targets = targets
        self.generate = dict(generate) if generate else None
        self.max_consecutive_skips = max_consecutive_skips
        self.pipe_timeout = float(pipe_timeout)
        self._train: ShardStream | None = None

    def prepare_data(self) -> None:
        """Write the synthetic shards when configured (once: a complete set is reused).

        Lightning calls this on one process per node; the file lock also keeps separate runs
        started together (a sweep) from writing the same folder at once.
        """
        if not self.generate:
            return
        from tolclip.data.synthetic import build_synthetic_dataset

        out_dir = Path(self.generate["out_dir"])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            build_synthetic_dataset(**self.generate)

    @property
    def skipped_samples(self) -> int:
        """Training samples this rank has skipped as unreadable in the current epoch."""
        return int(self._train.skipped.value) if self._train is not None else 0

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_batches_per_epoch(self) -> int | None:
        """Batches per epoch on each rank for a resampled stream (None for a finite one).

        Known without building a loader, so the LR schedule can be sized before any data is read.
        """
        if not self.resampled:
            return None
        workers = max(1, self.num_workers)
        return (
            max(1, math.ceil(self.epoch_samples / (self.batch_size * workers * self._world_size()))) * workers
        )

    def train_shard_sets(self) -> list[tuple[str, Any]]:
        """(config key, shard spec) of each training source: one for a plain shard set."""
        if self.train_shards is None:
            return []
        return [(s.key, s.shards) for s in train_sources(self.train_shards)]

    def _train_source_urls(self) -> tuple[list[str], tuple[tuple[str, tuple[str, ...], float], ...]]:
        """All training shard URLs, and the sources mixed by weight (none for a plain shard set)."""
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        if not is_weighted(self.train_shards):
            return expand_shards(self.train_shards), ()
        sources = []
        for source in train_sources(self.train_shards):
            try:
                urls = tuple(expand_shards(source.shards))
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{source.key}: {err}") from None
            sources.append((source.name, urls, source.weight))
        return list(dict.fromkeys(u for _, urls, _ in sources for u in urls)), tuple(sources)

    def train_stream(self) -> ShardStream:
        urls, sources = self._train_source_urls()
        per_epoch = self.train_batches_per_epoch()
        per_worker = None if per_epoch is None else per_epoch // max(1, self.num_workers)
        stream = ShardStream(
            StreamConfig(
                urls=urls,
                sources=sources,
                batch_size=self.batch_size,
                image_transform=train_transform(self.image_size, self.crop_scale),
                # Species targets need the taxon, not tokens of captions the classifier never reads.
                text_types=self.text_types if self.targets == "captions" else (),
                context_length=self.context_length,
                shuffle_buffer=self.shuffle_buffer,
                resampled=self.resampled,
                batches_per_worker=per_worker,
                seed=self.seed,
                partial=False,
                num_workers=max(1, self.num_workers),
                max_consecutive_skips=self.max_consecutive_skips,
                pipe_timeout=self.pipe_timeout,
            )
        )
        return stream

    def set_epoch(self, epoch: int) -> None:
        """Called at each epoch start; workers are re-created per epoch and copy the stream then."""
        if self._train is not None:
            self._train.epoch = epoch
            with self._train.skipped.get_lock():
                self._train.skipped.value = 0

    def train_dataloader(self) -> DataLoader:
        self._train = self.train_stream()
        # On resume the loader is built (and its first iterator started) before the first epoch
        # hook runs, so start at the epoch about to run: Lightning counts it as "processed"
        # epochs, which is what it gives samplers too (current_epoch lags after a resume).
        self.set_epoch(
            self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        )
        loader = ShardLoader(
            self._train,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )
        # A checkpoint keeps the stream's place after the batches the loop has trained on, not
        # after those the loader has already handed on ahead of it.
        loader.consumed = self._train_batches_used
        return loader

    def _train_batches_used(self) -> int | None:
        """Batches of the current epoch the training loop has run (where Lightning resumes)."""
        if self.trainer is None:
            return None
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def eval_dataloader(self, name: str) -> DataLoader:
        """Loader for one named evaluation set: images with their taxa, in shard order."""
        if name not in self.eval_sets:
            raise KeyError(f"no eval set {name!r}; configured: {sorted(self.eval_sets)}")
        urls = expand_shards(self.eval_sets[name])
        stream = ShardStream(
            StreamConfig(
                urls=urls,
                batch_size=self.eval_batch_size,
                image_transform=eval_transform(self.image_size),
                split_by_rank=False,
                max_consecutive_skips=self.max_consecutive_skips,
                pipe_timeout=self.pipe_timeout,
            )
        )
        # Workers split the shard list, so more workers than shards would only sit idle.
        return ShardLoader(stream, batch_size=None, num_workers=min(self.num_workers, len(urls)))

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Taxa become species keys (tuples of names) before Lightning moves the batch to the
        # device: it rebuilds every dataclass it meets, and a Taxon is frozen.
        if self.targets == "species" and "taxon" in batch:
            batch = dict(batch)
            batch["species"] = [species_key(t) for t in batch.pop("taxon")]
        return batch

    def species_classes(self) -> list[SpeciesKey]:
        """The label vocabulary: every species in the training shards, sorted."""
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        return scan_species(self._train_source_urls()[0])


# Sizes and counts: (lowest allowed value, whether None means "use the default").
_SIZES = {
    "batch_size": (1, False),
    "eval_batch_size": (1, True),
    "epoch_samples": (1, True),
    "num_workers": (0, False),
    "shuffle_buffer": (0, False),
    "image_size": (1, False),
    "context_length": (1, False),
    "max_consecutive_skips": (1, False),
}


def _check_train_shards(train_shards: object, resampled: bool, epoch_samples: int | None) -> None:
    if train_shards is None:
        return
    if resampled and not epoch_samples:
        raise ValueError("a resampled train stream needs epoch_samples (samples per epoch, all ranks)")
    if is_weighted(train_shards):
        train_sources(train_shards)  # a bad weight or key fails when the config is read
        require_resampled(resampled)


def _check_sizes(**values: object) -> None:
    """Reject a bad size when the config is read: a batch of -8 would otherwise never fill (a
    hang) and a 0 would crash deep in the loader."""
    for name, value in values.items():
        low, optional = _SIZES[name]
        if value is None and optional:
            continue
        # bool is an int in Python, but `batch_size: true` is a typo, not a size.
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind = "a positive integer" if low == 1 else "a non-negative integer"
            raise ValueError(f"data.{name} must be {kind}, got {value!r}")


__all__ = ["DataError", "ShardDataModule", "expand_shards"]
