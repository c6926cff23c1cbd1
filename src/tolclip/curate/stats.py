"""The build's reports: `catalog.csv`/`.parquet`, `skipped.csv`, `excluded.csv` and `stats.json`, written
as the build streams (bounded memory: counts are kept per taxon, rows go straight to files)."""

from __future__ import annotations

import csv
import io
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


def catalog_tail(entry: Entry) -> str:
    """A catalog row's fields after key, shard, split and train_small, as csv text: everything the scan
    knows, so only the shard (known once the sample is placed) is left for the driver to add."""
    taxon = entry.taxon
    return csv_line(
        (
            entry.source,
            entry.source_id,
            entry.record.split if entry.record else "",
            *(taxon.ranks if taxon else _NO_RANKS),
            taxon.common if taxon else "",
            entry.status,
        )
    )


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
        """One catalog row given as a dict of `CATALOG_COLUMNS`."""
        line = csv_line([row.get(c, "") for c in CATALOG_COLUMNS])
        self._catalog_line(row["split"], line, _LINEAGE(row), row["source"])

    def sample(
        self, key: str, shard: str, split: str, small: bool, tail: str, lineage: tuple, source: str
    ) -> None:
        """The catalog row of a sample placed in `shard`; `tail` is its `catalog_tail`, made by the scan."""
        if _plain(shard) and _plain(split) and _plain(key):
            head = f"{key},{shard},{split},{small}"
        else:
            head = csv_line((key, shard, split, small))
        self._catalog_line(split, f"{head},{tail}", lineage, source)

    def _catalog_line(self, split: str, line: str, lineage: tuple, source: str) -> None:
        part = self._parts.get(split)
        if part is None:
            part = self._parts[split] = _open_csv(self._part(split), CATALOG_COLUMNS, header=False)
        part[0].write(line + "\r\n")
        self.stats.add(lineage, source, split)

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
    if header:
        fh.write(csv_line(columns) + "\r\n")
    return fh, CsvRows(fh, columns)


# Besides its delimiter, the characters that make csv quote a field (its defaults).
_QUOTE_OR_LINE_END = re.compile(r'["\r\n]')


class CsvRows:
    """`csv.DictWriter(fh, columns, extrasaction="ignore")`, byte for byte, faster on plain rows
    (`csv_line`)."""

    def __init__(self, fh: Any, columns: Sequence[str]) -> None:
        self.fh, self.columns = fh, tuple(columns)

    def writerow(self, row: dict[str, Any]) -> None:
        self.fh.write(csv_line([row.get(c, "") for c in self.columns]) + "\r\n")


def csv_line(values: Sequence[Any]) -> str:
    """One csv row without its line end, as `csv.writer` (its defaults) writes it.

    csv's writer tests each character of each field for its special characters, one C call apiece:
    most of the driver's cost per catalog row. A row with none of them (nearly every row) is the plain
    join csv would produce; any other goes through csv. Quoting is per field, so rows may be joined.
    """
    fields = [_field(v) for v in values]
    line = ",".join(fields)
    # A comma beyond the joins is in a field; csv also quotes a lone empty field.
    if line.count(",") != len(fields) - 1 or len(fields) == 1 or _QUOTE_OR_LINE_END.search(line):
        buf = io.StringIO()
        csv.writer(buf).writerow(fields)
        return buf.getvalue()[:-2]
    return line


def _plain(text: str) -> bool:
    """Whether csv writes `text` as it is (no quoting): `csv_line` in two C calls for a short field."""
    return bool(text) and "," not in text and _QUOTE_OR_LINE_END.search(text) is None


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
    """Counts over the catalog rows, kept per (lineage, source, split): bounded by the taxa, not the
    images. One counter update per row (the driver's hot loop); the groups are summed at the end."""

    GROUPS = ("source", "split", "kingdom")

    def __init__(self) -> None:
        self.counts: Counter[tuple[tuple[str, ...], str, str]] = Counter()

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    def add(self, lineage: tuple[str, ...], source: str, split: str) -> None:
        """Count one catalog row: its ranks (in `RANKS` order), source and split."""
        self.counts[lineage, source, split] += 1

    def summary(self) -> dict[str, Any]:
        lineages: Counter[tuple[str, ...]] = Counter()
        groups: dict[str, dict[str, Counter[tuple[str, ...]]]] = {
            g: defaultdict(Counter) for g in self.GROUPS
        }
        for (lineage, source, split), n in self.counts.items():
            lineages[lineage] += n
            for group, value in zip(self.GROUPS, (source, split, lineage[0]), strict=True):
                groups[group][value or "(none)"][lineage] += n
        images = sum(lineages.values())
        total = _summary(lineages)
        species = [(lin, n) for lin, n in lineages.items() if lin[-1]]  # labelled down to the epithet
        return {
            "fraction_all_seven_ranks": _ratio(total["all_seven_ranks"], images),
            # Labels that stop above species (a source that says only "Papio") cannot reach seven ranks;
            # this counts images whose lineage has no gap down to where their label stops.
            "fraction_complete_to_lowest_rank": _ratio(total["complete_to_lowest_rank"], images),
            # Of the images labelled down to species, how many the backbone completed to all seven ranks.
            "fraction_all_seven_ranks_of_species_labels": _ratio(
                sum(n for lin, n in species if all(lin)), sum(n for _, n in species)
            ),
            "taxa": total["taxa"],
            **{f"per_{g}": {k: _summary(v) for k, v in sorted(groups[g].items())} for g in self.GROUPS},
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
