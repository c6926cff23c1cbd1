"""Build Tree-of-Life training shards from image collections (`tolclip build-shards`, configs in configs/build/).

Stages, one function each: scan sources → resolve taxonomy (and drop excluded species) → process images
(decode, resize, encode and hash, in parallel) → drop eval leakage and within-dataset duplicates → split
by key hash → write shards → catalog, statistics and reports. Every scanned input ends in exactly one of
`catalog.csv`, `skipped.csv` (could not be used: scan problem, no taxon, bad image) or `excluded.csv`
(usable but kept out on purpose: excluded species, eval leakage, duplicate).

Resume (`resume=true`): the image stage appends each record's result to the spool (`tolclip.curate.spool`)
as it completes, so a resumed build decodes only the records not yet done. The dedup and split decisions
are cheap and deterministic and are simply recomputed. Each shard is written to a temporary name and
renamed when complete; `progress.json` lists the finished shards with their sample counts, and a resumed
build skips a shard whose file exists with the expected count. Shard contents are deterministic (fixed
order, mtime 0), so a resumed build's output equals an uninterrupted one byte for byte. A config that
changes anything affecting the output is refused on resume (its fingerprint differs), and so are inputs
that changed (the scan's fingerprint: keys, file size and mtime, labels). Every build ends by comparing
the shards with the catalog (tar headers only). The build holds a lock on `out_dir` throughout and
writes into a non-empty one only to resume or with `overwrite=true` (`tolclip.curate.progress`).

`train_small` (the ablation subset of train) is both a catalog flag and its own shard set under
`out_dir/train_small/`, a copy of the flagged train samples, so it can be trained on directly.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from glob import glob
from pathlib import Path
from typing import Any

from tolclip.core.taxonomy import RANKS, Taxon, clean_name
from tolclip.curate.check import check_catalog
from tolclip.curate.config import BuildConfig, BuildError
from tolclip.curate.dedup import Deduplicator, EvalExclusion
from tolclip.curate.entries import Entry, Outcome
from tolclip.curate.image_worker import process_images, worker_pool
from tolclip.curate.progress import Progress, out_dir_lock, prepare_out_dir, scan_signature
from tolclip.curate.resolve import Resolver, TableBackend, TaxoniqBackend
from tolclip.curate.shard_writer import ShardJob, plan_shards, write_shards
from tolclip.curate.sources import IMAGE_EXTENSIONS, NOT_SELECTED, SourceScan, open_source, read_table
from tolclip.curate.splits import TRAIN_SMALL, SplitPlan, make_key, split_entries
from tolclip.curate.spool import CACHE_DIR, Spool
from tolclip.curate.stats import catalog_rows, statistics, write_reports


def build(config: dict[str, Any] | BuildConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the statistics (also written to `stats.json`)."""
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.from_dict(config)
    # Two builds into one out_dir would delete each other's spool and shards: the second fails at once.
    with out_dir_lock(cfg.out_dir):
        return _build_locked(cfg)


def _build_locked(cfg: BuildConfig) -> dict[str, Any]:
    prepare_out_dir(cfg)
    progress = Progress(cfg)
    skipped, excluded = Outcome(), Outcome()
    entries = scan_sources(cfg, skipped)
    progress.record_scan(scan_signature(entries))  # a resume refuses inputs that changed meanwhile
    resolver = Resolver(_taxonomy_backend(cfg.taxonomy))
    candidates = resolve_taxonomy(cfg, entries, resolver, skipped, excluded)
    exclusion = _eval_exclusion(cfg)
    with Spool(cfg.out_dir / CACHE_DIR) as spool, worker_pool(cfg, exclusion) as pool:
        process_all_images(cfg, candidates, spool, exclusion, pool)
        kept = drop_leaks_and_duplicates(cfg, candidates, spool, skipped, excluded)
        plan = split_entries(kept, cfg.splits, cfg.train_small_fraction, holdout_keys(cfg, kept))
        shard_of = write_all_shards(cfg, plan.shard_sets, spool, pool, progress)
    stats = write_catalog_and_reports(cfg, plan, shard_of, entries, skipped, excluded, resolver)
    verify_shards(cfg.out_dir)
    progress.complete()
    if not cfg.keep_cache:
        shutil.rmtree(cfg.out_dir / CACHE_DIR, ignore_errors=True)
    return stats


def verify_shards(out: Path) -> None:
    """Fail unless the shards hold exactly the keys catalog.csv puts in them (tar headers only, cheap).

    Exit 0 must mean a usable shard set: a disagreement found here would otherwise surface only in
    `check-shards`, or as silently missing samples in training.
    """
    problems = check_catalog(out)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BuildError(
            f"the shards in {out} disagree with catalog.csv: {problems[0]}{more}; "
            "rebuild it with build.overwrite=true"
        )


# ------------------------------------------------------------------------------------------------ stages


def scan_sources(cfg: BuildConfig, skipped: Outcome) -> list[Entry]:
    """Every input of every source, in config order; the inputs a scan could not use go to `skipped`."""
    entries: list[Entry] = []
    for spec in cfg.sources:
        scan = _open_scan(spec)
        for n, record in enumerate(scan):
            if cfg.limit_per_source is not None and n >= cfg.limit_per_source:
                break
            entries.append(
                Entry(make_key(record.source, record.source_id), record.source, record.source_id, record)
            )
        for problem in scan.problems:
            e = Entry(make_key(scan.source, f"problem:{problem.item}"), scan.source, problem.item)
            entries.append(e)
            stage = "not_selected" if problem.reason.startswith(NOT_SELECTED) else "scan"
            skipped.add(e, stage, problem.reason)
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        dup = [k for k, c in Counter(keys).items() if c > 1][:3]
        raise BuildError(f"duplicate sample keys {dup}: a source yields the same source_id twice")
    return entries


def resolve_taxonomy(
    cfg: BuildConfig, entries: list[Entry], resolver: Resolver, skipped: Outcome, excluded: Outcome
) -> list[Entry]:
    """Give each entry its taxon; those without one, of an excluded species or short of min_rank leave."""
    excluded_species = load_excluded_species(cfg.exclude_species)
    candidates: list[Entry] = []
    for e in entries:
        if e.record is None:
            continue
        r = e.record
        res = resolver.resolve(r.ranks, r.scientific_name, r.common_name)
        e.taxon, e.status = res.taxon, res.status
        if not any(res.taxon.ranks):
            skipped.add(e, "resolve", f"no taxon: {r.label or '(empty label)'} ({res.status}; {res.note})")
        elif _binomial(res.taxon) in excluded_species:
            excluded.add(e, "species", f"excluded species {res.taxon.scientific_name}")
        elif missing := _missing_ranks(res.taxon, cfg.min_rank):
            excluded.add(e, "rank", f"lineage lacks {', '.join(missing)} (min_rank {cfg.min_rank})")
        else:
            candidates.append(e)
    resolver.write_report(cfg.out_dir / "resolution_report.csv")
    return candidates


def process_all_images(
    cfg: BuildConfig, candidates: list[Entry], spool: Spool, exclusion: EvalExclusion | None, pool: Any
) -> None:
    """Decode, resize, encode and hash every candidate the spool does not hold yet, into the spool."""
    todo = [
        (e.key, str(e.record.path), e.taxon, e.source, e.source_id)
        for e in candidates
        if e.key not in spool.done
    ]
    results = process_images(todo, cfg, exclusion, pool)
    for result in _track(results, len(todo), "images", cfg.progress):
        spool.add(result)


def drop_leaks_and_duplicates(
    cfg: BuildConfig, candidates: list[Entry], spool: Spool, skipped: Outcome, excluded: Outcome
) -> list[Entry]:
    """The candidates that decoded, leak no eval image and duplicate no earlier one, in scan order."""
    dedup = Deduplicator(cfg.max_distance)
    kept: list[Entry] = []
    for e in candidates:
        row = spool.done[e.key]
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
    return kept


def write_all_shards(
    cfg: BuildConfig, sets: dict[str, list[Entry]], spool: Spool, pool: Any, progress: Progress
) -> dict[str, str]:
    """Write every shard not finished yet (each recorded in progress.json); returns key -> shard path."""
    out = cfg.out_dir
    plans, shard_of = _plan_all_shards(cfg, sets, spool)
    for split_dir in sets:
        # Leftovers of a shard write that was interrupted.
        for stale in (out / split_dir).glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    spool.flush()
    jobs: list[ShardJob] = [
        (str(out / rel), str(spool.blobs), [spool.span(e.key) for e in members])
        for rel, members in plans
        if not progress.is_finished(rel, len(members))
    ]
    for path, count in _track(write_shards(jobs, pool), len(jobs), "shards", cfg.progress):
        progress.shard_written(path, count)
    return shard_of


def write_catalog_and_reports(
    cfg: BuildConfig,
    plan: SplitPlan,
    shard_of: dict[str, str],
    entries: list[Entry],
    skipped: Outcome,
    excluded: Outcome,
    resolver: Resolver,
) -> dict[str, Any]:
    """Write the catalog, skipped/excluded reports and stats.json; returns the statistics."""
    catalog = catalog_rows(plan, shard_of)
    set_sizes = {name: len(members) for name, members in plan.shard_sets.items()}
    stats = statistics(catalog, entries, skipped, excluded, resolver.summary(), set_sizes)
    write_reports(cfg.out_dir, catalog, skipped, excluded, stats)
    return stats


# ----------------------------------------------------------------------------------------------- helpers


def _open_scan(spec: dict[str, Any]) -> SourceScan:
    kwargs = dict(spec)
    kind = kwargs.pop("kind", None)
    if kind is None:
        raise BuildError(f"source {spec} has no `kind:`")
    try:
        return open_source(kind, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        raise BuildError(f"source {kwargs.get('source', kind)!r}: {err}") from err


def _plan_all_shards(
    cfg: BuildConfig, sets: dict[str, list[Entry]], spool: Spool
) -> tuple[list[tuple[str, list[Entry]]], dict[str, str]]:
    """(shard path relative to out_dir, its entries) for every shard, and each catalogued key's shard."""
    shard_of: dict[str, str] = {}
    plans: list[tuple[str, list[Entry]]] = []
    for name, members in sets.items():
        lookup = {e.key: e for e in members}
        sizes = {e.key: spool.span(e.key)[1] for e in members}
        for i, keys in enumerate(plan_shards([e.key for e in members], sizes, cfg.max_count, cfg.max_bytes)):
            rel = f"{name}/shard-{i:06d}.tar"
            plans.append((rel, [lookup[k] for k in keys]))
            if name != TRAIN_SMALL:  # train_small copies train samples; the catalog names their train shard
                shard_of.update(dict.fromkeys(keys, rel))
    return plans, shard_of


def holdout_keys(cfg: BuildConfig, kept: list[Entry]) -> tuple[str, set[str]] | None:
    """(holdout split, keys of the held-out species' images); a named species with no kept image is an
    error, since a typo would silently shrink the unseen-species evaluation."""
    names = load_excluded_species(cfg.holdout_species, key="holdout_species")
    if not names:
        return None
    keys = {e.key for e in kept if _binomial(e.taxon) in names}
    found = {_binomial(e.taxon) for e in kept if e.key in keys}
    if missing := sorted(names - found):
        raise BuildError(
            f"holdout_species: no kept image of {', '.join(missing)} (check the spelling, "
            "exclude_species and limit_per_source)"
        )
    return cfg.holdout_split, keys


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


def _track(items: Iterable[Any], total: int, description: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=total, description=description, transient=False)
