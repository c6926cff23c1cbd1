"""Build Tree-of-Life training shards from image collections: `tolclip-build-shards [overrides]`.

Pipeline (configs in configs/build/): scan sources → resolve labels → drop excluded species → decode,
resize and hash images in parallel → drop eval leakage and within-dataset duplicates → split by key hash
→ write shards, catalog, statistics and reports. Every scanned input ends in exactly one of
`catalog.csv`, `skipped.csv` (could not be used: scan problem, no taxon, bad image) or `excluded.csv`
(usable but kept out on purpose: excluded species, eval leakage, duplicate).

Resume (`resume=true`): the image stage appends each record's result (hashes, sizes, status) to
`cache/processed.jsonl` and its encoded JPEG bytes to `cache/encoded.bin` as it completes, so a resumed
build decodes only the records not yet done. The dedup and split decisions are cheap and deterministic
and are simply recomputed. Each shard is written to a temporary name and renamed when complete;
`progress.json` lists the finished shards with their sample counts, and a resumed build skips a shard
whose file exists with the expected count. Shard contents are deterministic (fixed order, mtime 0), so a
resumed build's output equals an uninterrupted one byte for byte. A config that changes anything affecting
the output is refused on resume (its fingerprint differs).

`tolclip-build-shards check DIR` opens every shard under DIR, decodes every image and taxon.json and
exits non-zero when any shard or sample is bad.

`train_small` (the ablation subset of train) is both a catalog flag and its own shard set under
`out_dir/train_small/`, a copy of the flagged train samples, so it can be trained on directly.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

from tolclip.core.resources import CONFIG_PATH
from tolclip.core.taxonomy import RANKS, Taxon, clean_name
from tolclip.curate.dedup import (
    DEFAULT_MAX_DISTANCE,
    Deduplicator,
    EvalExclusion,
    content_hash,
    perceptual_hash,
)
from tolclip.curate.resolve import Resolver, TableBackend, TaxoniqBackend
from tolclip.curate.sources import IMAGE_EXTENSIONS, NOT_SELECTED, SourceRecord, open_source, read_table
from tolclip.data.images import DEFAULT_MAX_PIXELS, ImageError, encode, load_image, resize
from tolclip.data.shards import Sample, TarShard, decode_taxon, has_tar_end, record_blob, to_record

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
CHECKPOINT = "processed.jsonl"
SPOOL = "encoded.bin"
PROGRESS = "progress.json"
# What the cache (processed.jsonl + encoded.bin) holds; part of the resume fingerprint, so a cache
# written in another layout (format 1 spooled bare JPEGs) is never mixed into a new build.
CACHE_FORMAT = 2


class BuildError(Exception):
    """A bad config or input that stops the build; printed as one line, without a traceback."""


# --------------------------------------------------------------------------------------- keys, splits


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_key(source: str, source_id: str) -> str:
    """`{source}_{16 hex of sha256(source_id)}`: stable, and free of '.' and '/' (webdataset keys)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", source).strip("-") or "source"
    return f"{safe}_{_stable_hash(source_id)[:16]}"


def assign_split(key: str, splits: dict[str, float]) -> str:
    """Split by the key's hash: splits are percentages in config order (e.g. train 95, val 5)."""
    total = sum(splits.values())
    point = int(_stable_hash(f"split:{key}")[:12], 16) / float(1 << 48) * total
    acc = 0.0
    for name, pct in splits.items():
        acc += pct
        if point < acc:
            return name
    return list(splits)[-1]


def in_train_small(key: str, fraction: float) -> bool:
    """A second, independent hash marks the `train_small` subset of train."""
    return int(_stable_hash(f"small:{key}")[:12], 16) / float(1 << 48) < fraction


# --------------------------------------------------------------------------------------------- config


@dataclass
class BuildConfig:
    out_dir: Path
    sources: list[dict[str, Any]]
    taxonomy: dict[str, Any] = field(default_factory=lambda: {"backend": "taxoniq"})
    exclude_species: Any = None
    min_rank: str | None = None  # keep only images whose lineage is complete down to this rank
    eval_images: list[str] = field(default_factory=list)
    resize: dict[str, Any] = field(default_factory=lambda: {"mode": "squash", "size": 224})
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_distance: int = DEFAULT_MAX_DISTANCE
    splits: dict[str, float] = field(default_factory=lambda: {"train": 95, "val": 5})
    train_small_fraction: float = 0.0
    max_count: int = 10_000
    max_bytes: int = 1 << 30
    workers: int = 1
    chunk_size: int = 16
    limit_per_source: int | None = None
    resume: bool = False
    keep_cache: bool = False
    progress: bool = True

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> BuildConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise BuildError(f"unknown build config key(s) {unknown}; known: {sorted(known)}")
        if not cfg.get("out_dir"):
            raise BuildError("out_dir is required")
        if not cfg.get("sources"):
            raise BuildError("no sources configured (sources: [{kind: ..., ...}])")
        c = cls(**{**cfg, "out_dir": Path(cfg["out_dir"])})
        c.sources = [dict(s) for s in c.sources]
        names = [s.get("source") or s.get("kind") for s in c.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BuildError(f"source names must be unique (keys are built from them); repeated: {dup}; "
                             "give each source its own `source:`")
        if not c.splits or any(v < 0 for v in c.splits.values()) or sum(c.splits.values()) <= 0:
            raise BuildError(f"splits must be non-negative percentages with a positive sum, not {c.splits}")
        if "train_small" in c.splits:
            raise BuildError("'train_small' is derived from train (train_small_fraction); not a split name")
        if c.min_rank is not None and c.min_rank not in RANKS:
            raise BuildError(f"min_rank must be one of {list(RANKS)} or null, not {c.min_rank!r}")
        if not 0 <= c.train_small_fraction <= 1:
            raise BuildError(f"train_small_fraction must be in [0, 1], not {c.train_small_fraction}")
        return c

    def fingerprint(self) -> str:
        """Hash of every setting that changes the output (resume refuses a changed config)."""
        keep = {k: v for k, v in self.__dict__.items()
                if k not in ("out_dir", "workers", "chunk_size", "resume", "keep_cache", "progress")}
        keep["cache_format"] = CACHE_FORMAT
        return _stable_hash(json.dumps(keep, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------- reports


@dataclass
class Entry:
    """One scanned input and its fate."""

    key: str
    source: str
    source_id: str
    record: SourceRecord | None = None
    taxon: Taxon | None = None
    status: str = ""  # resolution status


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, entry: Entry, stage: str, reason: str) -> None:
        self.rows.append({"key": entry.key, "source": entry.source, "source_id": entry.source_id,
                          "stage": stage, "reason": reason})


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------- species


def load_excluded_species(spec: Any) -> set[str]:
    """Binomials (casefolded) from a list of names or `{table: path, column: name}`."""
    if not spec:
        return set()
    if isinstance(spec, dict):
        if "table" not in spec:
            raise BuildError(f"exclude_species needs `table:` (and `column:`), got {sorted(spec)}")
        column = spec.get("column", "scientific_name")
        try:
            header, rows = read_table(spec["table"])
        except (FileNotFoundError, ValueError) as err:
            raise BuildError(f"exclude_species: {err}") from err
        if column not in header:
            raise BuildError(f"exclude_species: table {spec['table']} has no column {column!r}; it has {header}")
        names: Iterable[str] = (row[column] for row in rows)
    else:
        names = spec
    out = set()
    for name in names:
        words = clean_name(name).split(" ")
        if len(words) >= 2:
            out.add(f"{words[0]} {words[1]}".casefold())
    return out


# ------------------------------------------------------------------------------------- image stage

_WORKER: dict[str, Any] = {}


def _init_worker(settings: dict[str, Any], exclusion: EvalExclusion | None) -> None:
    _WORKER.update(settings, exclusion=exclusion)


ImageTask = tuple[str, str, Taxon, str, str]  # key, path, taxon, source, source_id


def process_one(task: ImageTask) -> dict[str, Any]:
    """Read, decode, resize, encode and hash one file, and build its tar members (runs in a worker).

    Never raises for bad input. The sample's tar members are built here, where the work is parallel:
    writing a shard is then only a concatenation.
    """
    key, path, taxon, source, source_id = task
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return {"key": key, "ok": False, "reason": f"unreadable: {err.strerror or err}"}
    try:
        image = load_image(data, max_pixels=_WORKER["max_pixels"])
        jpeg = encode(resize(image, _WORKER["mode"], _WORKER["size"]), quality=_WORKER["quality"])
    except ImageError as err:
        return {"key": key, "ok": False, "reason": err.reason, "sha256": content_hash(data)}
    digest, phash = content_hash(data), perceptual_hash(image)
    exclusion: EvalExclusion | None = _WORKER.get("exclusion")
    leak = exclusion.check_hashes(digest, phash) if exclusion is not None else None
    # Raw bytes: the pool pickles them as they are; the checkpoint line never carries them.
    blob = record_blob(to_record(Sample(key, jpeg, taxon, source, source_id)))
    return {"key": key, "ok": True, "sha256": digest, "phash": phash,
            "width": image.width, "height": image.height, "leak": leak, "blob": blob}


def _worker_pool(cfg: BuildConfig, exclusion: EvalExclusion | None, settings: dict[str, Any]) -> Any:
    """One pool for the whole build (images, then shards), or None to work in this process."""
    if cfg.workers <= 1:
        return contextlib.nullcontext(None)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(settings, exclusion))


def _imap(tasks: list[ImageTask], exclusion: EvalExclusion | None, settings: dict[str, Any], pool: Any,
          chunk_size: int) -> Iterator[dict[str, Any]]:
    """`process_one` over the tasks, in the pool from `_worker_pool` (None: in this process)."""
    if pool is None:
        _init_worker(settings, exclusion)
        yield from map(process_one, tasks)
        return
    # imap keeps input order, so results (and the checkpoint) come back deterministically.
    yield from pool.imap(process_one, tasks, chunksize=max(1, chunk_size))


class Checkpoint:
    """`processed.jsonl` (one result per line, without the bytes) + `encoded.bin` (each sample's tar
    members, appended)."""

    def __init__(self, cache: Path) -> None:
        cache.mkdir(parents=True, exist_ok=True)
        self.jsonl = cache / CHECKPOINT
        self.spool = cache / SPOOL
        self.done: dict[str, dict[str, Any]] = {}
        if self.jsonl.exists():
            size = self.spool.stat().st_size if self.spool.exists() else 0
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the line being written when the build stopped
                    continue
                if row.get("ok") and row["offset"] + row["length"] > size:
                    continue
                self.done[row["key"]] = row
        self._pending: list[str] = []

    def __enter__(self) -> Checkpoint:
        self._jsonl = self.jsonl.open("a", encoding="utf-8")
        self._spool = self.spool.open("ab")
        self._end = self._spool.seek(0, os.SEEK_END)
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self._jsonl.close()
        self._spool.close()

    def add(self, result: dict[str, Any]) -> None:
        row = dict(result)
        if row.get("ok"):
            blob = row.pop("blob")
            row["offset"], row["length"] = self._end, len(blob)
            self._spool.write(blob)
            self._end += len(blob)
        self._pending.append(json.dumps(row))
        self.done[row["key"]] = row
        if len(self._pending) >= self.FLUSH_EVERY:
            self.flush()

    # Flushing per image cost as much as hashing it; a crash loses at most this many results.
    FLUSH_EVERY = 64

    def flush(self) -> None:
        """Spool bytes first, then their lines: a checkpoint line never points past the spool's end."""
        self._spool.flush()
        if self._pending:
            self._jsonl.write("\n".join(self._pending) + "\n")
            self._pending.clear()
        self._jsonl.flush()


# ------------------------------------------------------------------------------------------- helpers


def _track(items: Iterable[Any], total: int, description: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=total, description=description, transient=False)


def _eval_paths(patterns: Sequence[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found = sorted(glob(pattern, recursive=True))
        if not found:
            raise BuildError(f"eval_images: {pattern!r} matches no file")
        paths.extend(found)
    return paths


def _backend(spec: dict[str, Any]) -> Any:
    kind = spec.get("backend", "taxoniq")
    if kind == "taxoniq":
        return TaxoniqBackend()
    if kind == "table":
        path = spec.get("path")
        if not path or not Path(path).is_file():
            raise BuildError(f"taxonomy backend 'table' needs an existing `path:`, got {path!r}")
        return TableBackend.from_file(path)
    raise BuildError(f"unknown taxonomy backend {kind!r}; use 'taxoniq' or 'table'")


def _plan_shards(keys: list[str], sizes: dict[str, int], max_count: int, max_bytes: int) -> list[list[str]]:
    """Cut an ordered key list into shards of <= max_count samples and about <= max_bytes."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for key in keys:
        if current and (len(current) >= max_count or size + sizes[key] > max_bytes):
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += sizes[key]
    if current:
        shards.append(current)
    return shards


def write_one_shard(blobs: list[bytes], final: Path) -> None:
    """Write one complete shard to a temporary name and rename it (an interrupted write leaves no shard)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".tmp-") as tmp:
        shard = TarShard(Path(tmp) / final.name)
        for blob in blobs:
            shard.write_blob(blob)
        shard.close()
        os.replace(shard.path, final)


ShardJob = tuple[str, str, list[tuple[int, int]]]  # final path, spool, (offset, length) per sample


def _write_shard_job(job: ShardJob) -> tuple[str, int]:
    """Write one planned shard from the spool (runs in a worker): (path, samples written)."""
    final, spool, members = job
    with open(spool, "rb") as fh:
        blobs = []
        for offset, length in members:
            fh.seek(offset)
            blobs.append(fh.read(length))
    write_one_shard(blobs, Path(final))
    return final, len(members)


def _map_shards(jobs: list[ShardJob], pool: Any) -> Iterator[tuple[str, int]]:
    if pool is None or len(jobs) < 2:
        yield from map(_write_shard_job, jobs)
        return
    # Shards are independent files; each is recorded in progress.json as soon as it is complete.
    yield from pool.imap_unordered(_write_shard_job, jobs)


# --------------------------------------------------------------------------------------------- build


CATALOG_COLUMNS = ("key", "shard", "split", "train_small", "source", "source_id", "source_split",
                   *RANKS, "common_name", "resolution_status")
REPORT_COLUMNS = ("key", "source", "source_id", "stage", "reason")


def _prepare_out_dir(cfg: BuildConfig) -> None:
    out = cfg.out_dir
    if cfg.resume:
        progress = out / PROGRESS
        if progress.exists():
            old = json.loads(progress.read_text()).get("fingerprint")
            if old != cfg.fingerprint():
                raise BuildError(f"resume=true but the config changed since the build in {out} started; "
                                 "rerun without resume (starts over)")
        return
    if out.exists() and any(out.iterdir()):
        if not (out / PROGRESS).exists():
            raise BuildError(f"out_dir {out} is not empty and holds no tolclip build; choose an empty folder")
        # A fresh build over an earlier one: remove what a build writes, nothing else.
        old = json.loads((out / PROGRESS).read_text()).get("shards", {})
        for name in {*cfg.splits, "train_small", CACHE_DIR, *(rel.split("/")[0] for rel in old)}:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def build(config: dict[str, Any] | BuildConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the statistics (also written to `stats.json`)."""
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.from_dict(config)
    _prepare_out_dir(cfg)
    out = cfg.out_dir
    fingerprint = cfg.fingerprint()
    progress_path = out / PROGRESS
    progress = json.loads(progress_path.read_text()) if cfg.resume and progress_path.exists() else {}
    progress = {"fingerprint": fingerprint, "shards": progress.get("shards", {}), "complete": False}
    progress_path.write_text(json.dumps(progress, indent=1))

    skipped, excluded = Outcome(), Outcome()
    entries: list[Entry] = []

    # 1. scan ------------------------------------------------------------------------------------
    for spec in cfg.sources:
        kwargs = dict(spec)
        kind = kwargs.pop("kind", None)
        if kind is None:
            raise BuildError(f"source {spec} has no `kind:`")
        try:
            scan = open_source(kind, **kwargs)
        except (FileNotFoundError, ValueError) as err:
            raise BuildError(f"source {kwargs.get('source', kind)!r}: {err}") from err
        seen_ids: set[str] = set()
        n = 0
        for record in scan:
            if cfg.limit_per_source is not None and n >= cfg.limit_per_source:
                break
            n += 1
            seen_ids.add(record.source_id)
            entries.append(Entry(make_key(record.source, record.source_id), record.source, record.source_id,
                                 record=record))
        for problem in scan.problems:
            e = Entry(make_key(scan.source, f"problem:{problem.item}"), scan.source, problem.item)
            entries.append(e)
            skipped.add(e, "not_selected" if problem.reason.startswith(NOT_SELECTED) else "scan", problem.reason)
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        dup = [k for k, c in Counter(keys).items() if c > 1][:3]
        raise BuildError(f"duplicate sample keys {dup}: a source yields the same source_id twice")

    # 2-3. resolve and exclude species ------------------------------------------------------------
    resolver = Resolver(_backend(cfg.taxonomy))
    excluded_species = load_excluded_species(cfg.exclude_species)
    candidates: list[Entry] = []
    for e in entries:
        if e.record is None:
            continue
        r = e.record
        res = resolver.resolve(r.ranks, r.scientific_name, r.common_name)
        e.taxon, e.status = res.taxon, res.status
        if not any(res.taxon.ranks):
            label = r.label or "(empty label)"
            skipped.add(e, "resolve", f"no taxon: {label} ({res.status}; {res.note})")
        elif (res.taxon.genus and res.taxon.species
              and f"{res.taxon.genus} {res.taxon.species}".casefold() in excluded_species):
            excluded.add(e, "species", f"excluded species {res.taxon.scientific_name}")
        elif cfg.min_rank and not all(res.taxon.ranks[: RANKS.index(cfg.min_rank) + 1]):
            missing = [r for r in RANKS[: RANKS.index(cfg.min_rank) + 1] if not res.taxon.rank(r)]
            excluded.add(e, "rank", f"lineage lacks {', '.join(missing)} (min_rank {cfg.min_rank})")
        else:
            candidates.append(e)
    resolver.write_report(out / "resolution_report.csv")

    # 4. images (parallel, checkpointed) ----------------------------------------------------------
    exclusion = None
    if cfg.eval_images:
        exclusion = EvalExclusion.from_paths(_eval_paths(cfg.eval_images), cfg.max_distance, cfg.max_pixels)
    settings = {"mode": cfg.resize.get("mode", "squash"), "size": int(cfg.resize.get("size", 224)),
                "quality": cfg.quality, "max_pixels": cfg.max_pixels}
    with Checkpoint(out / CACHE_DIR) as checkpoint, _worker_pool(cfg, exclusion, settings) as pool:
        todo = [(e.key, str(e.record.path), e.taxon, e.source, e.source_id)
                for e in candidates if e.key not in checkpoint.done]
        results = _imap(todo, exclusion, settings, pool, cfg.chunk_size)
        for result in _track(results, len(todo), "images", cfg.progress):
            checkpoint.add(result)

        # 5. leakage and dedup, in scan order --------------------------------------------------------
        dedup = Deduplicator(cfg.max_distance)
        kept: list[Entry] = []
        for e in candidates:
            row = checkpoint.done[e.key]
            if not row["ok"]:
                skipped.add(e, "image", row["reason"])
            elif row.get("leak"):
                excluded.add(e, "eval", row["leak"])
            else:
                original = dedup.add_hashes(e.key, row["sha256"], row["phash"])
                if original is None:
                    kept.append(e)
                else:
                    excluded.add(e, "duplicate", f"duplicate of {original}")

        # 6. split -------------------------------------------------------------------------------------
        by_split: dict[str, list[Entry]] = {name: [] for name in cfg.splits}
        small: set[str] = set()
        for e in kept:
            split = assign_split(e.key, cfg.splits)
            by_split[split].append(e)
            if split == "train" and in_train_small(e.key, cfg.train_small_fraction):
                small.add(e.key)
        sets = dict(by_split)
        if cfg.train_small_fraction > 0 and "train" in by_split:
            sets["train_small"] = [e for e in by_split["train"] if e.key in small]

        # 7. shards --------------------------------------------------------------------------------------
        shard_of: dict[str, str] = {}
        plans: list[tuple[str, list[Entry]]] = []
        for name, members in sets.items():
            lookup = {e.key: e for e in members}

            sizes = {e.key: checkpoint.done[e.key]["length"] for e in members}
            for i, keys_ in enumerate(_plan_shards([e.key for e in members], sizes, cfg.max_count, cfg.max_bytes)):
                rel = f"{name}/shard-{i:06d}.tar"
                plans.append((rel, [lookup[k] for k in keys_]))
                if name != "train_small":
                    for k in keys_:
                        shard_of[k] = rel
        for split_dir in sets:
            # Leftovers of a shard write that was interrupted.
            for stale in (out / split_dir).glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        checkpoint.flush()
        jobs = [(str(out / rel), str(checkpoint.spool),
                 [(checkpoint.done[e.key]["offset"], checkpoint.done[e.key]["length"]) for e in members])
                for rel, members in plans
                if not (progress["shards"].get(rel) == len(members) and (out / rel).exists())]
        for path, count in _track(_map_shards(jobs, pool), len(jobs), "shards", cfg.progress):
            progress["shards"][Path(path).relative_to(out).as_posix()] = count
            progress_path.write_text(json.dumps(progress, indent=1))

    # catalog, reports, stats -------------------------------------------------------------------------
    catalog = []
    for name, members in by_split.items():
        for e in members:
            catalog.append({
                "key": e.key, "shard": shard_of[e.key], "split": name, "train_small": e.key in small,
                "source": e.source, "source_id": e.source_id, "source_split": e.record.split,
                **{r: e.taxon.rank(r) for r in RANKS}, "common_name": e.taxon.common,
                "resolution_status": e.status,
            })
    _write_catalog(out, catalog)
    _write_csv(out / "skipped.csv", skipped.rows, REPORT_COLUMNS)
    _write_csv(out / "excluded.csv", excluded.rows, REPORT_COLUMNS)
    stats = _statistics(catalog, entries, skipped, excluded, resolver, {n: len(m) for n, m in sets.items()})
    (out / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    progress["complete"] = True
    progress_path.write_text(json.dumps(progress, indent=1))
    if not cfg.keep_cache:
        shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    return stats


def _write_catalog(out: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_csv(out / "catalog.csv", rows, CATALOG_COLUMNS)
    columns = {c: [r[c] for r in rows] for c in CATALOG_COLUMNS}
    schema = pa.schema([(c, pa.bool_() if c == "train_small" else pa.string()) for c in CATALOG_COLUMNS])
    pq.write_table(pa.table(columns, schema=schema), out / "catalog.parquet")


def _taxa_per_rank(rows: list[dict[str, Any]]) -> dict[str, int]:
    # A taxon at a rank is its lineage down to that rank (two genera "Morus" in different families differ).
    lineages = Counter(tuple(r[x] for x in RANKS) for r in rows)
    return {rank: len({lin[: i + 1] for lin in lineages if lin[i]}) for i, rank in enumerate(RANKS)}


def _complete_to_lowest_rank(row: dict[str, Any]) -> bool:
    """No gap above the lowest rank the label reaches (a label that stops at genus can be complete)."""
    values = [row[x] for x in RANKS]
    depth = max((i for i, v in enumerate(values) if v), default=-1)
    return depth >= 0 and all(values[: depth + 1])


def _statistics(catalog: list[dict[str, Any]], entries: list[Entry], skipped: Outcome, excluded: Outcome,
                resolver: Resolver, set_sizes: dict[str, int]) -> dict[str, Any]:
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {"source": defaultdict(list), "split": defaultdict(list),
                                                          "kingdom": defaultdict(list)}
    for row in catalog:
        for g in groups:
            groups[g][row[g] or "(none)"].append(row)

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"images": len(rows), "taxa": _taxa_per_rank(rows),
                "all_seven_ranks": sum(all(r[x] for x in RANKS) for r in rows),
                "complete_to_lowest_rank": sum(map(_complete_to_lowest_rank, rows))}

    n = len(catalog)
    species_rows = [r for r in catalog if r["species"]]
    return {
        "inputs": len(entries),
        "images": n,
        # Files of splits the config left out are listed in skipped.csv but are not failures.
        "skipped": sum(r["stage"] != "not_selected" for r in skipped.rows),
        "not_selected": sum(r["stage"] == "not_selected" for r in skipped.rows),
        "excluded": len(excluded.rows),
        "skipped_by_stage": dict(Counter(r["stage"] for r in skipped.rows)),
        "excluded_by_stage": dict(Counter(r["stage"] for r in excluded.rows)),
        "fraction_all_seven_ranks": sum(all(r[x] for x in RANKS) for r in catalog) / n if n else 0.0,
        # Labels that stop above species (a source that says only "Papio") cannot reach seven ranks;
        # this counts images whose lineage has no gap down to where their label stops.
        "fraction_complete_to_lowest_rank": sum(map(_complete_to_lowest_rank, catalog)) / n if n else 0.0,
        # Of the images labelled down to species, how many the backbone completed to all seven ranks.
        "fraction_all_seven_ranks_of_species_labels": (
            sum(all(r[x] for x in RANKS) for r in species_rows) / len(species_rows) if species_rows else 0.0),
        "taxa": _taxa_per_rank(catalog),
        "per_source": {k: summary(v) for k, v in sorted(groups["source"].items())},
        "per_split": {k: summary(v) for k, v in sorted(groups["split"].items())},
        "per_kingdom": {k: summary(v) for k, v in sorted(groups["kingdom"].items())},
        "shard_sets": set_sizes,
        "resolution": resolver.summary(),
    }


# --------------------------------------------------------------------------------------------- check


def check(directory: str | os.PathLike) -> list[str]:
    """Problems found in every `shard-*.tar` under `directory` ([] when all samples decode).

    When the folder holds a build's `catalog.csv`, the shards must also hold exactly the keys the
    catalog puts in them (no sample lost, none extra).
    """
    root = Path(directory)
    shards = sorted(root.rglob("shard-*.tar"))
    if not shards:
        return [f"{root}: no shard-*.tar files"]
    problems: list[str] = []
    found: dict[str, set[str]] = {}
    for shard in shards:
        name = shard.relative_to(root).as_posix()
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        found[name] = set()
        if not has_tar_end(shard):
            problems.append(f"{name}: truncated shard (no end-of-archive marker)")
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    samples[key][ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            problems.append(f"{name}: unreadable shard ({err.__class__.__name__}: {err})")
            continue
        found[name] = set(samples)
        if not samples:
            problems.append(f"{name}: empty shard")
        for key, files in samples.items():
            if "jpg" not in files:
                problems.append(f"{name} {key}: no jpg")
            else:
                try:
                    load_image(files["jpg"])
                except ImageError as err:
                    problems.append(f"{name} {key}: image {err.reason}")
            if "taxon.json" not in files:
                problems.append(f"{name} {key}: no taxon.json")
            else:
                try:
                    taxon = decode_taxon(files["taxon.json"])
                except (ValueError, TypeError) as err:
                    problems.append(f"{name} {key}: bad taxon.json ({err})")
                    continue
                if not any(taxon.ranks):
                    problems.append(f"{name} {key}: taxon.json has no rank")
    if (root / "catalog.csv").is_file():
        problems += _check_against_catalog(root / "catalog.csv", found)
    return problems


def _check_against_catalog(catalog: Path, found: dict[str, set[str]]) -> list[str]:
    expected: dict[str, set[str]] = defaultdict(set)
    with catalog.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            expected[row["shard"]].add(row["key"])
            if row.get("train_small") == "True":
                expected["train_small/"].add(row["key"])
    # train_small shards are re-cut from the train keys, so they are compared as one set.
    got = {name: keys for name, keys in found.items() if not name.startswith("train_small/")}
    small = set().union(*(k for n, k in found.items() if n.startswith("train_small/")))
    if small or expected.get("train_small/"):
        got["train_small/"] = small
    problems = []
    for name in sorted(set(expected) | set(got)):
        want, have = expected.get(name, set()), got.get(name)
        if have is None:
            problems.append(f"{name}: in catalog.csv ({len(want)} samples) but missing")
        elif want != have:
            problems.append(f"{name}: {len(want - have)} catalog sample(s) missing (e.g. {sorted(want - have)[:2]}), "
                            f"{len(have - want)} not in catalog.csv (e.g. {sorted(have - want)[:2]})")
    return problems


def check_main(args: Sequence[str], echo: Callable[[str], None] = print) -> int:
    if len(args) != 1:
        echo("usage: tolclip-build-shards check DIR")
        return 2
    problems = check(args[0])
    for p in problems:
        echo(p)
    echo(f"{len(problems)} problem(s) in {args[0]}" if problems else f"{args[0]}: all shards OK")
    return 1 if problems else 0


# ---------------------------------------------------------------------------------------- entry point


def _hydra_main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="build/default")
    def run(cfg: DictConfig) -> None:
        try:
            build_cfg = OmegaConf.to_container(cfg.build, resolve=True)
            stats = build(build_cfg)
        except (BuildError, FileNotFoundError, ValueError) as err:
            print(f"tolclip-build-shards: error: {err}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps({k: stats[k] for k in ("inputs", "images", "skipped", "not_selected", "excluded",
                                                 "fraction_all_seven_ranks",
                                                 "fraction_complete_to_lowest_rank",
                                                 "fraction_all_seven_ranks_of_species_labels", "shard_sets")}, indent=1))
        print(f"wrote {build_cfg['out_dir']}")

    run()


def main() -> None:
    """`tolclip-build-shards [hydra overrides]` or `tolclip-build-shards check DIR`."""
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        sys.exit(check_main(sys.argv[2:]))
    _hydra_main()


if __name__ == "__main__":
    main()
