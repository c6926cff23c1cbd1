"""The taxa a Tree-of-Life index names: read from what users have, deduplicated, fingerprinted, subset.

Sources:

* a shard folder's ``catalog.parquet`` / ``catalog.csv`` (``tolclip build-shards``), or the folder itself;
* the synthetic tree of life's ``taxa.json`` (or its data folder);
* a CSV with rank columns (``kingdom``..``species``; ``cls`` is read as class, as in BioCLIP's Rare
  Species metadata; ``common``/``common_name`` optional), taken as written;
* a CSV with a ``scientific_name`` (or ``name``) column and optional ``common_name``: each name is completed
  through the offline NCBI taxonomy (taxoniq), and names it does not know are counted and kept as given.

A class is a distinct lineage (the seven ranks); the first common name seen for it is kept.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tolclip.core.taxonomy import RANKS, Taxon

RANK_ALIASES = {"cls": "class", "common_name": "common", "epithet": "species", "species_epithet": "species"}
NAME_COLUMNS = ("scientific_name", "name")


class TaxaError(ValueError):
    """Taxa that cannot be read (missing file, unknown layout, no taxa at all)."""


@dataclass
class Taxa:
    taxa: list[Taxon]
    source: str
    unresolved: list[str] = field(default_factory=list)  # names the offline taxonomy did not know
    empty: int = 0  # rows that named no rank at all

    def __len__(self) -> int:
        return len(self.taxa)


def unique_taxa(taxa: Iterable[Taxon]) -> tuple[list[Taxon], int]:
    """Distinct lineages in first-seen order (first common name kept), and how many named no rank."""
    seen: dict[tuple[str, ...], Taxon] = {}
    empty = 0
    for t in taxa:
        if not any(t.ranks):
            empty += 1
            continue
        if t.ranks not in seen:
            seen[t.ranks] = t
        elif t.common and not seen[t.ranks].common:
            seen[t.ranks] = Taxon(*t.ranks, common=t.common)
    return list(seen.values()), empty


def _rank_row(row: Mapping[str, object]) -> Taxon:
    raw = {k.strip().lower(): v for k, v in row.items() if k}
    # An alias wins over the column it stands for: BioCLIP's Rare Species metadata has both `cls` (the
    # class) and `class` (the species label, "Cyclonaias tuberculata"), and the label is not a class.
    fields = {**raw, **{RANK_ALIASES[k]: v for k, v in raw.items() if k in RANK_ALIASES}}
    return Taxon.clean(**{k: fields.get(k) for k in (*RANKS, "common")})


def _read_table(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))


def _columns(rows: Sequence[Mapping[str, object]]) -> set[str]:
    names = {str(k).strip().lower() for k in (rows[0] if rows else {})}
    return {RANK_ALIASES.get(n, n) for n in names}


def _resolve_names(rows: Sequence[Mapping[str, object]], column: str) -> tuple[list[Taxon], list[str]]:
    from tolclip.curate.resolve import Resolver

    resolver, taxa, unknown = Resolver(), [], []
    for row in rows:
        low = {str(k).strip().lower(): v for k, v in row.items()}
        name = str(low.get(column) or "").strip()
        common = str(low.get("common_name") or low.get("common") or "").strip()
        res = resolver.resolve({}, name, common)
        if res.status == "unresolved":
            unknown.append(name)
        taxa.append(res.taxon)
    return taxa, unknown


def _from_table(path: Path) -> Taxa:
    rows = _read_table(path)
    if not rows:
        raise TaxaError(f"{path}: no rows")
    columns = _columns(rows)
    if columns & set(RANKS):
        taxa, unknown = [_rank_row(r) for r in rows], []
    elif name_col := next((c for c in NAME_COLUMNS if c in columns), None):
        taxa, unknown = _resolve_names(rows, name_col)
    else:
        raise TaxaError(
            f"{path}: expected rank columns ({', '.join(RANKS)}) or a {' / '.join(NAME_COLUMNS)} column; "
            f"found {', '.join(sorted(columns))}"
        )
    unique, empty = unique_taxa(taxa)
    return Taxa(unique, str(path), unknown, empty)


def _from_synthetic(path: Path) -> Taxa:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        taxa = [Taxon.from_dict(e["taxon"]) for e in entries]
    except (ValueError, KeyError, TypeError) as exn:
        raise TaxaError(f"{path}: not a synthetic taxa.json ({exn})") from None
    unique, empty = unique_taxa(taxa)
    return Taxa(unique, str(path), [], empty)


FOLDER_FILES = ("catalog.parquet", "catalog.csv", "taxa.json")


def read_taxa(source: str | os.PathLike) -> Taxa:
    """Taxa from a catalog, a synthetic taxa.json, a CSV of ranks or of names, or a folder holding one."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = next((path / f for f in FOLDER_FILES if (path / f).is_file()), None)
        if found is None:
            raise TaxaError(f"{path}: no {' / '.join(FOLDER_FILES)} in this folder")
        path = found
    if not path.is_file():
        raise TaxaError(f"taxa file {path} does not exist")
    if path.suffix == ".json":
        taxa = _from_synthetic(path)
    elif path.suffix in (".csv", ".parquet", ".tsv"):
        taxa = _from_table(path)
    else:
        raise TaxaError(f"{path}: taxa come from a .csv, .parquet or synthetic taxa.json")
    if not taxa.taxa:
        raise TaxaError(f"{path}: no row names any rank")
    return taxa


# ------------------------------------------------------------------------------------------ subsets


def _matches(taxon: Taxon, rank: str, name: str) -> bool:
    if rank == "species" and " " in name:  # "Genus species"
        return taxon.scientific_name.casefold() == name.casefold() and bool(taxon.species)
    return taxon.rank(rank).casefold() == name.casefold()


def _subset_pairs(spec: str) -> list[tuple[str | None, str]]:
    """(rank or None for any rank, name) pairs from ``Amanita``, ``genus=Amanita`` or a CSV path."""
    path = Path(spec).expanduser()
    if path.suffix == ".csv" and path.is_file():
        rows = _read_table(path)
        if not rows:
            raise TaxaError(f"subset {path}: no rows")
        first = str(next(iter(rows[0]))).strip().lower()
        rank = RANK_ALIASES.get(first, first)
        if rank not in RANKS:
            raise TaxaError(
                f"subset {path}: the first column must be named one of {', '.join(RANKS)}, not {first!r}"
            )
        return [(rank, str(next(iter(r.values())) or "").strip()) for r in rows]
    pairs: list[tuple[str | None, str]] = []
    for part in (p.strip() for p in spec.split(",")):
        rank, _, name = part.rpartition("=")
        rank = RANK_ALIASES.get(rank.strip().lower(), rank.strip().lower()) or None
        if rank is not None and rank not in RANKS:
            raise TaxaError(f"subset {part!r}: unknown rank {rank!r}; expected one of {', '.join(RANKS)}")
        pairs.append((rank, name.strip()))
    return [p for p in pairs if p[1]]


def subset_mask(taxa: Sequence[Taxon], spec: str) -> list[bool]:
    """Which taxa fall under the subset: names at any rank (or ``rank=name``), comma separated, or a CSV
    whose first column is named by a rank (pybioclip's subset file). A name that matches nothing is an error."""
    pairs = _subset_pairs(spec)
    if not pairs:
        raise TaxaError(f"subset {spec!r} names no taxon")
    keep = [False] * len(taxa)
    unknown = []
    for rank, name in pairs:
        ranks = [rank] if rank else [r for r in RANKS if not (r == "species" and " " not in name)]
        hits = [i for i, t in enumerate(taxa) if any(_matches(t, r, name) for r in ranks)]
        if not hits:
            unknown.append(f"{rank}={name}" if rank else name)
        for i in hits:
            keep[i] = True
    if unknown:
        raise TaxaError(f"subset: not among the index's taxa: {', '.join(unknown)}")
    return keep
