"""Build Tree-of-Life training shards from image collections (`tolclip build-shards`, configs in configs/build/).

A streaming pipeline of three stages that run at once, on different cores; every input flows through
them in scan order, and nothing is kept per image but its hashes, so memory stays flat however large
the collection:

    scan stage (`tolclip.curate.scan`, its own process when there are workers): scan sources →
    resolve taxonomy (drop excluded species) → split by key hash, catalog text
    → image stage (decode, resize, encode, hash, tar members, journal line: in parallel, on a local
    process pool or Ray)
    → driver (this process): drop eval leakage and duplicates → append to the split's open shard →
    catalog row and journal line

The scan stage runs ahead of the driver (bounded by its pipe) and the image stage too (a bounded
window of chunks in flight), so the driver is left only the decisions that depend on what came
before: dedup and the shard cut. Results come back in input order, so every decision (which
duplicate is kept, which shard a sample lands in) is the same whatever the executor and worker count.

Every scanned input ends in exactly one of `catalog.csv`, `skipped.csv` (could not be used: scan
problem, no taxon, bad image) or `excluded.csv` (usable but kept out on purpose: excluded species,
eval leakage, duplicate).

Resume (`resume=true`): the journal (`tolclip.curate.journal`) has a line for every image processed,
written after its tar members reached the open shard. A resumed build checks the new scan against the
old one, replays the journal through the same decisions without decoding, cuts the open shards back to
what the journal accounts for and continues: the output equals an uninterrupted build's byte for byte.
A changed config (its fingerprint) or changed inputs are refused. Every build ends by comparing the
shards with the catalog (tar headers only). The build holds a lock on `out_dir` throughout and writes
into a non-empty one only to resume or with `overwrite=true` (`tolclip.curate.progress`).

`train_small` (the ablation subset of train) is both a catalog flag and its own shard set under
`out_dir/train_small/`, a copy of the flagged train samples, so it can be trained on directly.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from glob import glob
from itertools import chain, islice
from pathlib import Path
from typing import Any

from tolclip.curate.check import Mapper, ShardSummary, check_catalog, shard_summaries
from tolclip.curate.child_stream import ChildStream, InlineStream, can_fork
from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.dedup import Deduplicator, EvalExclusion
from tolclip.curate.dedup_partitioned import IndexPartition, PartitionedDeduplicator
from tolclip.curate.executor import check_settings, open_executor, ordered_map
from tolclip.curate.image_worker import (
    SPILL_DIR,
    ImageTask,
    image_settings,
    init_worker,
    process_chunk,
    unspill,
)
from tolclip.curate.journal import CACHE_DIR, Journal, journal_mismatch
from tolclip.curate.progress import Progress, out_dir_lock, prepare_out_dir
from tolclip.curate.resolve import Resolver, TableBackend, TaxoniqBackend
from tolclip.curate.scan import Chunk, Planned, ScanStage, load_excluded_species
from tolclip.curate.shard_writer import ShardSets
from tolclip.curate.sources import IMAGE_EXTENSIONS
from tolclip.curate.splits import TRAIN_SMALL
from tolclip.curate.stats import Reports


def build(config: dict[str, Any] | BuildConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the statistics (also written to `stats.json`)."""
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.from_dict(config)
    # Two builds into one out_dir would delete each other's journal and shards: the second fails at once.
    with out_dir_lock(cfg.out_dir):
        return _build_locked(cfg)


def _build_locked(cfg: BuildConfig) -> dict[str, Any]:
    # Everything that can fail on a bad setting (taxonomy backend, species lists, eval images, executor,
    # cluster) fails before the first write into out_dir.
    check_settings(cfg.executor, cfg.workers, cfg.task_timeout)
    resolver = Resolver(_taxonomy_backend(cfg.taxonomy))
    holdout = load_excluded_species(cfg.holdout_species, key="holdout_species")
    scan = ScanStage(cfg, resolver, load_excluded_species(cfg.exclude_species), holdout)
    exclusion = _eval_exclusion(cfg)
    # A local pool's workers hand tar members over in files (cheaper than the pipe); Ray's object store
    # moves them itself, and in this process there is nothing to hand over.
    spill = cfg.out_dir / CACHE_DIR / SPILL_DIR if cfg.executor == "local" and cfg.workers >= 1 else None
    settings = image_settings(cfg, exclusion, spill)
    # The scan stage's process is forked first, before the executor starts threads or a Ray client.
    with (
        _scan_stream(cfg, scan) as stream,
        open_executor(
            cfg.executor, cfg.workers, init_worker, settings, cfg.ray_address, cfg.task_timeout
        ) as ex,
    ):
        prepare_out_dir(cfg)
        progress = Progress(cfg)
        run = BuildRun(cfg, progress, holdout, spill, _deduplicator(cfg, ex))
        try:
            set_sizes = run.execute(stream.items(), ex)
        except BaseException:
            run.abandon()
            raise
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)  # empty: every chunk's file went once it was placed
        # Every shard is in place: a local pool lists them while this process writes the reports (Ray
        # workers may not see out_dir).
        listing = shard_summaries(cfg.out_dir, _pool_map(ex) if cfg.executor == "local" else map)
        stats = run.reports.finish(stream.result, set_sizes)
        verify_shards(cfg.out_dir, listing)
    progress.complete()
    if not cfg.keep_cache:
        shutil.rmtree(cfg.out_dir / CACHE_DIR, ignore_errors=True)
    return stats


def _scan_stream(cfg: BuildConfig, scan: ScanStage) -> ChildStream | InlineStream:
    """The scan stage in its own process when the image stage has workers (the driver then only decides
    and writes), else in this one."""
    if (cfg.workers >= 1 or cfg.executor == "ray") and can_fork():
        scan.resolver.backend.preload()  # once, here, not in every build's scan process
        return ChildStream(scan.run, cfg.task_timeout, "scan stage")
    return InlineStream(scan.run)


def _pool_map(executor: Any) -> Mapper:
    """`map` on the executor, every task submitted at once (the caller works while they run)."""

    def mapper(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        pending = [executor.submit(fn, item) for item in items]
        return (p.result() for p in pending)

    return mapper


def verify_shards(out: Path, listing: Iterable[ShardSummary]) -> None:
    """Fail unless the shards hold exactly the keys catalog.csv puts in them (tar headers only, cheap).

    Exit 0 must mean a usable shard set: a disagreement found here would otherwise surface only in
    `check-shards`, or as silently missing samples in training.
    """
    problems = check_catalog(out, summaries=listing)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BuildError(
            f"the shards in {out} disagree with catalog.csv: {problems[0]}{more}; "
            "rebuild it with build.overwrite=true"
        )


class BuildRun:
    """The driver's streaming state: the journal, the reports, the open shards and the duplicate index."""

    def __init__(
        self,
        cfg: BuildConfig,
        progress: Progress,
        holdout: set[str],
        spill: Path | None = None,
        dedup: Deduplicator | PartitionedDeduplicator | None = None,
    ) -> None:
        cache = cfg.out_dir / CACHE_DIR
        self.cfg = cfg
        if spill is not None:  # an interrupted build's spill files were never journalled: start afresh
            if spill.is_dir():
                shutil.rmtree(spill)
            spill.unlink(missing_ok=True)
            spill.mkdir(parents=True)
        self.journal = Journal(cache, cfg.resume)
        self.reports = Reports(cfg.out_dir, cache, [*cfg.splits, cfg.holdout_split])
        self.shards = ShardSets(cfg, progress)
        self.dedup = dedup if dedup is not None else Deduplicator(cfg.max_distance)
        self.holdout = holdout
        self.held_found: set[str] = set()

    def execute(self, chunks: Iterator[Chunk], executor: Any) -> dict[str, int]:
        """Stream every planned input through the stages; returns the samples per shard set."""
        for planned, result, replayed in self.process_images(chunks, executor):
            self.decide(planned, result)
            if result is not None and not replayed and self.journal.append(result["journal"]):
                self.flush()
        self.flush()
        self.journal.close()
        self._check_holdout()
        sizes = self.shards.finish()
        expected = [*self.cfg.splits, *([self.cfg.holdout_split] if self.holdout else [])]
        if self.cfg.train_small_fraction > 0 and "train" in self.cfg.splits:
            expected.append(TRAIN_SMALL)
        return {name: sizes.get(name, 0) for name in dict.fromkeys([*expected, *sizes])}

    def flush(self) -> None:
        """Shards before the journal: a journal line never names bytes not yet on disk (the scan stage
        flushed its log before it sent the inputs)."""
        self.shards.flush()
        self.journal.flush()

    def abandon(self) -> None:
        """After an error or interrupt: keep what is consistent on disk for a resume."""
        self.shards.abandon()
        self.journal.close()
        self.reports.close()

    # ---------------------------------------------------------------------------------------- stages

    def process_images(
        self, chunks: Iterator[Chunk], executor: Any
    ) -> Iterator[tuple[Planned, dict[str, Any] | None, bool]]:
        """(input, image result or None for an input with a fate, replayed) in scan order: first from the
        journal of an interrupted build (no decoding), then from the executor."""
        replay = self._prefetched(self.journal.replay(), 16 * self.cfg.chunk_size)
        rest: list[Chunk] = []
        for planned, tasks in chunks:
            for i, p in enumerate(planned):
                if p.fate is not None:
                    yield p, None, True
                    continue
                row = next(replay, None)
                if row is None:  # the journal ends here: the chunk's other inputs go to the executor
                    done = sum(q.fate is None for q in planned[:i])
                    rest.append((planned[i:], tasks[done:]))
                    break
                if row["key"] != p.key:
                    raise journal_mismatch(self.cfg.out_dir, row["key"], p.key)
                yield p, row, True
            if rest:
                break
        if (row := next(replay, None)) is not None:
            raise journal_mismatch(self.cfg.out_dir, row["key"], "no more images")
        self.journal.open()
        yield from self._executed(chain(rest, chunks), executor)

    def _prefetched(self, rows: Iterator[dict[str, Any]], block: int) -> Iterator[dict[str, Any]]:
        """`rows` (image results in scan order), the dedup's index asked about each block of them first:
        one round trip per block to a partitioned index instead of one per image."""
        while batch := list(islice(rows, block)):
            self.dedup.prefetch((r["sha256"], r["phash"]) for r in batch if _to_dedup(r))
            yield from batch

    def _executed(
        self, chunks: Iterator[Chunk], executor: Any
    ) -> Iterator[tuple[Planned, dict[str, Any] | None, bool]]:
        in_flight: deque[list[Planned]] = deque()

        def tasks() -> Iterator[list[ImageTask]]:
            for planned, chunk_tasks in chunks:
                in_flight.append(planned)
                yield chunk_tasks

        window = max(2, 2 * executor.workers)
        for results in _track(
            ordered_map(executor, process_chunk, tasks(), window), "images", self.cfg.progress
        ):
            spill_file = unspill(results)
            done = self._prefetched(iter(results), len(results))
            for p in in_flight.popleft():
                yield p, None if p.fate else next(done), False
            if spill_file is not None:  # every blob of the chunk is in its shard (or was not kept)
                spill_file.unlink()

    def decide(self, p: Planned, result: dict[str, Any] | None) -> None:
        """Report an input's fate, skip a bad image, exclude a leak or duplicate, else place the sample."""
        self.reports.inputs += 1
        if result is None:
            assert p.fate is not None
            kind, stage, reason = p.fate
            (self.reports.skip if kind == "skip" else self.reports.exclude)(p, stage, reason)
        elif not result["ok"]:
            self.reports.skip(p, "image", result["reason"])
        elif result.get("leak"):
            self.reports.exclude(p, "eval", result["leak"])
        elif (original := self.dedup.add_hashes(p.key, result["sha256"], result["phash"])) is not None:
            self.reports.exclude(p, "duplicate", f"duplicate of {original}")
        else:
            self.place(p, result["length"], result.get("blob"))

    def place(self, p: Planned, length: int, blob: bytes | None) -> None:
        if p.held:
            self.held_found.add(p.held)
        shard = self.shards.add(p.split, length, blob)
        if p.small:
            self.shards.add(TRAIN_SMALL, length, blob)
        self.reports.sample(p.key, shard, p.split, p.small, p.tail, p.lineage, p.source)

    def _check_holdout(self) -> None:
        # A name with no kept image is an error: a typo would silently shrink the unseen-species evaluation.
        if missing := sorted(self.holdout - self.held_found):
            raise BuildError(
                f"holdout_species: no kept image of {', '.join(missing)} (check the spelling, "
                "exclude_species and limit_per_source)"
            )


def _to_dedup(result: dict[str, Any]) -> bool:
    """Whether `decide` asks the dedup about this image result (a good image that leaks nothing)."""
    return bool(result["ok"]) and not result.get("leak")


def _deduplicator(cfg: BuildConfig, executor: Any) -> Deduplicator | PartitionedDeduplicator:
    """The driver's index, or one spread over `dedup_partitions` actors of the executor."""
    if cfg.dedup_partitions == 0:
        return Deduplicator(cfg.max_distance)
    # max_distance was checked with the config, before anything was written.
    return PartitionedDeduplicator(executor.actors(IndexPartition, cfg.dedup_partitions), cfg.max_distance)


# ----------------------------------------------------------------------------------------------- helpers


def _taxonomy_backend(spec: dict[str, Any]) -> Any:
    kind = spec.get("backend", "taxoniq")
    if kind == "taxoniq":
        return TaxoniqBackend()
    if kind == "table":
        path = spec.get("path")
        if not path or not Path(path).is_file():
            raise BuildError(f"taxonomy backend 'table' needs an existing `path:`, got {path!r}")
        return TableBackend.from_file(path)
    raise BuildError(f"unknown taxonomy backend {kind!r}; use 'taxoniq' or 'table'")


def _eval_exclusion(cfg: BuildConfig) -> EvalExclusion | None:
    if not cfg.eval_images:
        return None
    return EvalExclusion.from_paths(_eval_paths(cfg.eval_images), cfg.max_distance, cfg.max_pixels)


def _eval_paths(patterns: Sequence[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(
                str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
        else:
            found = sorted(glob(pattern, recursive=True))
        if not found:
            raise BuildError(f"eval_images: {pattern!r} matches no file")
        paths.extend(found)
    return paths


def _track(items: Iterable[Any], description: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=f"{description} (chunks)", transient=False)
