"""The build's scan stage: sources read as streams, checked against the scan log, taxonomy resolved,
fates decided before any decoding, and each input planned for the driver, in chunks.

Everything here is a function of the input alone (not of what was kept before it), so it can run
ahead of the driver, in its own process (`tolclip.curate.child_stream`): per input it sends a compact
`Planned` (with the split, the train_small flag and the catalog row's text already made) and, for an
input to decode, the image task. The generator's return value is the resolution summary.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from itertools import chain, islice
from typing import Any, NamedTuple

from tolclip.core.taxonomy import RANKS, Taxon, clean_name
from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.entries import Entry
from tolclip.curate.image_worker import ImageTask
from tolclip.curate.journal import CACHE_DIR, ScanLog, SourceChanged, describe_change, input_signature
from tolclip.curate.resolve import Resolver
from tolclip.curate.sources import NOT_SELECTED, SourceScan, open_source, read_table
from tolclip.curate.splits import in_train_small, make_key, split_of
from tolclip.curate.stats import catalog_tail


class Planned(NamedTuple):
    """What the driver needs of one scanned input (a few strings: cheap to send between processes)."""

    key: str
    source: str
    source_id: str
    fate: tuple[str, str, str] | None  # ("skip" | "exclude", stage, reason), decided by the scan
    split: str = ""
    small: bool = False  # in train_small, if kept
    held: str = ""  # the binomial of a holdout species
    lineage: tuple[str, ...] = ()
    tail: str = ""  # `catalog_tail`


Chunk = tuple[list[Planned], list[ImageTask]]  # the image tasks of the chunk's inputs without a fate


class ScanStage:
    """The scan stage of one build; `run()` is the generator of its chunks (see the module docstring)."""

    def __init__(self, cfg: BuildConfig, resolver: Resolver, excluded: set[str], holdout: set[str]) -> None:
        self.cfg, self.resolver = cfg, resolver
        self.excluded, self.holdout = excluded, holdout

    def run(self) -> Generator[Chunk, None, dict[str, Any]]:
        """Chunks of `cfg.chunk_size` inputs in scan order; returns the resolution summary once the scan
        log and `resolution_report.csv` are written."""
        scan_log = ScanLog(self.cfg.out_dir / CACHE_DIR, self.cfg.resume)
        try:
            entries = self.resolve_taxonomy(self.scan_sources(scan_log))
            while chunk := list(islice(entries, self.cfg.chunk_size)):
                planned = [self.plan(e) for e in chunk]
                tasks = [
                    (e.key, str(e.record.path), e.taxon, e.source, e.source_id) for e in chunk if not e.fate
                ]
                # A journal line must never name an input the scan log lacks (a resume checks the log).
                scan_log.flush()
                yield planned, tasks
        finally:
            scan_log.close()
        self.resolver.write_report(self.cfg.out_dir / "resolution_report.csv")
        return self.resolver.summary()

    def plan(self, e: Entry) -> Planned:
        if e.fate is not None:
            return Planned(e.key, e.source, e.source_id, e.fate)
        assert e.taxon is not None
        binomial = _binomial(e.taxon)
        held = binomial if binomial in self.holdout else ""
        split = split_of(e.key, self.cfg.splits, self.cfg.holdout_split if held else None)
        small = split == "train" and in_train_small(e.key, self.cfg.train_small_fraction)
        return Planned(e.key, e.source, e.source_id, None, split, small, held, e.taxon.ranks, catalog_tail(e))

    def scan_sources(self, scan_log: ScanLog) -> Iterator[Entry]:
        """Every input of every source, in config order, checked against the interrupted build's scan
        on resume; the inputs a scan could not use get their fate (skipped.csv)."""
        raw = _raw_entries(self.cfg)
        for entry, problem in raw:
            try:
                scan_log.check(entry)
            except SourceChanged as change:
                rest = [[e.key, e.source_id, input_signature(e)] for e, _ in chain([(entry, problem)], raw)]
                raise self._changed(describe_change(change.old, rest)) from None
            if problem is not None:
                stage = "not_selected" if problem.startswith(NOT_SELECTED) else "scan"
                entry.fate = ("skip", stage, problem)
            yield entry
        try:
            scan_log.finish()
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
                elif _binomial(res.taxon) in self.excluded:
                    e.fate = ("exclude", "species", f"excluded species {res.taxon.scientific_name}")
                elif missing := _missing_ranks(res.taxon, min_rank):
                    e.fate = ("exclude", "rank", f"lineage lacks {', '.join(missing)} (min_rank {min_rank})")
            yield e


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
