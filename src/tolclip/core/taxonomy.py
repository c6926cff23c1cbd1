"""The seven Linnaean ranks of one organism, and the rules that clean the names sources give us.

Sources disagree on spelling (NCBI says Metazoa, others Animalia), pad names with authorship
("Corvus corax Linnaeus, 1758") or placeholders ("unknown", "not_classified"), and sometimes put a
whole binomial in the epithet field. `Taxon.clean` turns all of that into one canonical value.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

# Keys as they appear in `taxon.json` inside shards; `class` is a Python keyword, so the
# attribute is `class_` and only the serialised form says "class".
RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
_ATTR = {"class": "class_"}

KINGDOM_SYNONYMS: dict[str, str] = {
    "metazoa": "Animalia",
    "animalia": "Animalia",
    "animals": "Animalia",
    "viridiplantae": "Plantae",
    "archaeplastida": "Plantae",
    "chloroplastida": "Plantae",
    "plantae": "Plantae",
    "plants": "Plantae",
    "fungi": "Fungi",
    "chromista": "Chromista",
    "protozoa": "Protozoa",
    "bacteria": "Bacteria",
    "archaea": "Archaea",
}

_PLACEHOLDERS = {
    "",
    "unknown",
    "unidentified",
    "(unidentified)",
    "not_classified",
    "not classified",
    "unclassified",
    "incertae sedis",
    "incertae_sedis",
    "none",
    "null",
    "nan",
    "na",
    "n/a",
    "-",
    "?",
}

_TAG = re.compile(r"<[^>]+>")
_PARENS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
# "Linnaeus, 1758", "L.", "(Smith 1901)": an author token is capitalised and follows the name.
_YEAR = re.compile(r",?\s*\b1[5-9]\d\d\b|,?\s*\b20\d\d\b")
_INFRA = re.compile(r"\b(ssp|subsp|var|f|forma|cv|agg|sp|spp|cf|aff)\.?(\s|$)", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_name(value: object) -> str:
    """Trim, strip HTML, and map placeholders such as "unknown" to the empty string."""
    if value is None:
        return ""
    text = html.unescape(_TAG.sub(" ", str(value)))
    text = _SPACE.sub(" ", text.replace("_", " ")).strip().strip(",;")
    if text.lower() in _PLACEHOLDERS or text.lower().startswith(("unknown ", "unclassified ")):
        return ""
    return text


def _strip_authorship(text: str) -> str:
    text = _PARENS.sub(" ", text)
    text = _YEAR.sub(" ", text)
    return _SPACE.sub(" ", text).strip().strip(",")


def clean_higher_rank(value: object) -> str:
    """A rank above species is one capitalised word; authorship and qualifiers are dropped."""
    text = _strip_authorship(clean_name(value))
    if not text:
        return ""
    word = text.split(" ")[0]
    return word[:1].upper() + word[1:].lower() if word.isupper() or word.islower() else word


def clean_kingdom(value: object) -> str:
    name = clean_higher_rank(value)
    return KINGDOM_SYNONYMS.get(name.lower(), name)


def clean_epithet(value: object, genus: str = "") -> tuple[str, str]:
    """Return (genus, epithet) from a species field that may hold a binomial, authorship or "subsp.".

    The genus is taken from the field when it repeats (or supplies) one; the epithet is the first
    lower-case word after it. Infraspecific ranks are dropped: BioCLIP captions stop at species.
    """
    text = _strip_authorship(clean_name(value))
    if not text:
        return genus, ""
    words = [w for w in text.split(" ") if w]
    if len(words) >= 2 and words[0][:1].isupper():
        # "Corvus corax" in the epithet field: the genus comes with it.
        if not genus or words[0].lower() == genus.lower():
            genus = genus or clean_higher_rank(words[0])
            words = words[1:]
    words = [w for w in words if not _INFRA.fullmatch(w + " ") and not _INFRA.fullmatch(w)]
    epithet = words[0].lower() if words else ""
    if epithet.endswith("."):
        epithet = ""
    return genus, epithet


@dataclass(frozen=True)
class Taxon:
    """One organism's place in the tree. Empty strings mean "not known"."""

    kingdom: str = ""
    phylum: str = ""
    class_: str = ""
    order: str = ""
    family: str = ""
    genus: str = ""
    species: str = ""  # the specific epithet alone, e.g. "corax"
    common: str = ""

    @classmethod
    def clean(cls, **ranks: object) -> Taxon:
        """Build a Taxon from raw source fields (accepts `class` or `class_`)."""
        raw = {_ATTR.get(k, k): v for k, v in ranks.items()}
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown taxon fields {sorted(unknown)}; expected {list(RANKS)} and 'common'")
        genus = clean_higher_rank(raw.get("genus"))
        genus, epithet = clean_epithet(raw.get("species"), genus)
        return cls(
            kingdom=clean_kingdom(raw.get("kingdom")),
            phylum=clean_higher_rank(raw.get("phylum")),
            class_=clean_higher_rank(raw.get("class_")),
            order=clean_higher_rank(raw.get("order")),
            family=clean_higher_rank(raw.get("family")),
            genus=genus,
            species=epithet,
            common=clean_name(raw.get("common")),
        )

    def rank(self, rank: str) -> str:
        return getattr(self, _ATTR.get(rank, rank))

    @property
    def ranks(self) -> tuple[str, ...]:
        """The seven ranks in `RANKS` order (spelled out: the curation driver reads them per image)."""
        return (self.kingdom, self.phylum, self.class_, self.order, self.family, self.genus, self.species)

    @property
    def scientific_name(self) -> str:
        """ "Genus species", or the lowest known rank when the species is unknown."""
        if self.genus and self.species:
            return f"{self.genus} {self.species}"
        known = [n for n in self.ranks[:-1] if n]
        return known[-1] if known else ""

    @property
    def taxonomic_name(self) -> str:
        """All known ranks from kingdom down, space separated."""
        return " ".join(n for n in self.ranks if n)

    @property
    def lowest_rank(self) -> str:
        """Name of the most specific known rank ("" when nothing is known)."""
        known = [r for r in RANKS if self.rank(r)]
        return known[-1] if known else ""

    def truncate(self, rank: str) -> Taxon:
        """The same lineage with every rank below `rank` (and the common name) cleared."""
        keep = RANKS.index(rank) + 1
        cleared = {_ATTR.get(r, r): "" for r in RANKS[keep:]}
        return replace(self, common="", **cleared)

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["class"] = d.pop("class_")
        return {**{r: d[r] for r in RANKS}, "common": d["common"]}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Taxon:
        """Read a `taxon.json` written by us or a ToL-10M-like source (cleaning applied)."""
        return cls.clean(**{k: d.get(k) for k in (*RANKS, "common")})


def lineage(taxon: Taxon, rank: str) -> tuple[str, ...]:
    """The class key of a taxon at a rank: its names from kingdom down to that rank."""
    return taxon.ranks[: RANKS.index(rank) + 1]


def rank_classes(taxa: Iterable[Taxon], rank: str) -> dict[tuple[str, ...], Taxon]:
    """The classes at a rank: each distinct lineage down to it, with its first taxon (for naming).

    Taxa not identified to the rank do not take part at it.
    """
    classes: dict[tuple[str, ...], Taxon] = {}
    for taxon in taxa:
        key = lineage(taxon, rank)
        if key[-1]:
            classes.setdefault(key, taxon)
    return classes


SpeciesKey = tuple[str, ...]  # (kingdom, phylum, class, order, family, genus, species)


def species_key(taxon: Taxon) -> SpeciesKey | None:
    """A taxon's class label: its full lineage, or None when its species is not known."""
    return taxon.ranks if taxon.species else None
