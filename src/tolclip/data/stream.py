"""The shard stream: samples from Tree-of-Life shards, split across DDP ranks and loader workers.

Shards are webdataset tars (see docs/shards.md). The training stream is shuffled through a buffer,
optionally resampled forever with a fixed epoch length, and tokenized inside the workers. A bad
sample (undecodable image, bomb, odd mode, bad taxon.json or caption) or unreadable shard data is
skipped and *counted* in a counter shared by the loader worker processes, so training can log how
many samples each rank lost. Every skip names its shard and sample key; the first few per reason
are logged, the rest are counted and summarised when the pass ends.

Training sources can be mixed by weight (`StreamConfig.sources`, see `tolclip.data.mixing`): each
raw sample is drawn from a source with probability proportional to its weight.

A pass can resume where an interrupted one stopped: every batch carries (under `STATE_KEY`, removed
by `ShardLoader`) its worker, that worker's batch count and how many raw samples the worker had
taken from its shuffled stream; `ShardLoader.state_dict()` keeps those of the batches the training
loop used. A resumed worker passes over its used raw samples without decoding them, and every
sample's augmentation draws from its own seed, so the batches after a resume are the ones the
interrupted run would have seen.

Failure is bounded: `max_consecutive_skips` attempts in a row without a usable sample, a resampled
stream whose every shard is empty or unreadable, or an epoch that gives no batch at all, end in
one `DataError` naming the shards and the most common reasons.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import logging
import multiprocessing as mp
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from tolclip.core.captions import CAPTION_FILES, caption
from tolclip.core.taxonomy import Taxon
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.errors import DataError
from tolclip.data.images import ImageError, load_image
from tolclip.data.mixing import require_resampled
from tolclip.data.pipe import DEFAULT_TIMEOUT as DEFAULT_PIPE_TIMEOUT
from tolclip.data.pipe import open_shard
from tolclip.data.shards import IMAGE_FILE, TAXON_FILE, decode_taxon, has_tar_end

log = logging.getLogger(__name__)

IMAGE_KEYS = (IMAGE_FILE, "jpeg", "png", "webp")
# A batch's place in its worker's stream: (logical worker, batches so far, raw samples taken).
STATE_KEY = "__stream_state__"


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


def _rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) without it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker_info() -> tuple[int, int, int, int]:
    rank, world = _rank()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return rank, world, worker, workers


class _BadSample(Exception):
    """One sample that cannot be used: `reason` is short and stable (it is counted), `detail` not."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


WARNINGS_PER_REASON = 3  # skip warnings logged per reason and pass; the rest are only counted
MAX_WARNINGS = 30  # and at most this many per pass, however many distinct reasons there are
_OBJECT_REPR = re.compile(r"\s*@?\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
_PIPE_EXIT = re.compile(r"exit (\d+) \(read\)")


def name_shards(urls: Sequence[str], show: int = 3) -> str:
    """'3 shard(s) (a.tar, b.tar, c.tar)': enough to find the culprits, short enough for one line."""
    urls = list(dict.fromkeys(urls))
    more = f", ... {len(urls) - show} more" if len(urls) > show else ""
    return f"{len(urls)} shard(s) ({', '.join(urls[:show])}{more})"


def top_reasons(counts: Counter[str], show: int = 3) -> str:
    return ", ".join(f"{reason} x{n}" for reason, n in counts.most_common(show)) or "no sample read"


def shard_error_reason(exn: BaseException, url: str) -> str:
    """A short, stable reason for an error webdataset met while reading shard data.

    webdataset appends the stream object to the message (`... @ <_io.BytesIO object at 0x...>`):
    that names nothing a user can find, so it is dropped here and the shard URL is named instead.
    """
    text = _OBJECT_REPR.sub("", str(exn.args[0]) if exn.args else "").strip()
    status = _PIPE_EXIT.search(text)
    if status:
        return f"pipe command failed (exit status {status.group(1)})"
    if isinstance(exn, tarfile.ReadError) and "empty file" in text:
        # A failing command may not have exited yet when its empty output is read.
        return "pipe command gave no tar data" if url.startswith("pipe:") else "empty shard (no tar data)"
    return f"unreadable shard data ({type(exn).__name__}: {text[:100]})"


class SkipLog:
    """The skips of one process in one pass over its shards: counted per (shard, reason), the first
    few warnings per reason logged, and the streak of attempts since the last usable sample."""

    def __init__(self, max_streak: int) -> None:
        self.max_streak = max_streak
        self.counts: Counter[tuple[str, str]] = Counter()
        self.per_reason: Counter[str] = Counter()
        self.logged = 0
        self.used = 0  # usable samples
        self.read = 0  # samples read from the tars, usable or not
        self.streak = 0  # attempts (shards opened, samples tried) since the last usable sample
        self.streak_reasons: Counter[str] = Counter()
        self.streak_shards: dict[str, None] = {}  # an ordered set

    def skip(self, url: str, key: str | None, reason: str, detail: str = "") -> None:
        self.counts[(url, reason)] += 1
        self.per_reason[reason] += 1
        self.streak_reasons[reason] += 1
        n = self.per_reason[reason]
        if n <= WARNINGS_PER_REASON and self.logged < MAX_WARNINGS:
            self.logged += 1
            where = f"sample {key} in {url}" if key else url
            more = " (further skips for this reason are counted, summarised at the end)"
            detail = f" [{detail}]" if detail else ""
            log.warning(
                "skipping %s: %s%s%s", where, reason, detail, more if n == WARNINGS_PER_REASON else ""
            )
        self.attempt(url)

    def attempt(self, url: str) -> None:
        self.streak += 1
        self.streak_shards[url] = None
        if self.streak >= self.max_streak:
            raise DataError(
                f"no usable sample in {name_shards(list(self.streak_shards))} after {self.streak} "
                f"attempts in a row (data.max_consecutive_skips): {top_reasons(self.streak_reasons)}"
            )

    def passed(self) -> None:
        """A sample the interrupted pass had already used (a resumed pass reads past it)."""
        self.streak = 0

    def success(self) -> None:
        self.used += 1
        self.streak = 0
        self.streak_reasons.clear()
        self.streak_shards.clear()

    def summarise(self) -> None:
        if not self.counts:
            return
        worst = "; ".join(f"{url}: {reason} x{n}" for (url, reason), n in self.counts.most_common(10))
        more = f"; ... {len(self.counts) - 10} more (shard, reason) pairs" if len(self.counts) > 10 else ""
        log.warning("skipped %d sample(s) or shard part(s) in this pass: %s%s", self.total, worst, more)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def decode_image(raw: bytes) -> Image.Image:
    """A shard's image bytes as upright RGB; raises `ImageError` (undecodable, bomb, odd mode)."""
    # The curation loader: its header pixel limit stops a decompression bomb before any decode,
    # and every way an image can be bad arrives as one exception type with a short reason.
    return load_image(raw)


def _text(raw: object) -> str:
    if not isinstance(raw, bytes):
        return str(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exn:
        raise _BadSample("caption is not UTF-8", str(exn)) from exn


def _taxon(raw: object) -> Taxon:
    try:
        return decode_taxon(raw)
    except ValueError as exn:  # bad JSON, bad UTF-8 or not an object
        raise _BadSample(f"bad {TAXON_FILE}", str(exn)) from exn


def sample_texts(sample: dict, text_types: Sequence[str]) -> list[str]:
    """Caption per text type: the shard's own text file, else built from its taxon.json."""
    taxon: Taxon | None = None
    out = []
    for tt in text_types:
        raw = sample.get(CAPTION_FILES[tt])
        if raw:
            out.append(_text(raw))
            continue
        if taxon is None:
            if TAXON_FILE not in sample:
                raise _BadSample(f"no {CAPTION_FILES[tt]} and no {TAXON_FILE}")
            taxon = _taxon(sample[TAXON_FILE])
        if not taxon.taxonomic_name and not taxon.common:
            raise _BadSample("empty taxon")
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
    max_consecutive_skips: int = 2000  # attempts in a row without a usable sample before DataError
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT  # seconds a `pipe:` shard may stay silent (data/pipe.py)
    # Sources mixed by weight, (name, urls, weight) each; `urls` is then all of their shards.
    sources: tuple[tuple[str, tuple[str, ...], float], ...] = ()


class ShardStream(IterableDataset):
    """Iterates batches (dicts) from shards; one instance is copied into every loader worker."""

    def __init__(self, config: StreamConfig):
        super().__init__()
        if config.batch_size < 1 or config.max_consecutive_skips < 1:
            raise ValueError(
                f"batch_size and max_consecutive_skips must be positive, got {config.batch_size}"
                f" and {config.max_consecutive_skips}"
            )
        if config.sources:
            require_resampled(config.resampled)
        self.cfg = config
        self.epoch = 0  # set by the DataModule each epoch so resampling differs between epochs
        # Where each logical worker resumes, {worker: (batches, raw samples)}, and which logical
        # worker the loader's first worker process plays (set by ShardLoader before workers start).
        self.resume: dict[int, tuple[int, int]] = {}
        self.worker_offset = 0
        self._reads: Counter[str] = Counter()  # raw samples read per source in this pass
        # Shared memory, inherited by the loader workers: every process adds what it drops, and
        # at the end of its pass what it used and why it skipped (for the empty-epoch error).
        self.skipped = mp.Value("q", 0)
        self.used = mp.Value("q", 0)
        self.reasons = mp.Array("c", 4096)
        self._log = SkipLog(config.max_consecutive_skips)
        self._url = ""  # the shard being read, for errors that do not say

    def _count_skip(self) -> None:
        with self.skipped.get_lock():
            self.skipped.value += 1

    def _skip(self, url: str, key: str | None, reason: str, detail: str = "") -> None:
        self._count_skip()
        self._log.skip(url, key, reason, detail)

    def _on_shard_error(self, exn: Exception) -> bool:
        # webdataset's handler protocol: True continues with the next member or shard.
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in self.cfg.urls), self._url)
        self._skip(url, None, shard_error_reason(exn, url))
        return True

    def __len__(self) -> int:
        # Only resampled streams have a length: their epoch is fixed by config. Lightning reads it
        # (through the DataLoader) to size the schedule.
        if self.cfg.batches_per_worker is None:
            raise TypeError("finite shard streams have no known length")
        return self.cfg.batches_per_worker * self.cfg.num_workers

    def _position(self) -> tuple[int, int, int, int]:
        """(rank, world, logical worker, workers): the logical worker is the one whose shards,
        seeds and resume point this process takes (a resumed loader rotates them)."""
        rank, world, worker, workers = _worker_info()
        if not self.cfg.split_by_rank:
            rank, world = 0, 1
        return rank, world, (worker + self.worker_offset) % workers, workers

    def _shard_urls(self, urls: Sequence[str] | None = None, salt: int | None = None) -> Iterator[str]:
        rank, world, worker, workers = self._position()
        cfg = self.cfg
        urls = list(cfg.urls if urls is None else urls)
        if cfg.resampled:
            # Each (rank, worker) draws shards independently; seeds differ per epoch (and source).
            seed = self._stream_seed()
            rng = random.Random(seed if salt is None else hash((seed, salt)) & 0x7FFFFFFF)
            while True:
                yield rng.choice(urls)
        if cfg.shuffle_buffer:
            random.Random(cfg.seed + self.epoch).shuffle(urls)
        yield from urls[rank * workers + worker :: world * workers]

    def _checked_shards(self, urls: Sequence[str], salt: int | None, source: str) -> Iterator[dict]:
        tried: set[str] = set()
        every = set(urls)
        for url in self._shard_urls(urls, salt):
            if self.cfg.resampled and self._reads[source] == 0 and tried >= every:
                # Drawing again could never help: every shard was opened and none held a sample.
                where = f" (source data.train_shards.{source})" if source else ""
                raise DataError(
                    f"no sample in any of {name_shards(urls)}{where}: all are empty or unreadable "
                    f"({top_reasons(self._log.per_reason)})"
                )
            tried.add(url)
            self._url = url
            self._log.attempt(url)
            if os.path.isfile(url):
                if os.path.getsize(url) == 0:
                    self._skip(url, None, "empty file (0 bytes)")
                    continue
                if not has_tar_end(url):
                    self._skip(url, None, "truncated shard (no end-of-archive marker): the rest is read")
            yield {"url": url}

    def _opened_shards(self, shards: Iterator[dict]) -> Iterator[dict]:
        """The checked shards with their byte streams; `pipe:` shards are bounded on silence."""
        for source in shards:
            try:
                source["stream"] = open_shard(source["url"], self.cfg.pipe_timeout)
            except Exception as exn:  # webdataset's handler protocol: counted, then the next shard
                if self._on_shard_error(exn):
                    continue
                raise
            yield source

    def _tar_samples(self, urls: Sequence[str], salt: int | None = None, source: str = "") -> Iterator[dict]:
        """Samples grouped by key from every shard in turn (webdataset's tar reading)."""
        shards = self._opened_shards(self._checked_shards(urls, salt, source))
        files = tar_file_expander(shards, handler=self._on_shard_error)
        for sample in group_by_keys(files, handler=self._on_shard_error):
            self._log.read += 1
            self._reads[source] += 1
            yield sample

    def _raw_samples(self) -> Iterator[dict]:
        """The samples of one pass before shuffling: one shard set, or sources drawn by weight."""
        cfg = self.cfg
        if not cfg.sources:
            yield from self._tar_samples(cfg.urls)
            return
        # Per sample, not per shard: sources whose shards differ in size still mix by weight. A
        # source of weight 0 is never opened. Salts are ints: str hashes differ between processes.
        live = [(i, name, urls, w) for i, (name, urls, w) in enumerate(cfg.sources) if w > 0]
        streams = [self._tar_samples(urls, 1000 + i, name) for i, name, urls, _ in live]
        cum = list(itertools.accumulate(w for *_, w in live))
        rng = random.Random(hash((self._stream_seed(), -1)) & 0x7FFFFFFF)
        which = range(len(streams))
        while True:
            yield next(streams[rng.choices(which, cum_weights=cum)[0]])

    def _stream_seed(self) -> int:
        rank, _, worker, _ = self._position()
        return hash((self.cfg.seed, self.epoch, rank, worker)) & 0x7FFFFFFF

    def _prepare(self, sample: dict, tokenizer: Callable | None) -> dict:
        """One raw sample as the model's input; raises `_BadSample` with the reason to count."""
        raw = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if raw is None:
            raise _BadSample("no image")
        try:
            image = decode_image(raw)
        except ImageError as exn:
            raise _BadSample(f"image {exn.reason.split(':')[0]}", exn.reason) from exn
        out: dict = {"image": self.cfg.image_transform(image), "key": sample["__key__"]}
        if tokenizer is None:
            if TAXON_FILE not in sample:
                raise _BadSample(f"no {TAXON_FILE}")
            out["taxon"] = _taxon(sample[TAXON_FILE])
            return out
        texts = sample_texts(sample, self.cfg.text_types)
        try:
            out["text"] = tokenizer(texts)
        except (ValueError, TypeError, IndexError, KeyError) as exn:
            raise _BadSample("caption cannot be tokenized", f"{type(exn).__name__}: {exn}") from exn
        return out

    def _resume_point(self) -> tuple[int, int]:
        """(batches, raw samples) this worker's interrupted pass had used; (0, 0) on a fresh pass."""
        return self.resume.get(self._position()[2], (0, 0))

    def _samples(self) -> Iterator[tuple[int, dict]]:
        """(raw samples taken so far, prepared sample) for each usable sample of this pass."""
        cfg = self.cfg
        seed = self._stream_seed()
        in_worker = get_worker_info() is not None
        if in_worker:
            # Anything random beyond the per-sample seeds below still depends only on (seed, epoch,
            # rank, worker). Not in the main process: that would reset the trainer's own RNG.
            torch.manual_seed(seed)
            random.seed(seed)
        tokenizer = get_tokenizer(cfg.context_length) if cfg.text_types else None
        stream = self._raw_samples()
        if cfg.shuffle_buffer:
            stream = wds.shuffle(
                cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(seed)
            )(stream)
        # A resumed pass reads (without decoding) the raw samples the interrupted pass used, so
        # the shard draws, the mixing and the shuffle buffer are where they were.
        start = self._resume_point()[1]
        for pos, sample in enumerate(stream, 1):
            if pos <= start:
                self._log.passed()
                continue
            try:
                with _sample_rng(hash((seed, pos)) & 0x7FFFFFFFFFFFFFFF, in_worker):
                    out = self._prepare(sample, tokenizer)
            except _BadSample as exn:
                self._skip(sample.get("__url__", self._url), sample.get("__key__"), exn.reason, exn.detail)
                continue
            self._log.success()
            yield pos, out

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        self._log = SkipLog(cfg.max_consecutive_skips)
        self._reads = Counter()
        worker = self._position()[2]
        count = self._resume_point()[0]
        batch: list[dict] = []
        try:
            if cfg.batches_per_worker is not None and count >= cfg.batches_per_worker:
                return
            for pos, sample in self._samples():
                batch.append(sample)
                if len(batch) == cfg.batch_size:
                    count += 1
                    yield {**collate(batch), STATE_KEY: (worker, count, pos)}
                    batch = []
                    if cfg.batches_per_worker is not None and count >= cfg.batches_per_worker:
                        return
            if batch and cfg.partial:
                yield {**collate(batch), STATE_KEY: (worker, count + 1, pos)}
        finally:
            self._log.summarise()
            self._share_pass()

    def _share_pass(self) -> None:
        """Add this process's usable count and skip reasons to the memory the loader reads."""
        with self.used.get_lock():
            self.used.value += self._log.used
        with self.reasons.get_lock():
            merged = Counter(json.loads(self.reasons.value or b"{}")) + self._log.per_reason
            text = json.dumps(dict(merged.most_common(5))).encode()
            self.reasons.value = text if len(text) < len(self.reasons) else b"{}"

    def start_epoch(self) -> None:
        """Clear what the previous pass shared (main process, before the workers start)."""
        with self.used.get_lock():
            self.used.value = 0
        with self.reasons.get_lock():
            self.reasons.value = b""

    def empty_epoch_error(self) -> DataError:
        """The error for a whole pass (all workers) that gave no batch."""
        shards = name_shards(self.cfg.urls)
        used = int(self.used.value)
        if used == 0:
            reasons = top_reasons(Counter(json.loads(self.reasons.value or b"{}")))
            return DataError(f"no usable sample in {shards} in a whole pass (epoch): {reasons}")
        return DataError(
            f"an epoch of {shards} gave no batch: {used} usable sample(s), fewer than one batch of "
            f"{self.cfg.batch_size} per loader worker (incomplete batches are dropped in training)"
        )


class ShardLoader(DataLoader):
    """A DataLoader over a `ShardStream` whose every pass must give a batch, and that can resume.

    A worker only sees its own shards, so only the loader knows that the whole epoch was empty:
    then it raises the stream's `DataError` instead of ending an epoch of zero steps in silence.

    Lightning saves `state_dict()` in its checkpoints and gives it back through `load_state_dict()`
    on resume: the next pass of the same epoch then continues after the batches the training loop
    had used (`consumed`, set by the DataModule, counts them; by default every batch yielded). The
    loader's workers take batches in turn, so the resumed pass rotates the logical workers so that
    the one whose batch came next comes first.
    """

    consumed: Callable[[], int | None] | None = None

    def __iter__(self) -> Iterator[dict]:  # type: ignore[override]
        stream = self.dataset
        assert isinstance(stream, ShardStream)
        stream.start_epoch()
        self._begin_pass(stream)
        batches = 0
        batches_iter = super().__iter__()
        try:
            for batch in batches_iter:
                self._seen.append(batch.pop(STATE_KEY))
                batches += 1
                yield batch
            self._pass["ended"] = True
        finally:
            # Stop the workers now: after an error the iterator lives on in the traceback, and its
            # workers would otherwise linger until it is collected (10 s of shutdown waits).
            shutdown = getattr(batches_iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        if batches == 0 and not self._pass["start"]:
            raise stream.empty_epoch_error()

    def _layout(self) -> list:
        """What must not change for a saved place to mean the same batches."""
        cfg = self.dataset.cfg
        return [cfg.seed, cfg.batch_size, max(1, self.num_workers), cfg.shuffle_buffer, len(cfg.urls)]

    def _begin_pass(self, stream: ShardStream) -> None:
        pending, self._pending = getattr(self, "_pending", None), None
        self._seen: list[tuple[int, int, int]] = []
        self._pass: dict = {"epoch": stream.epoch, "start": 0, "positions": {}, "next": 0, "ended": False}
        stream.resume, stream.worker_offset = {}, 0
        if pending is None or pending["epoch"] != stream.epoch:
            return  # a fresh start, or the saved epoch had ended
        if pending.get("complete"):
            # Saved on the epoch's last batch: Lightning goes on with the next epoch without its
            # epoch-start hook (which would set the stream's epoch), so move on here.
            stream.epoch += 1
            return
        if pending["layout"] != self._layout():
            log.warning(
                "the train stream cannot resume where the checkpoint stopped (seed, batch size, workers, "
                "shuffle buffer or shard count changed: %s, now %s): epoch %d restarts its data",
                pending["layout"],
                self._layout(),
                stream.epoch,
            )
            return
        positions = {int(w): (int(b), int(p)) for w, (b, p) in pending["positions"].items()}
        stream.resume, stream.worker_offset = positions, int(pending["next"])
        self._pass.update(start=int(pending["batches"]), positions=positions, next=int(pending["next"]))

    def _rank_state(self) -> dict:
        """This rank's place: the epoch, batches used, and per logical worker (batches, raw samples)."""
        if not hasattr(self, "_pass"):  # no pass yet: keep what was loaded, if anything
            return getattr(self, "_pending", None) or {}
        start, seen = self._pass["start"], self._seen
        used = self.consumed() if self.consumed is not None else None
        used = len(seen) if used is None else min(max(0, used - start), len(seen))
        positions, nxt = dict(self._pass["positions"]), self._pass["next"]
        for worker, batches, raw in seen[:used]:
            positions[worker] = (batches, raw)
            nxt = (worker + 1) % max(1, self.num_workers)
        length = self.dataset.cfg.batches_per_worker
        complete = (self._pass["ended"] and used == len(seen)) or (
            length is not None and start + used >= length * max(1, self.num_workers)
        )
        return {
            "epoch": self._pass["epoch"],
            "batches": start + used,
            "complete": complete,
            "positions": {str(w): [b, p] for w, (b, p) in sorted(positions.items())},
            "next": nxt,
            "layout": self._layout(),
        }

    def state_dict(self) -> dict:
        """Every rank's place (gathered: Lightning writes rank 0's checkpoint for all ranks)."""
        mine = self._rank_state()
        rank, world = _rank()
        states = [mine]
        if world > 1:
            states = [None] * world
            torch.distributed.all_gather_object(states, mine)
        return {"version": 1, "ranks": states}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the next pass (if it is the saved epoch) where this rank's saved place says."""
        rank, world = _rank()
        ranks = state_dict.get("ranks") or []
        if len(ranks) != world:
            log.warning(
                "the checkpoint's train stream state is for %d rank(s), this run has %d: the epoch "
                "restarts its data",
                len(ranks),
                world,
            )
            self._pending = None
            return
        self._pending = ranks[rank] or None


@contextlib.contextmanager
def _sample_rng(seed: int, in_worker: bool) -> Iterator[None]:
    """Seed the augmentation of one sample: its crops do not depend on the samples before it, so a
    resumed pass can pass over samples undecoded. The main process's own RNG is put back after."""
    if in_worker:
        torch.default_generator.manual_seed(seed)
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def collate(samples: list[dict]) -> dict:
    out: dict = {"image": torch.stack([s["image"] for s in samples]), "key": [s["key"] for s in samples]}
    if "text" in samples[0]:
        text = torch.stack([s["text"] for s in samples])  # [B, n_types, L]
        out["text"] = text[:, 0] if text.shape[1] == 1 else text
    if "taxon" in samples[0]:
        out["taxon"] = [s["taxon"] for s in samples]
    return out
