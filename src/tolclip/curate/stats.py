"""The build's reports: `catalog.csv`/`.parquet`, `skipped.csv`, `excluded.csv` and `stats.json`."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tolclip.core.taxonomy import RANKS
from tolclip.curate.entries import Entry, Outcome
from tolclip.curate.splits import SplitPlan

CATALOG_COLUMNS = (
    "key",
    "shard",
    "split",
    "train_small",
    "source",
    "source_id",
    "source_split",
    *RANKS,
    "common_name",
    "resolution_status",
)
REPORT_COLUMNS = ("key", "source", "source_id", "stage", "reason")


def catalog_rows(plan: SplitPlan, shard_of: dict[str, str]) -> list[dict[str, Any]]:
    """One catalog row per sample written, by split in config order."""
    return [
        {
            "key": e.key,
            "shard": shard_of[e.key],
            "split": name,
            "train_small": e.key in plan.small,
            "source": e.source,
            "source_id": e.source_id,
            "source_split": e.record.split,
            **{r: e.taxon.rank(r) for r in RANKS},
            "common_name": e.taxon.common,
            "resolution_status": e.status,
        }
        for name, members in plan.by_split.items()
        for e in members
    ]


def write_reports(
    out: Path, catalog: list[dict[str, Any]], skipped: Outcome, excluded: Outcome, stats: dict[str, Any]
) -> None:
    """Write the catalog (CSV and parquet), the skipped and excluded inputs and the statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_csv(out / "catalog.csv", catalog, CATALOG_COLUMNS)
    columns = {c: [r[c] for r in catalog] for c in CATALOG_COLUMNS}
    schema = pa.schema([(c, pa.bool_() if c == "train_small" else pa.string()) for c in CATALOG_COLUMNS])
    pq.write_table(pa.table(columns, schema=schema), out / "catalog.parquet")
    _write_csv(out / "skipped.csv", skipped.rows, REPORT_COLUMNS)
    _write_csv(out / "excluded.csv", excluded.rows, REPORT_COLUMNS)
    (out / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _taxa_per_rank(rows: list[dict[str, Any]]) -> dict[str, int]:
    # A taxon at a rank is its lineage down to that rank (two genera "Morus" in different families differ).
    lineages = Counter(tuple(r[x] for x in RANKS) for r in rows)
    return {rank: len({lin[: i + 1] for lin in lineages if lin[i]}) for i, rank in enumerate(RANKS)}


def _all_seven_ranks(row: dict[str, Any]) -> bool:
    return all(row[x] for x in RANKS)


def _complete_to_lowest_rank(row: dict[str, Any]) -> bool:
    """No gap above the lowest rank the label reaches (a label that stops at genus can be complete)."""
    values = [row[x] for x in RANKS]
    depth = max((i for i, v in enumerate(values) if v), default=-1)
    return depth >= 0 and all(values[: depth + 1])


def _fraction(rows: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> float:
    return sum(map(test, rows)) / len(rows) if rows else 0.0


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "images": len(rows),
        "taxa": _taxa_per_rank(rows),
        "all_seven_ranks": sum(map(_all_seven_ranks, rows)),
        "complete_to_lowest_rank": sum(map(_complete_to_lowest_rank, rows)),
    }


def _per_group(catalog: list[dict[str, Any]], column: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in catalog:
        groups[row[column] or "(none)"].append(row)
    return {k: _summary(v) for k, v in sorted(groups.items())}


def statistics(
    catalog: list[dict[str, Any]],
    inputs: list[Entry],
    skipped: Outcome,
    excluded: Outcome,
    resolution: dict[str, Any],
    set_sizes: dict[str, int],
) -> dict[str, Any]:
    """What `stats.json` holds: counts per fate and stage, label completeness, taxa per rank and group."""
    species_rows = [r for r in catalog if r["species"]]
    return {
        "inputs": len(inputs),
        "images": len(catalog),
        # Files of splits the config left out are listed in skipped.csv but are not failures.
        "skipped": sum(r["stage"] != "not_selected" for r in skipped.rows),
        "not_selected": sum(r["stage"] == "not_selected" for r in skipped.rows),
        "excluded": len(excluded.rows),
        "skipped_by_stage": dict(Counter(r["stage"] for r in skipped.rows)),
        "excluded_by_stage": dict(Counter(r["stage"] for r in excluded.rows)),
        "fraction_all_seven_ranks": _fraction(catalog, _all_seven_ranks),
        # Labels that stop above species (a source that says only "Papio") cannot reach seven ranks;
        # this counts images whose lineage has no gap down to where their label stops.
        "fraction_complete_to_lowest_rank": _fraction(catalog, _complete_to_lowest_rank),
        # Of the images labelled down to species, how many the backbone completed to all seven ranks.
        "fraction_all_seven_ranks_of_species_labels": _fraction(species_rows, _all_seven_ranks),
        "taxa": _taxa_per_rank(catalog),
        "per_source": _per_group(catalog, "source"),
        "per_split": _per_group(catalog, "split"),
        "per_kingdom": _per_group(catalog, "kingdom"),
        "shard_sets": set_sizes,
        "resolution": resolution,
    }
