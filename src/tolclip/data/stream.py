"""The shard stream: samples from Tree-of-Life shards, split across DDP ranks and loader workers.

Shards are webdataset tars (see docs/shards.md). The training stream is shuffled through a buffer,
optionally resampled forever with a fixed epoch length, and tokenized inside the workers. A bad
sample (undecodable image, no caption and no taxon) is skipped and *counted* in a counter shared by
the loader worker processes, so training can log how many samples each rank lost.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from tolclip.core.captions import CAPTION_FILES, caption
from tolclip.core.taxonomy import Taxon
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.shards import IMAGE_FILE, TAXON_FILE, decode_taxon, has_tar_end

log = logging.getLogger(__name__)

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
                self._skip(
                    f"{url} is truncated (no end-of-archive marker): its tail is lost, the rest is read"
                )
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
            stream = wds.shuffle(
                cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(seed)
            )(stream)
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
