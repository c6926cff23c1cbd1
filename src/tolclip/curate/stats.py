"""The build's reports: `catalog.csv`/`.parquet`, `skipped.csv`, `excluded.csv` and `stats.json`, written
as the build streams (bounded memory: counts are kept per taxon, rows go straight to files)."""

from __future__ import annotations

import csv
import json
import operator
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tolclip.core.taxonomy import RANKS
from tolclip.curate.entries import Entry

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


_NO_RANKS = ("",) * len(RANKS)
_LINEAGE = operator.itemgetter(*RANKS)  # a catalog row's ranks as a tuple, in one C call


def catalog_row(entry: Entry, shard: str, split: str, small: bool) -> dict[str, Any]:
    """The catalog row of one sample written."""
    return {
        "key": entry.key,
        "shard": shard,
        "split": split,
        "train_small": small,
        "source": entry.source,
        "source_id": entry.source_id,
        "source_split": entry.record.split if entry.record else "",
        **dict(zip(RANKS, entry.taxon.ranks if entry.taxon else _NO_RANKS, strict=True)),
        "common_name": entry.taxon.common if entry.taxon else "",
        "resolution_status": entry.status,
    }


class Reports:
    """The catalog, `skipped.csv` and `excluded.csv`, written row by row as the build decides, and the
    counts `stats.json` needs, gathered on the way (per taxon, never per image).

    The catalog lists samples by split in config order; each split's rows go to a part file in the
    cache and `finish` joins the parts (and writes the parquet copy in batches).
    """

    def __init__(self, out: Path, cache: Path, split_order: list[str]) -> None:
        self.out, self.cache, self.order = out, cache, split_order
        self.inputs = 0
        self.stats = CatalogStats()
        self.skipped_by_stage: Counter[str] = Counter()
        self.excluded_by_stage: Counter[str] = Counter()
        self._parts: dict[str, Any] = {}
        self._skipped = _open_csv(out / "skipped.csv", REPORT_COLUMNS)
        self._excluded = _open_csv(out / "excluded.csv", REPORT_COLUMNS)

    def skip(self, entry: Entry, stage: str, reason: str) -> None:
        self.skipped_by_stage[stage] += 1
        self._skipped[1].writerow(_report_row(entry, stage, reason))

    def exclude(self, entry: Entry, stage: str, reason: str) -> None:
        self.excluded_by_stage[stage] += 1
        self._excluded[1].writerow(_report_row(entry, stage, reason))

    def catalog(self, row: dict[str, Any]) -> None:
        split = row["split"]
        if split not in self._parts:
            self._parts[split] = _open_csv(self._part(split), CATALOG_COLUMNS, header=False)
        self._parts[split][1].writerow(row)
        self.stats.add(row)

    def _part(self, split: str) -> Path:
        return self.cache / f"catalog-{split}.csv"

    def close(self) -> None:
        for fh, _ in [self._skipped, self._excluded, *self._parts.values()]:
            fh.close()

    def finish(self, resolution: dict[str, Any], set_sizes: dict[str, int]) -> dict[str, Any]:
        """Join the catalog parts, write the parquet copy and stats.json; returns the statistics."""
        self.close()
        with (self.out / "catalog.csv").open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(CATALOG_COLUMNS)
            for split in [*self.order, *sorted(set(self._parts) - set(self.order))]:
                if split in self._parts:
                    with self._part(split).open(encoding="utf-8") as part:
                        shutil.copyfileobj(part, fh)
                    self._part(split).unlink()
        _csv_to_parquet(self.out / "catalog.csv", self.out / "catalog.parquet")
        stats = self.statistics(resolution, set_sizes)
        (self.out / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
        return stats

    def statistics(self, resolution: dict[str, Any], set_sizes: dict[str, int]) -> dict[str, Any]:
        """What `stats.json` holds: counts per fate and stage, label completeness, taxa per rank and group."""
        skipped = self.skipped_by_stage
        return {
            "inputs": self.inputs,
            "images": self.stats.images,
            # Files of splits the config left out are listed in skipped.csv but are not failures.
            "skipped": sum(n for stage, n in skipped.items() if stage != "not_selected"),
            "not_selected": skipped.get("not_selected", 0),
            "excluded": sum(self.excluded_by_stage.values()),
            "skipped_by_stage": dict(skipped),
            "excluded_by_stage": dict(self.excluded_by_stage),
            **self.stats.summary(),
            "shard_sets": set_sizes,
            "resolution": resolution,
        }


def _report_row(entry: Entry, stage: str, reason: str) -> dict[str, Any]:
    return {
        "key": entry.key,
        "source": entry.source,
        "source_id": entry.source_id,
        "stage": stage,
        "reason": reason,
    }


def _open_csv(path: Path, columns: Sequence[str], header: bool = True) -> tuple[Any, CsvRows]:
    fh = path.open("w", newline="", encoding="utf-8")
    writer = CsvRows(fh, columns)
    if header:
        writer.csv.writerow(columns)
    return fh, writer


# Besides its delimiter, the characters that make csv quote a field (its defaults).
_QUOTE_OR_LINE_END = re.compile(r'["\r\n]')


class CsvRows:
    """`csv.DictWriter(fh, columns, extrasaction="ignore")`, byte for byte, faster on plain rows.

    csv's writer tests each character of each field for its special characters, one C call apiece:
    most of the driver's cost per catalog row. A row with none of them (nearly every row) is written as
    the plain join csv would produce; any other goes through csv.
    """

    def __init__(self, fh: Any, columns: Sequence[str]) -> None:
        self.fh, self.columns, self.csv = fh, tuple(columns), csv.writer(fh)

    def writerow(self, row: dict[str, Any]) -> None:
        fields = [_field(row.get(c, "")) for c in self.columns]
        line = ",".join(fields)
        # A comma beyond the joins is in a field; csv also quotes a lone empty field.
        if line.count(",") != len(fields) - 1 or len(fields) == 1 or _QUOTE_OR_LINE_END.search(line):
            self.csv.writerow(fields)
        else:
            self.fh.write(line + "\r\n")


def _field(value: Any) -> str:
    """A value as csv writes it: None empty, a float by repr, anything else by str."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _csv_to_parquet(csv_path: Path, parquet_path: Path) -> None:
    """The catalog as parquet, converted in batches (never the whole table in memory)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    types = {c: pa.bool_() if c == "train_small" else pa.string() for c in CATALOG_COLUMNS}
    schema = pa.schema(list(types.items()))
    convert = pcsv.ConvertOptions(column_types=types, strings_can_be_null=False)
    reader = pcsv.open_csv(
        csv_path, convert_options=convert, read_options=pcsv.ReadOptions(block_size=1 << 22)
    )
    with pq.ParquetWriter(parquet_path, schema) as writer:
        for batch in reader:
            writer.write_table(pa.Table.from_batches([batch], schema=schema))


class CatalogStats:
    """Counts over the catalog rows, kept per lineage (bounded by the taxa, not the images)."""

    GROUPS = ("source", "split", "kingdom")

    def __init__(self) -> None:
        self.images = 0
        self.lineages: Counter[tuple[str, ...]] = Counter()
        self.species_rows = 0
        self.species_seven = 0
        self.groups: dict[str, dict[str, Counter[tuple[str, ...]]]] = {
            g: defaultdict(Counter) for g in self.GROUPS
        }

    def add(self, row: dict[str, Any]) -> None:
        lineage = _LINEAGE(row)
        self.images += 1
        self.lineages[lineage] += 1
        if row["species"]:
            self.species_rows += 1
            self.species_seven += all(lineage)
        for g in self.GROUPS:
            self.groups[g][row[g] or "(none)"][lineage] += 1

    def summary(self) -> dict[str, Any]:
        total = _summary(self.lineages)
        return {
            "fraction_all_seven_ranks": _ratio(total["all_seven_ranks"], self.images),
            # Labels that stop above species (a source that says only "Papio") cannot reach seven ranks;
            # this counts images whose lineage has no gap down to where their label stops.
            "fraction_complete_to_lowest_rank": _ratio(total["complete_to_lowest_rank"], self.images),
            # Of the images labelled down to species, how many the backbone completed to all seven ranks.
            "fraction_all_seven_ranks_of_species_labels": _ratio(self.species_seven, self.species_rows),
            "taxa": total["taxa"],
            **{f"per_{g}": {k: _summary(v) for k, v in sorted(self.groups[g].items())} for g in self.GROUPS},
        }


def _ratio(n: int, d: int) -> float:
    return n / d if d else 0.0


def _taxa_per_rank(lineages: Iterable[tuple[str, ...]]) -> dict[str, int]:
    # A taxon at a rank is its lineage down to that rank (two genera "Morus" in different families differ).
    lineages = list(lineages)
    return {rank: len({lin[: i + 1] for lin in lineages if lin[i]}) for i, rank in enumerate(RANKS)}


def _all_seven_ranks(lineage: tuple[str, ...]) -> bool:
    return all(lineage)


def _complete_to_lowest_rank(lineage: tuple[str, ...]) -> bool:
    """No gap above the lowest rank the label reaches (a label that stops at genus can be complete)."""
    depth = max((i for i, v in enumerate(lineage) if v), default=-1)
    return depth >= 0 and all(lineage[: depth + 1])


def _summary(lineages: Counter[tuple[str, ...]]) -> dict[str, Any]:
    return {
        "images": sum(lineages.values()),
        "taxa": _taxa_per_rank(lineages),
        "all_seven_ranks": sum(n for lin, n in lineages.items() if _all_seven_ranks(lin)),
        "complete_to_lowest_rank": sum(n for lin, n in lineages.items() if _complete_to_lowest_rank(lin)),
    }
