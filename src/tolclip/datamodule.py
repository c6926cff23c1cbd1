"""Streaming Tree-of-Life shards into training batches and evaluation sets.

Shards are webdataset tars (see docs/shards.md). The training stream is split across DDP ranks and
loader workers, shuffled through a buffer, optionally resampled forever with a fixed epoch length,
and tokenized inside the workers. A bad sample (undecodable image, no caption and no taxon) is
skipped and *counted* in a counter shared by the loader worker processes, so the training module
can log how many samples each rank lost.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import lightning as L
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms as T

from tolclip.captions import CAPTION_FILES, MIXED, TEXT_TYPES, caption, check_text_type
from tolclip.shards import IMAGE_FILE, TAXON_FILE, decode_taxon, has_tar_end
from tolclip.taxonomy import Taxon
from tolclip.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_KEYS = (IMAGE_FILE, "jpeg", "png", "webp")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern, a glob, a `::`-joined string or a list of those.

    `pipe:` commands and remote URLs are passed through untouched; local paths must exist, so a
    typo fails here with the pattern in the message rather than as an empty epoch later.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for url in wds.shardlists.expand_urls(str(item)):
            if url.startswith("pipe:") or "://" in url:
                urls.append(url)
            elif any(ch in url for ch in "*?["):
                urls.extend(sorted(glob.glob(os.path.expanduser(url))))
            else:
                urls.append(os.path.expanduser(url))
    missing = [u for u in urls if not (u.startswith("pipe:") or "://" in u) and not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, e.g. {missing[0]} (from {spec!r})")
    if not urls:
        raise FileNotFoundError(f"no shards match {spec!r}")
    return urls


def _worker_info() -> tuple[int, int, int, int]:
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return rank, world, worker, workers


class _BadSample(Exception):
    pass


def train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0)) -> Callable:
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def eval_transform(image_size: int) -> Callable:
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def decode_image(raw: bytes) -> Image.Image:
    with Image.open(io.BytesIO(raw)) as img:
        img.load()  # forces the full decode so a truncated file fails here, not in a transform
        return img.convert("RGB")


def sample_texts(sample: dict, text_types: Sequence[str]) -> list[str]:
    """Caption per text type: the shard's own text file, else built from its taxon.json."""
    taxon: Taxon | None = None
    out = []
    for tt in text_types:
        raw = sample.get(CAPTION_FILES[tt])
        if raw:
            out.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            continue
        if taxon is None:
            if TAXON_FILE not in sample:
                raise _BadSample(f"{sample.get('__key__')}: no {CAPTION_FILES[tt]} and no {TAXON_FILE}")
            taxon = decode_taxon(sample[TAXON_FILE])
        if not taxon.taxonomic_name and not taxon.common:
            raise _BadSample(f"{sample.get('__key__')}: empty taxon")
        out.append(caption(taxon, tt))
    return out


@dataclass
class StreamConfig:
    urls: list[str]
    batch_size: int
    image_transform: Callable
    text_types: tuple[str, ...] = ()  # empty: evaluation stream, taxa instead of tokens
    context_length: int = 77
    shuffle_buffer: int = 0
    resampled: bool = False
    batches_per_worker: int | None = None  # epoch length for resampled streams
    seed: int = 0
    partial: bool = True
    num_workers: int = 1  # loader processes sharing this stream (0 counts as 1)
    split_by_rank: bool = True  # False for evaluation, which runs on global rank 0 alone


class ShardStream(IterableDataset):
    """Iterates batches (dicts) from shards; one instance is copied into every loader worker."""

    def __init__(self, config: StreamConfig):
        super().__init__()
        self.cfg = config
        self.epoch = 0  # set by the DataModule each epoch so resampling differs between epochs
        # Shared memory, inherited by the loader workers: every process adds what it drops.
        self.skipped = mp.Value("q", 0)

    def _skip(self, reason: object) -> bool:
        with self.skipped.get_lock():
            self.skipped.value += 1
        log.warning("skipping unreadable sample or shard data: %s", reason)
        return True  # tells webdataset's handler protocol to continue

    def __len__(self) -> int:
        # Only resampled streams have a length: their epoch is fixed by config. Lightning reads it
        # (through the DataLoader) to size the schedule.
        if self.cfg.batches_per_worker is None:
            raise TypeError("finite shard streams have no known length")
        return self.cfg.batches_per_worker * self.cfg.num_workers

    def _shard_urls(self) -> Iterator[str]:
        rank, world, worker, workers = _worker_info()
        cfg = self.cfg
        if not cfg.split_by_rank:
            rank, world = 0, 1
        if cfg.resampled:
            # Each (rank, worker) draws shards independently; seeds differ per epoch.
            rng = random.Random(self._stream_seed())
            while True:
                yield rng.choice(cfg.urls)
        urls = list(cfg.urls)
        if cfg.shuffle_buffer:
            random.Random(cfg.seed + self.epoch).shuffle(urls)
        yield from urls[rank * workers + worker :: world * workers]

    def _checked_shards(self) -> Iterator[dict]:
        for url in self._shard_urls():
            if os.path.isfile(url) and not has_tar_end(url):
                self._skip(f"{url} is truncated (no end-of-archive marker): its tail is lost, the rest is read")
            yield {"url": url}

    def _stream_seed(self) -> int:
        rank, _, worker, _ = _worker_info()
        return hash((self.cfg.seed, self.epoch, rank if self.cfg.split_by_rank else 0, worker)) & 0x7FFFFFFF

    def _samples(self) -> Iterator[dict]:
        cfg = self.cfg
        seed = self._stream_seed()
        if get_worker_info() is not None:
            # Augmentations and shuffling depend only on (seed, epoch, rank, worker), so an epoch
            # replays identically after a resume. Not in the main process: that would reset the
            # trainer's own RNG.
            torch.manual_seed(seed)
            random.seed(seed)
        tokenizer = get_tokenizer(cfg.context_length) if cfg.text_types else None
        stream = wds.tarfile_to_samples(handler=self._skip)(self._checked_shards())
        if cfg.shuffle_buffer:
            stream = wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(seed))(stream)
        for sample in stream:
            try:
                raw = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
                if raw is None:
                    raise _BadSample(f"{sample.get('__key__')}: no image")
                image = cfg.image_transform(decode_image(raw))
                out: dict = {"image": image, "key": sample["__key__"]}
                if tokenizer is not None:
                    out["text"] = tokenizer(sample_texts(sample, cfg.text_types))
                else:
                    if TAXON_FILE not in sample:
                        raise _BadSample(f"{sample.get('__key__')}: no {TAXON_FILE}")
                    out["taxon"] = decode_taxon(sample[TAXON_FILE])
            except (_BadSample, OSError, ValueError, SyntaxError, json.JSONDecodeError) as exn:
                self._skip(exn)
                continue
            yield out

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        count = 0
        batch: list[dict] = []
        for sample in self._samples():
            batch.append(sample)
            if len(batch) == cfg.batch_size:
                yield collate(batch)
                batch = []
                count += 1
                if cfg.batches_per_worker is not None and count >= cfg.batches_per_worker:
                    return
        if batch and cfg.partial:
            yield collate(batch)


def collate(samples: list[dict]) -> dict:
    out: dict = {"image": torch.stack([s["image"] for s in samples]), "key": [s["key"] for s in samples]}
    if "text" in samples[0]:
        text = torch.stack([s["text"] for s in samples])  # [B, n_types, L]
        out["text"] = text[:, 0] if text.shape[1] == 1 else text
    if "taxon" in samples[0]:
        out["taxon"] = [s["taxon"] for s in samples]
    return out


class ShardDataModule(L.LightningDataModule):
    """Train stream plus named evaluation sets, all read from Tree-of-Life shards.

    `text_type` selects the caption (`mixed` tokenizes all five so the model can draw per step or
    per sample). `batch_size` is per device; `epoch_samples` is the global number of samples in one
    epoch of a resampled stream.
    """

    def __init__(
        self,
        train_shards: str | Sequence[str] | None,
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
    ):
        super().__init__()
        check_text_type(text_type)
        if resampled and train_shards is not None and not epoch_samples:
            raise ValueError("a resampled train stream needs epoch_samples (samples per epoch, all ranks)")
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
        self._train: ShardStream | None = None

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
        return max(1, math.ceil(self.epoch_samples / (self.batch_size * workers * self._world_size()))) * workers

    def train_stream(self) -> ShardStream:
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        per_epoch = self.train_batches_per_epoch()
        per_worker = None if per_epoch is None else per_epoch // max(1, self.num_workers)
        stream = ShardStream(
            StreamConfig(
                urls=expand_shards(self.train_shards),
                batch_size=self.batch_size,
                image_transform=train_transform(self.image_size, self.crop_scale),
                text_types=self.text_types,
                context_length=self.context_length,
                shuffle_buffer=self.shuffle_buffer,
                resampled=self.resampled,
                batches_per_worker=per_worker,
                seed=self.seed,
                partial=False,
                num_workers=max(1, self.num_workers),
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
        self.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0)
        return DataLoader(
            self._train,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )

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
            )
        )
        # Workers split the shard list, so more workers than shards would only sit idle.
        return DataLoader(stream, batch_size=None, num_workers=min(self.num_workers, len(urls)))
