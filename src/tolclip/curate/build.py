"""Build Tree-of-Life training shards from image collections (`tolclip build-shards`, configs in configs/build/).

A streaming pipeline: every input flows through the stages one by one, in scan order, and nothing is
kept per image but its hashes, so memory stays flat however large the collection:

    scan sources → resolve taxonomy (drop excluded species) → image stage (decode, resize, encode,
    hash, tar members: in parallel, on a local process pool or Ray) → drop eval leakage and duplicates
    → split by key hash → append to the split's open shard → catalog row

The image stage runs ahead of the rest (a bounded window of chunks in flight), so decoding overlaps
the driver's serial work. Results come back in input order, so every decision (which duplicate is
kept, which shard a sample lands in) is the same whatever the executor and worker count.

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

from tolclip.core.taxonomy import RANKS, Taxon, clean_name
from tolclip.curate.check import Mapper, ShardSummary, check_catalog, shard_summaries
from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.dedup import Deduplicator, EvalExclusion
from tolclip.curate.dedup_partitioned import IndexPartition, PartitionedDeduplicator
from tolclip.curate.entries import Entry
from tolclip.curate.executor import open_executor, ordered_map
from tolclip.curate.image_worker import SPILL_DIR, image_settings, init_worker, process_chunk, unspill
from tolclip.curate.journal import (
    CACHE_DIR,
    Journal,
    ScanLog,
    SourceChanged,
    describe_change,
    input_signature,
    journal_mismatch,
)
from tolclip.curate.progress import Progress, out_dir_lock, prepare_out_dir
from tolclip.curate.resolve import Resolver, TableBackend, TaxoniqBackend
from tolclip.curate.shard_writer import ShardSets
from tolclip.curate.sources import IMAGE_EXTENSIONS, NOT_SELECTED, SourceScan, open_source, read_table
from tolclip.curate.splits import TRAIN_SMALL, in_train_small, make_key, split_of
from tolclip.curate.stats import Reports, catalog_row


def build(config: dict[str, Any] | BuildConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the statistics (also written to `stats.json`)."""
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.from_dict(config)
    # Two builds into one out_dir would delete each other's journal and shards: the second fails at once.
    with out_dir_lock(cfg.out_dir):
        return _build_locked(cfg)


def _build_locked(cfg: BuildConfig) -> dict[str, Any]:
    # Everything that can fail on a bad setting (taxonomy backend, eval images, executor, cluster)
    # fails before the first write into out_dir.
    resolver = Resolver(_taxonomy_backend(cfg.taxonomy))
    exclusion = _eval_exclusion(cfg)
    # A local pool's workers hand tar members over in files (cheaper than the pipe); Ray's object store
    # moves them itself, and in this process there is nothing to hand over.
    spill = cfg.out_dir / CACHE_DIR / SPILL_DIR if cfg.executor == "local" and cfg.workers >= 1 else None
    settings = image_settings(cfg, exclusion, spill)
    with open_executor(
        cfg.executor, cfg.workers, init_worker, settings, cfg.ray_address, cfg.task_timeout
    ) as ex:
        prepare_out_dir(cfg)
        progress = Progress(cfg)
        run = BuildRun(cfg, progress, resolver, spill, _deduplicator(cfg, ex))
        try:
            set_sizes = run.execute(ex)
        except BaseException:
            run.abandon()
            raise
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)  # empty: every chunk's file went once it was placed
        # Every shard is in place: a local pool lists them while this process writes the reports (Ray
        # workers may not see out_dir).
        listing = shard_summaries(cfg.out_dir, _pool_map(ex) if cfg.executor == "local" else map)
        resolver.write_report(cfg.out_dir / "resolution_report.csv")
        stats = run.reports.finish(resolver.summary(), set_sizes)
        verify_shards(cfg.out_dir, listing)
    progress.complete()
    if not cfg.keep_cache:
        shutil.rmtree(cfg.out_dir / CACHE_DIR, ignore_errors=True)
    return stats


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
    """One build's streaming state: the logs, the reports, the open shards and the duplicate index."""

    def __init__(
        self,
        cfg: BuildConfig,
        progress: Progress,
        resolver: Resolver,
        spill: Path | None = None,
        dedup: Deduplicator | PartitionedDeduplicator | None = None,
    ) -> None:
        cache = cfg.out_dir / CACHE_DIR
        self.cfg, self.resolver = cfg, resolver
        if spill is not None:  # an interrupted build's spill files were never journalled: start afresh
            if spill.is_dir():
                shutil.rmtree(spill)
            spill.unlink(missing_ok=True)
            spill.mkdir(parents=True)
        self.scan_log = ScanLog(cache, cfg.resume)
        self.journal = Journal(cache, cfg.resume)
        self.reports = Reports(cfg.out_dir, cache, [*cfg.splits, cfg.holdout_split])
        self.shards = ShardSets(cfg, progress)
        self.dedup = dedup if dedup is not None else Deduplicator(cfg.max_distance)
        self.excluded_species = load_excluded_species(cfg.exclude_species)
        self.holdout = load_excluded_species(cfg.holdout_species, key="holdout_species")
        self.held_found: set[str] = set()

    def execute(self, executor: Any) -> dict[str, int]:
        """Stream every input through the stages; returns the samples per shard set."""
        entries = self.resolve_taxonomy(self.scan_sources())
        for entry, result, replayed in self.process_images(entries, executor):
            self.decide(entry, result)
            if result is not None and not replayed and self.journal.append(_journal_row(result)):
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
        """Scan log and shards before the journal: a journal line never names bytes not yet on disk."""
        self.scan_log.flush()
        self.shards.flush()
        self.journal.flush()

    def abandon(self) -> None:
        """After an error or interrupt: keep what is consistent on disk for a resume."""
        self.shards.abandon()
        self.scan_log.close()
        self.journal.close()
        self.reports.close()

    # ---------------------------------------------------------------------------------------- stages

    def scan_sources(self) -> Iterator[Entry]:
        """Every input of every source, in config order, checked against the interrupted build's scan
        on resume; the inputs a scan could not use go to skipped.csv."""
        raw = _raw_entries(self.cfg)
        for entry, problem in raw:
            try:
                self.scan_log.check(entry)
            except SourceChanged as change:
                rest = [[e.key, e.source_id, input_signature(e)] for e, _ in chain([(entry, problem)], raw)]
                raise self._changed(describe_change(change.old, rest)) from None
            self.reports.inputs += 1
            if problem is not None:
                stage = "not_selected" if problem.startswith(NOT_SELECTED) else "scan"
                entry.fate = ("skip", stage, problem)
            yield entry
        try:
            self.scan_log.finish()
        except SourceChanged as change:
            raise self._changed(describe_change(change.old, [])) from None

    def _changed(self, what: str) -> BuildError:
        return BuildError(
            f"source changed since the interrupted build in {self.cfg.out_dir}: {what}; "
            "rebuild without resume (build.overwrite=true) or restore the source"
        )

    def resolve_taxonomy(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        """Give each entry its taxon; those without one, of an excluded species or short of min_rank get
        their fate (they pass on, so every report row comes out in scan order)."""
        min_rank = self.cfg.min_rank
        for e in entries:
            r = e.record
            if e.fate is None and r is not None:
                res = self.resolver.resolve(r.ranks, r.scientific_name, r.common_name)
                e.taxon, e.status = res.taxon, res.status
                if not any(res.taxon.ranks):
                    e.fate = (
                        "skip",
                        "resolve",
                        f"no taxon: {r.label or '(empty label)'} ({res.status}; {res.note})",
                    )
                elif _binomial(res.taxon) in self.excluded_species:
                    e.fate = ("exclude", "species", f"excluded species {res.taxon.scientific_name}")
                elif missing := _missing_ranks(res.taxon, min_rank):
                    e.fate = ("exclude", "rank", f"lineage lacks {', '.join(missing)} (min_rank {min_rank})")
            yield e

    def process_images(
        self, entries: Iterator[Entry], executor: Any
    ) -> Iterator[tuple[Entry, dict[str, Any] | None, bool]]:
        """(entry, image result or None for an entry with a fate, replayed) in scan order: first from the
        journal of an interrupted build (no decoding), then from the executor."""
        replay = self._prefetched(self.journal.replay(), 16 * self.cfg.chunk_size)
        for entry in entries:
            if entry.fate is not None:
                yield entry, None, True
                continue
            row = next(replay, None)
            if row is None:
                entries = chain([entry], entries)
                break
            if row["key"] != entry.key:
                raise journal_mismatch(self.cfg.out_dir, row["key"], entry.key)
            yield entry, row, True
        if (row := next(replay, None)) is not None:
            raise journal_mismatch(self.cfg.out_dir, row["key"], "no more images")
        self.journal.open()
        yield from self._executed(entries, executor)

    def _prefetched(self, rows: Iterator[dict[str, Any]], block: int) -> Iterator[dict[str, Any]]:
        """`rows` (image results in scan order), the dedup's index asked about each block of them first:
        one round trip per block to a partitioned index instead of one per image."""
        while batch := list(islice(rows, block)):
            self.dedup.prefetch((r["sha256"], r["phash"]) for r in batch if _to_dedup(r))
            yield from batch

    def _executed(
        self, entries: Iterator[Entry], executor: Any
    ) -> Iterator[tuple[Entry, dict[str, Any] | None, bool]]:
        chunks: deque[list[Entry]] = deque()

        def tasks() -> Iterator[list[tuple]]:
            while chunk := list(islice(entries, self.cfg.chunk_size)):
                chunks.append(chunk)
                yield [
                    (e.key, str(e.record.path), e.taxon, e.source, e.source_id) for e in chunk if not e.fate
                ]

        window = max(2, 2 * executor.workers)
        for results in _track(
            ordered_map(executor, process_chunk, tasks(), window), "images", self.cfg.progress
        ):
            spill_file = unspill(results)
            done = self._prefetched(iter(results), len(results))
            for e in chunks.popleft():
                yield e, None if e.fate else next(done), False
            if spill_file is not None:  # every blob of the chunk is in its shard (or was not kept)
                spill_file.unlink()

    def decide(self, e: Entry, result: dict[str, Any] | None) -> None:
        """Report an entry's fate, skip a bad image, exclude a leak or duplicate, else place the sample."""
        if result is None:
            assert e.fate is not None
            kind, stage, reason = e.fate
            (self.reports.skip if kind == "skip" else self.reports.exclude)(e, stage, reason)
        elif not result["ok"]:
            self.reports.skip(e, "image", result["reason"])
        elif result.get("leak"):
            self.reports.exclude(e, "eval", result["leak"])
        elif (original := self.dedup.add_hashes(e.key, result["sha256"], result["phash"])) is not None:
            self.reports.exclude(e, "duplicate", f"duplicate of {original}")
        else:
            self.place(e, result["length"], result.get("blob"))

    def place(self, e: Entry, length: int, blob: bytes | None) -> None:
        binomial = _binomial(e.taxon)
        held = binomial in self.holdout
        if held:
            self.held_found.add(binomial)
        split = split_of(e.key, self.cfg.splits, self.cfg.holdout_split if held else None)
        shard = self.shards.add(split, length, blob)
        small = split == "train" and in_train_small(e.key, self.cfg.train_small_fraction)
        if small:
            self.shards.add(TRAIN_SMALL, length, blob)
        self.reports.catalog(catalog_row(e, shard, split, small))

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


def _journal_row(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "blob"}


# ----------------------------------------------------------------------------------------------- helpers


def _raw_entries(cfg: BuildConfig) -> Iterator[tuple[Entry, str | None]]:
    """(entry, None) for each record, (entry, reason) for each input a scan could not use, in scan order."""
    for spec in cfg.sources:
        scan = _open_scan(spec)
        n = 0
        for record in scan:
            yield from _problems(scan)
            if cfg.limit_per_source is not None and n >= cfg.limit_per_source:
                break
            n += 1
            yield (
                Entry(make_key(record.source, record.source_id), record.source, record.source_id, record),
                None,
            )
        yield from _problems(scan)


def _problems(scan: SourceScan) -> Iterator[tuple[Entry, str]]:
    # Emptied as they are reported, so a source with millions of bad rows does not pile them up.
    problems = list(scan.problems)
    del scan.problems[:]
    for problem in problems:
        yield (
            Entry(make_key(scan.source, f"problem:{problem.item}"), scan.source, problem.item),
            problem.reason,
        )


def _open_scan(spec: dict[str, Any]) -> SourceScan:
    kwargs = dict(spec)
    kind = kwargs.pop("kind", None)
    if kind is None:
        raise BuildError(f"source {spec} has no `kind:`")
    try:
        return open_source(kind, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        raise BuildError(f"source {kwargs.get('source', kind)!r}: {err}") from err


def _binomial(taxon: Taxon) -> str:
    """The casefolded binomial ("genus species"), or "" when the taxon is not a species."""
    return f"{taxon.genus} {taxon.species}".casefold() if taxon.genus and taxon.species else ""


def _missing_ranks(taxon: Taxon, min_rank: str | None) -> list[str]:
    """The ranks from kingdom down to `min_rank` that the lineage lacks ([] without a min_rank)."""
    if not min_rank:
        return []
    return [r for r in RANKS[: RANKS.index(min_rank) + 1] if not taxon.rank(r)]


def load_excluded_species(spec: Any, key: str = "exclude_species") -> set[str]:
    """Binomials (casefolded) from a list of names or `{table: path, column: name}`; `key` names the
    config key in errors."""
    if not spec:
        return set()
    if isinstance(spec, dict):
        if "table" not in spec:
            raise BuildError(f"{key} needs `table:` (and `column:`), got {sorted(spec)}")
        column = spec.get("column", "scientific_name")
        try:
            header, rows = read_table(spec["table"])
        except (FileNotFoundError, ValueError) as err:
            raise BuildError(f"{key}: {err}") from err
        if column not in header:
            raise BuildError(f"{key}: table {spec['table']} has no column {column!r}; it has {header}")
        names: Iterable[str] = (row[column] for row in rows)
    else:
        names = spec
    out = set()
    for name in names:
        words = clean_name(name).split(" ")
        if len(words) >= 2:
            out.add(f"{words[0]} {words[1]}".casefold())
    return out


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
