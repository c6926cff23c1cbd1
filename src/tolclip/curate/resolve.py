"""Resolve messy source labels to the seven Linnaean ranks with an offline taxonomy backbone.

A source gives, per image, some raw ranks, a scientific name and a common name. `resolve` cleans
them (`Taxon.clean` rules), asks a `TaxonomyBackend` for the lowest name it knows, fills the missing
higher ranks from the backend, and says honestly how far it got:

* ``resolved``   -- the backend matched the species and all seven ranks are filled;
* ``partial``    -- the backend matched a higher rank (``Resolution.rank``), or the species but its
  lineage lacks a rank (NCBI has no class for crocodilians); the note says which;
* ``unresolved`` -- the backend knows none of the names; the taxon is what the source gave;
* ``ambiguous``  -- a name matches several taxa (a homonym such as genus *Morus*, a plant and a bird)
  and the source's higher ranks do not pick one; nothing is guessed, the taxon is what the source gave.

Rules (tested in tests/test_resolve.py):

1. Queries, lowest first: the binomial (source genus + epithet, or a binomial ``scientific_name``), a
   one-word ``scientific_name`` (rank unknown until the backend says), then each given rank from genus up
   to kingdom. The first query with an accepted candidate decides; a miss falls back to the next one.
2. Candidates are judged on the source's ranks above the matched rank. A candidate is rejected when its
   kingdom differs from the source's, or when it disagrees with every given higher rank and agrees with
   none (a homonym from another branch). Other disagreements (Tracheophyta vs Streptophyta, a family moved)
   are backbone differences, not homonyms: the candidate is kept. A candidate is also rejected when the
   source puts the name at a different Linnaean rank (source family X, backend genus X).
3. Among accepted candidates the one agreeing with most given higher ranks wins; a tie between distinct
   lineages is ``ambiguous``.
4. The source wins: every rank the source gives is kept as given (its classification is what the data set
   means); the backend only fills blanks at and above the matched rank, and each contradiction is listed
   in the note. Ranks below the matched one come from the source alone, so a species the backend lacks
   keeps its epithet (``Morpho peleides`` -> partial at genus, epithet kept).
5. The common name is the source's; else the backend's, but only when the backend matched the label's own
   (first) query and no subspecies was dropped, so a genus's common name is never put on a species and a
   species' ("gray wolf") never on a subspecies ("Canis lupus familiaris").
6. An ambiguous label keeps only the source's values (plus the name at its rank when every candidate
   files it at the same rank); an unresolved one keeps the source's values as cleaned.

Backends: `TaxoniqBackend` (NCBI through taxoniq, offline, the default) and `TableBackend` (a CSV/TSV
export of another backbone, e.g. GBIF or ITIS). taxoniq indexes one taxon per scientific name (its
name index is a dict, so for an NCBI homonym only one taxon is reachable; "Morus" gives the gannet), so
with taxoniq a homonym is only caught when the source's higher ranks contradict the one candidate
(rule 2); `TableBackend` returns every candidate and can report ``ambiguous``.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

from tolclip.core.taxonomy import (
    KINGDOM_SYNONYMS,
    RANKS,
    Taxon,
    clean_epithet,
    clean_higher_rank,
    clean_name,
)

Status = Literal["resolved", "partial", "unresolved", "ambiguous"]
STATUSES: tuple[str, ...] = ("resolved", "partial", "unresolved", "ambiguous")


def _build(values: Mapping[str, str], common: str = "") -> Taxon:
    """A Taxon from already-clean rank values (no re-cleaning: backend spellings stay as they are)."""
    return Taxon(**{("class_" if r == "class" else r): values.get(r, "") for r in RANKS}, common=common)


@dataclass(frozen=True)
class Lineage:
    """One backend candidate for a name: its ranks (kingdom normalised, species as the epithet).

    `rank` is the Linnaean rank of the matched name, or "" when the backend files it at another rank
    (NCBI subgenus, suborder, clade): then `taxon` holds only the ranks above it.
    """

    taxon: Taxon
    rank: str
    name: str = ""


class TaxonomyBackend(Protocol):
    def lookup(self, name: str) -> list[Lineage]:
        """Every candidate lineage for a scientific name at any rank; [] when the name is unknown."""
        ...

    def preload(self) -> None:
        """Load what lookups need now: a build calls it before forking its scan stage, so the child
        shares what was loaded instead of loading it again."""
        ...


# ---------------------------------------------------------------- NCBI through taxoniq

_NCBI_RANKS = {r: r for r in RANKS}


@lru_cache(maxsize=65536)
def _taxoniq_lookup(name: str) -> tuple[Lineage, ...]:
    import taxoniq  # imported lazily: loading its databases is not free and only this backend needs it

    try:
        hit = taxoniq.Taxon(scientific_name=name)
    except KeyError:  # taxoniq's miss: the name is not an NCBI scientific name (synonyms are not indexed)
        return ()
    ranks: dict[str, str] = {}
    superkingdom = ""
    for node in hit.ranked_lineage:
        rank_name = node.rank.name
        if rank_name in _NCBI_RANKS:
            ranks[rank_name] = node.scientific_name
        elif rank_name == "superkingdom":
            superkingdom = node.scientific_name
    # Prokaryotes have no NCBI kingdom; their superkingdom (Bacteria, Archaea) is the kingdom we use.
    if not ranks.get("kingdom") and superkingdom.lower() in KINGDOM_SYNONYMS:
        ranks["kingdom"] = superkingdom
    try:
        common = hit.common_name
    except (KeyError, taxoniq.NoValue):
        common = ""
    matched = _NCBI_RANKS.get(hit.rank.name, "")
    taxon = Taxon.clean(**ranks, common=common)
    if not any(taxon.ranks):
        return ()
    return (Lineage(taxon=taxon, rank=matched, name=hit.scientific_name),)


class TaxoniqBackend:
    """NCBI taxonomy through taxoniq (ships its database: works offline).

    Limitation: taxoniq maps each scientific name to one tax id, so it never returns more than one
    candidate; homonyms are only caught through the source's higher ranks.
    """

    def preload(self) -> None:
        # One lookup loads taxoniq's databases (about 0.2 s and 25,000 page faults, once per process).
        _taxoniq_lookup("Homo sapiens")

    def lookup(self, name: str) -> list[Lineage]:
        return list(_taxoniq_lookup(name)) if name else []


# ---------------------------------------------------------------- a user-supplied table

_COMMON_COLUMNS = ("common", "common_name", "vernacular_name", "vernacularname")


class TableBackend:
    """A backbone export as rows with the seven rank columns and an optional common-name column.

    Every rank's names are indexed, so "Morus" finds each lineage that has a genus Morus; homonyms
    come back as several candidates.
    """

    def __init__(self, rows: Iterable[Mapping[str, object]]) -> None:
        self._index: dict[str, dict[tuple[str, ...], Lineage]] = {}
        for n, row in enumerate(rows):
            fields = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            if n == 0 and not any(r in fields for r in RANKS):
                raise ValueError(f"taxonomy table has no rank columns; expected some of {list(RANKS)}")
            common = next((fields[c] for c in _COMMON_COLUMNS if fields.get(c)), "")
            taxon = Taxon.clean(**{r: fields.get(r) for r in RANKS}, common=common)
            lowest = taxon.lowest_rank
            for rank in RANKS:
                name = taxon.rank(rank)
                if not name:
                    continue
                key = f"{taxon.genus} {name}" if rank == "species" else name
                sub = taxon.truncate(rank)
                # The common name belongs to the row's own taxon, not to the genus or family above it.
                if rank == lowest:
                    sub = replace(sub, common=taxon.common)
                by_lineage = self._index.setdefault(key.casefold(), {})
                old = by_lineage.get(sub.ranks)
                if old is None or (not old.taxon.common and sub.common):
                    by_lineage[sub.ranks] = Lineage(taxon=sub, rank=rank, name=key)

    @classmethod
    def from_file(cls, path: str | Path) -> TableBackend:
        """Read a CSV or TSV (tab-separated when the suffix is .tsv/.tab or the header has a tab)."""
        path = Path(path)
        with path.open(newline="", encoding="utf-8-sig") as fh:
            head = fh.readline()
            fh.seek(0)
            tab = path.suffix.lower() in {".tsv", ".tab"} or "\t" in head
            return cls(csv.DictReader(fh, delimiter="\t" if tab else ","))

    def lookup(self, name: str) -> list[Lineage]:
        return list(self._index.get(name.casefold(), {}).values())

    def preload(self) -> None:
        """Nothing to load: the table was read whole when the backend was made."""


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolution:
    taxon: Taxon
    status: Status
    rank: str  # lowest rank the backend confirmed; "" when unresolved or ambiguous
    note: str = ""
    query: str = ""  # the name that matched (or the first one tried)


def _same(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def _infraspecific(text: object) -> bool:
    """True when a species field names a subspecies/variety ("Canis lupus familiaris", "B. v. subsp. v.").

    Authors are capitalised ("Corvus corax Linnaeus"), so a lower-case word after the epithet is an
    infraspecific name; cleaning drops it, and the backend's species common name would then be wrong
    for the label (a dog is not a "gray wolf").
    """
    words = clean_name(text).split(" ")
    start = 2 if words and words[0][:1].isupper() else 1
    return any(w[:1].islower() for w in words[start:])


def _source_taxon(
    ranks: Mapping[str, object], scientific_name: str, common_name: str
) -> tuple[Taxon, str, list[str]]:
    """Cleaned source ranks with the binomial merged in; returns (taxon, one-word name, notes)."""
    raw = {str(k): v for k, v in ranks.items() if str(k) in (*RANKS, "class_")}
    source = Taxon.clean(**raw, common=common_name)
    notes: list[str] = []
    if _infraspecific(raw.get("species")) or _infraspecific(scientific_name):
        notes.append("infraspecific name dropped (labels stop at species)")
    text = clean_name(scientific_name)
    words = text.split(" ") if text else []
    single = ""
    if len(words) >= 2 and words[0][:1].isupper():
        genus, epithet = clean_epithet(text, "")
        if not epithet:  # "Ursidae sp.": a name above species
            single = clean_higher_rank(genus)
        elif source.species and not (_same(source.genus, genus) and source.species == epithet):
            notes.append(f"scientific_name {genus} {epithet} ignored: ranks give {source.scientific_name}")
        elif source.genus and not _same(source.genus, genus):
            notes.append(f"scientific_name {genus} {epithet} ignored: ranks give genus {source.genus}")
        else:
            source = Taxon.clean(**{**source.to_dict(), "genus": source.genus or genus, "species": epithet})
    elif words:
        single = clean_higher_rank(text)
    if single and any(_same(single, n) for n in source.ranks):
        single = ""  # already a query through the ranks
    return source, single, notes


def _queries(source: Taxon, single: str) -> list[tuple[str, str]]:
    """(name, source rank) pairs, lowest first; rank "" means the source did not say."""
    out: list[tuple[str, str]] = []
    if source.genus and source.species:
        out.append((f"{source.genus} {source.species}", "species"))
    if single:
        out.append((single, ""))
    out.extend((source.rank(r), r) for r in reversed(RANKS[:-1]) if source.rank(r))
    return out


def _judge(cand: Lineage, source: Taxon, query: str, qrank: str) -> tuple[str, int, str]:
    """(effective rank, agreements, reason for rejection or "") for one candidate."""
    if qrank and cand.rank and cand.rank != qrank:
        return "", 0, f"{query} is a {cand.rank} in the backend, a {qrank} in the source"
    rank = qrank or cand.rank or cand.taxon.lowest_rank
    if not rank:
        return "", 0, f"{query}: backend lineage has no Linnaean rank"
    if not qrank and cand.rank and source.rank(rank) and not _same(source.rank(rank), cand.taxon.rank(rank)):
        return (
            "",
            0,
            f"{query} is {rank} {cand.taxon.rank(rank)} in the backend, source says {source.rank(rank)}",
        )
    above = RANKS[: RANKS.index(rank)]
    given = [r for r in above if source.rank(r) and cand.taxon.rank(r)]
    agree = sum(_same(source.rank(r), cand.taxon.rank(r)) for r in given)
    if source.kingdom and cand.taxon.kingdom and not _same(source.kingdom, cand.taxon.kingdom):
        return "", 0, f"{query}: backend has it in kingdom {cand.taxon.kingdom}, source says {source.kingdom}"
    if given and not agree:
        return "", 0, f"{query}: backend lineage ({cand.taxon.taxonomic_name}) shares no given higher rank"
    return rank, agree, ""


def _merge(source: Taxon, cand: Lineage, rank: str) -> tuple[Taxon, list[str]]:
    """Source values win; the backend fills blanks at and above `rank`; below it only the source counts."""
    keep = RANKS.index(rank) + 1
    values: dict[str, str] = {}
    notes: list[str] = []
    for i, r in enumerate(RANKS):
        mine, theirs = source.rank(r), cand.taxon.rank(r) if i < keep else ""
        values[r] = mine or theirs
        if mine and theirs and not _same(mine, theirs):
            notes.append(f"{r}: source {mine}, backend {theirs}")
    return _build(values, source.common), notes


def resolve(
    ranks: Mapping[str, object], scientific_name: str, common_name: str, backend: TaxonomyBackend
) -> Resolution:
    """Resolve one raw label; see the module docstring for the rules."""
    source, single, notes = _source_taxon(ranks, scientific_name or "", common_name or "")
    queries = _queries(source, single)
    if not queries:
        return Resolution(source, "unresolved", "", "; ".join([*notes, "no name given"]))
    for n, (query, qrank) in enumerate(queries):
        candidates = backend.lookup(query)
        if not candidates:
            notes.append(f"{query} not in backend")
            continue
        judged = []
        for cand in candidates:
            rank, agree, why = _judge(cand, source, query, qrank)
            if why:
                notes.append(why)
            else:
                judged.append((agree, rank, cand))
        if not judged:
            continue
        best = max(a for a, _, _ in judged)
        top = {c.taxon.ranks: (r, c) for a, r, c in judged if a == best}
        if len(top) > 1:
            options = " | ".join(c.taxon.taxonomic_name for _, c in top.values())
            notes.append(f"{query} matches {len(top)} taxa and the source's ranks do not pick one: {options}")
            places = {r for r, _ in top.values()}
            if len(places) == 1 and not source.rank(next(iter(places))):
                # Every reading files the name at the same rank: placing it there picks no lineage.
                source = replace(source, **{"class_" if r == "class" else r: query for r in places})
            return Resolution(source, "ambiguous", "", "; ".join(notes), query)
        rank, cand = next(iter(top.values()))
        taxon, diffs = _merge(source, cand, rank)
        notes.extend(diffs)
        if qrank == "" and cand.rank == "":
            notes.append(f"{query} has no Linnaean rank in the backend; resolved to its {rank}")
        own_name = n == 0 and not any(x.startswith("infraspecific") for x in notes)
        if not taxon.common and own_name and cand.taxon.common:
            taxon = replace(taxon, common=cand.taxon.common)
        missing = [r for r in RANKS[: RANKS.index(rank) + 1] if not taxon.rank(r)]
        if missing:
            notes.append(f"backend lineage lacks {', '.join(missing)}")
        if rank != "species" and taxon.lowest_rank != rank:
            notes.append(f"ranks below {rank} kept from the source, not confirmed by the backend")
        status: Status = "resolved" if rank == "species" and all(taxon.ranks) else "partial"
        return Resolution(taxon, status, rank, "; ".join(notes), query)
    if single:
        notes.append(f"{single} kept out of the taxon: its rank is unknown")
    return Resolution(source, "unresolved", "", "; ".join(notes), queries[0][0])


# ---------------------------------------------------------------- many labels and their report

REPORT_COLUMNS: tuple[str, ...] = (
    "label",
    "query",
    "status",
    "rank",
    *RANKS,
    "common",
    "images",
    "note",
)


def _label_text(ranks: Mapping[str, object], scientific_name: str, common_name: str) -> str:
    parts = [f"{k}={v}" for k, v in ranks.items() if v not in (None, "")]
    parts += [f"scientific_name={scientific_name}"] if scientific_name else []
    parts += [f"common_name={common_name}"] if common_name else []
    return "; ".join(parts)


@dataclass
class Resolver:
    """Resolves each distinct raw label once, counts images per label, and reports the outcomes."""

    backend: TaxonomyBackend = field(default_factory=TaxoniqBackend)
    _labels: dict[tuple, Resolution] = field(default_factory=dict, init=False, repr=False)
    _text: dict[tuple, str] = field(default_factory=dict, init=False, repr=False)
    _images: Counter = field(default_factory=Counter, init=False, repr=False)

    def resolve(
        self, ranks: Mapping[str, object], scientific_name: str = "", common_name: str = "", images: int = 1
    ) -> Resolution:
        """Resolve a label (memoised on its raw values) and count `images` more images for it."""
        key = (
            tuple(sorted((str(k), str(v)) for k, v in ranks.items() if v is not None)),
            scientific_name or "",
            common_name or "",
        )
        if key not in self._labels:
            self._labels[key] = resolve(ranks, scientific_name, common_name, self.backend)
            self._text[key] = _label_text(ranks, scientific_name, common_name)
        self._images[key] += images
        return self._labels[key]

    def report_rows(self) -> list[dict[str, object]]:
        rows = []
        for key, res in self._labels.items():
            row: dict[str, object] = {
                "label": self._text[key],
                "query": res.query,
                "status": res.status,
                "rank": res.rank,
            }
            row.update({r: res.taxon.rank(r) for r in RANKS})
            row.update(common=res.taxon.common, images=self._images[key], note=res.note)
            rows.append(row)
        return rows

    def write_report(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(REPORT_COLUMNS))
            writer.writeheader()
            writer.writerows(self.report_rows())
        return path

    def summary(self) -> dict[str, object]:
        """Labels and images per status, and the fraction of images whose taxon has all seven ranks."""
        labels = Counter(res.status for res in self._labels.values())
        images = Counter()
        full = 0
        for key, res in self._labels.items():
            images[res.status] += self._images[key]
            full += self._images[key] * all(res.taxon.ranks)
        total = sum(self._images.values())
        return {
            "labels": {s: labels.get(s, 0) for s in STATUSES},
            "images": {s: images.get(s, 0) for s in STATUSES},
            "total_labels": len(self._labels),
            "total_images": total,
            "fraction_all_ranks": full / total if total else 0.0,
        }
