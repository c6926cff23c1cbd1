"""The seeded tree of life: a synthetic taxonomy whose every rank adds a visible trait to its parent's.

A seeded generator invents a taxonomy (kingdom .. species, Latin-style names, English-like common
names for some species) in which every rank adds its own visible trait on top of its parent's, so
siblings look alike and cousins less so (`render` draws them):

    kingdom  body shape family      (round, angular, elongated, lobed, star, egg, kidney)
    phylum   hue family             (phyla spread evenly round the colour wheel)
    class    pattern                (stripes, spots, rings, edged, checks) and saturation/value
    order    pattern period and orientation (in the body frame, so rotation keeps it)
    family   secondary colour and outline
    genus    appendage count and marker position
    species  marker colour and size, body aspect ratio

Each rank below phylum also drifts the hue a little, so colour distance follows the tree. Each genus
marks `unseen_per_genus` of its species as not `seen`: the dataset keeps them out of training.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from itertools import product
from typing import Any

from tolclip.core.taxonomy import Taxon, clean_higher_rank

KINGDOM_NAMES: tuple[str, ...] = (
    "Animalia",
    "Plantae",
    "Fungi",
    "Chromista",
    "Protozoa",
    "Bacteria",
    "Archaea",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Every number of the synthetic dataset; the defaults are the default experiment."""

    seed: int = 0
    kingdoms: int = 3  # the first N of KINGDOM_NAMES
    phyla_per_kingdom: int = 2
    classes_per_phylum: int = 2
    orders_per_class: int = 2
    families_per_order: int = 2
    genera_per_family: int = 2
    species_per_genus: int = 4
    unseen_per_genus: int = 1  # species per genus held out of training entirely
    common_name_fraction: float = 0.6
    image_size: int = 64
    train_per_species: int = 40  # images of each seen species in train
    val_per_species: int = 8  # held-out images of each seen species
    unseen_per_species: int = 8  # images of each unseen species
    # Per-image nuisance variation.
    max_rotation: float = 30.0  # degrees either way
    scale_jitter: float = 0.12  # body radius varies by +-12 %
    max_shift: float = 0.09  # body centre moves up to this fraction of the image size
    noise_std: float = 5.0  # Gaussian pixel noise, in 0..255 units
    jpeg_quality: int = 95
    samples_per_shard: int = 1000  # upper bound; shards of a split are balanced in size

    def __post_init__(self) -> None:
        if not 1 <= self.kingdoms <= len(KINGDOM_NAMES):
            raise ValueError(f"kingdoms must be 1..{len(KINGDOM_NAMES)}, got {self.kingdoms}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
        branching = ("phyla_per_kingdom", "classes_per_phylum", "orders_per_class", "families_per_order")
        for name in (*branching, "genera_per_family", "species_per_genus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.unseen_per_genus >= self.species_per_genus:
            raise ValueError("unseen_per_genus must leave at least one seen species per genus")
        if not 0.0 <= self.common_name_fraction <= 1.0:
            raise ValueError("common_name_fraction must be in [0, 1]")
        if self.image_size < 16:
            raise ValueError("image_size must be >= 16")
        if not 1 <= self.jpeg_quality <= 100 or self.samples_per_shard < 1:
            raise ValueError("jpeg_quality must be 1..100 and samples_per_shard >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Traits:
    """The visible traits of one species (each set by the rank noted)."""

    shape: str  # kingdom
    hue: float  # phylum hue plus small drifts from every rank below, degrees
    saturation: float  # class
    value: float  # class
    pattern: str  # class
    period: float  # order: pattern period in body radii
    angle: float  # order: pattern orientation in the body frame, degrees
    secondary: str  # family: pattern colour ("dark", "light", "grey")
    outline: str  # family: "none", "dark", "white"
    appendages: int  # genus
    marker_pos: str  # genus: "front", "back", "top"
    marker_colour: str  # species
    marker_size: float  # species, body radii
    aspect: float  # species: body height / width


@dataclass(frozen=True)
class SyntheticSpecies:
    """One species of the synthetic tree: its taxon, traits and whether training sees it."""

    id: int
    taxon: Taxon
    traits: Traits
    seen: bool

    def counts(self, config: SyntheticConfig) -> dict[str, int]:
        if self.seen:
            return {"train": config.train_per_species, "val": config.val_per_species, "unseen": 0}
        return {"train": 0, "val": 0, "unseen": config.unseen_per_species}


# --------------------------------------------------------------------------------------------------
# Names


_SIMPLE_ONSETS = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "h")
_ONSETS = (*_SIMPLE_ONSETS, "ch", "ph", "th", "tr", "cr", "pl", "st", "gl", "br", "x", "z")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ae", "y")
_CODAS = ("", "", "", "", "n", "r", "s", "l")

# Rank endings per kingdom, after the nomenclature codes (plants/fungi: -phyta/-mycota, -opsida/
# -mycetes, -ales, -aceae; animals: -ozoa/-poda, -ia, -iformes, -idae).
_ENDINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "Animalia": {"phylum": ("ozoa", "opoda", "ata"), "class": ("ia", "ida", "ea"), "order": ("iformes", "ida"),
                 "family": ("idae",), "genus": ("us", "a", "ops", "ix", "on", "ella"),
                 "species": ("us", "a", "is", "atus", "ensis", "oides", "icus")},
    "Plantae": {"phylum": ("ophyta",), "class": ("opsida",), "order": ("ales",), "family": ("aceae",),
                "genus": ("um", "a", "ia", "is", "anthus"), "species": ("ia", "um", "ifolia", "ensis", "ata", "is")},
    "Fungi": {"phylum": ("omycota",), "class": ("omycetes",), "order": ("ales",), "family": ("aceae",),
              "genus": ("myces", "ia", "us", "ella"), "species": ("us", "a", "ina", "ensis", "osus")},
    "Chromista": {"phylum": ("ophyta", "ozoa"), "class": ("ophyceae",), "order": ("ales",), "family": ("aceae",),
                  "genus": ("a", "ium", "ella"), "species": ("a", "us", "ensis")},
    "Protozoa": {"phylum": ("ozoa",), "class": ("ea",), "order": ("ida",), "family": ("idae",),
                 "genus": ("a", "ium", "ella"), "species": ("a", "um", "ensis")},
    "Bacteria": {"phylum": ("ota",), "class": ("ia",), "order": ("ales",), "family": ("aceae",),
                 "genus": ("bacter", "coccus", "ella"), "species": ("is", "us", "ensis")},
    "Archaea": {"phylum": ("archaeota",), "class": ("ia",), "order": ("ales",), "family": ("aceae",),
                "genus": ("archaeum", "coccus", "ococcus"), "species": ("is", "us", "ensis")},
}  # fmt: skip

_NOUNS: dict[str, tuple[str, ...]] = {
    "Animalia": ("glider", "beetle", "finch", "darter", "skink", "moth", "shrimp", "snail", "newt", "wren",
                 "crab", "toad", "weevil", "heron", "minnow", "lacewing", "tetra", "lizard"),
    "Plantae": ("fern", "sedge", "moss", "lily", "vetch", "sorrel", "rush", "daisy", "thistle", "clover",
                "orchid", "heath", "spurge", "mallow"),
    "Fungi": ("cap", "puffball", "bracket", "morel", "webcap", "bonnet", "truffle", "earthstar", "milkcap",
              "brittlegill", "jelly", "bolete"),
    "Chromista": ("kelp", "wrack", "diatom", "weed", "lace"),
    "Protozoa": ("amoeba", "ciliate", "flagellate", "bell"),
    "Bacteria": ("rod", "coccus", "filament", "chain"),
    "Archaea": ("archaeon", "sphere", "disc"),
}  # fmt: skip
# The marker word of a common name ("red-eyed"): what the marker would be on such an organism.
_MARKER_WORDS = {"Animalia": "eyed", "Plantae": "hearted", "Fungi": "dotted"}
_PATTERN_WORDS = {
    "stripes": "banded",
    "spots": "spotted",
    "rings": "ringed",
    "edged": "edged",
    "checks": "chequered",
}
_MODIFIERS = ("lesser", "greater", "dwarf", "giant", "northern", "southern", "eastern", "western",
              "common", "alpine", "marsh", "desert", "coastal", "forest")  # fmt: skip
_HUE_WORDS = ((0, "red"), (18, "scarlet"), (32, "orange"), (45, "amber"), (58, "yellow"), (85, "lime"),
              (120, "green"), (155, "jade"), (180, "teal"), (198, "azure"), (222, "blue"), (255, "indigo"),
              (275, "violet"), (298, "purple"), (320, "magenta"), (342, "crimson"), (360, "red"))  # fmt: skip
_VOWEL_SET = set("aeiouy")


class _Namer:
    """Latin-style names from syllables, unique per rank, deterministic given the rng."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: dict[str, set[str]] = {}

    def _root(self, syllables: int) -> str:
        parts, coda = [], ""
        for k in range(syllables):
            # After a coda only a single consonant, so no "mtr"-style clusters.
            onset = self.rng.choice(_SIMPLE_ONSETS if coda else _ONSETS)
            coda = self.rng.choice(_CODAS) if k < syllables - 1 else ""
            parts.append(onset + self.rng.choice(_VOWELS) + coda)
        return "".join(parts)

    def name(self, rank: str, kingdom: str) -> str:
        used = self.used.setdefault(rank, set())
        endings = _ENDINGS[kingdom][rank]
        for attempt in range(1000):
            # Two-syllable roots keep captions short; three only if the two-syllable space is crowded.
            root = self._root(2 if attempt < 200 else 3)
            ending = self.rng.choice(endings)
            if root[-1] in _VOWEL_SET and ending[0] in _VOWEL_SET:
                root = root[:-1] if root[-2:] != "ae" else root[:-2]  # "Korva"+"idae" -> "Korvidae"
            word = root + ending
            word = word.lower() if rank == "species" else word[:1].upper() + word[1:]
            # Words the taxon cleaner treats as qualifiers or placeholders must never be generated.
            if word not in used and len(word) >= 4 and _survives_cleaning(rank, word):
                used.add(word)
                return word
        raise RuntimeError(f"could not find a new {rank} name")


def _survives_cleaning(rank: str, word: str) -> bool:
    if rank == "species":
        return Taxon.clean(genus="Xus", species=word).species == word
    return clean_higher_rank(word) == word


def _hue_word(hue: float) -> str:
    hue %= 360.0
    return min(_HUE_WORDS, key=lambda hw: abs(hw[0] - hue))[1]


# --------------------------------------------------------------------------------------------------
# Tree


_SHAPES = ("round", "angular", "elongated", "lobed", "star", "egg", "kidney")
_PATTERNS = ("stripes", "spots", "rings", "edged", "checks")
_SAT_VAL = ((0.85, 0.95), (0.65, 0.75))
_PERIODS = (0.95, 0.55)
_ANGLES = (0.0, 90.0, 45.0)
# Secondary colours keep to the phylum hue or none at all: a complementary hue would equal another
# phylum's colour and blur the hue family.
_SECONDARY = ("dark", "light", "grey")
_OUTLINES = ("dark", "none", "white")
_APPENDAGES = (0, 2, 4, 3, 6, 5)
_MARKER_POS = ("front", "back", "top")
_MARKER_COLOURS = ("white", "black", "red", "yellow", "blue")  # their RGB: render._MARKER_RGB
_MARKER_SIZES = (0.2, 0.3)
_ASPECTS = (1.0, 0.78, 1.2)


def _sibling_options(rng: random.Random, n: int, *choices: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Trait tuples for n siblings, as different from each other as the choices allow.

    Greedy farthest-point over the product of choices (Hamming distance, earlier attributes weigh a
    little more), so two siblings differ in the most visible attribute first. More siblings than
    combinations repeat the cycle; the per-node hue drift still tells them apart.
    """
    combos = list(product(*choices))
    weights = [1.0 + 0.1 * (len(choices) - k) for k in range(len(choices))]
    picked = [combos[rng.randrange(len(combos))]]
    while len(picked) < min(n, len(combos)):
        best, best_score = [], -1.0
        for c in combos:
            if c in picked:
                continue
            score = min(sum(w for w, a, b in zip(weights, c, p, strict=True) if a != b) for p in picked)
            if score > best_score + 1e-9:
                best, best_score = [c], score
            elif abs(score - best_score) <= 1e-9:
                best.append(c)
        picked.append(rng.choice(best))
    return [picked[i % len(picked)] for i in range(n)]


class _TreeBuilder:
    """Grows the tree top-down, taking every name and trait from one seeded rng in a fixed order."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"tolclip-synthetic-tree/{cfg.seed}")
        self.namer = _Namer(self.rng)
        self.spacing = 360.0 / (cfg.kingdoms * cfg.phyla_per_kingdom)  # hue gap between phyla
        self.nouns: dict[str, list[str]] = {}
        self.genus_count = 0
        self.species: list[SyntheticSpecies] = []
        self.noun_of: dict[int, str] = {}  # species id -> common-name noun, shared within a genus

    def drift(self, fraction: float) -> float:
        # Hue drift per rank below phylum, as a fraction of the gap between phyla: the sum stays well
        # under half a gap, so a phylum's colour never reaches its neighbour's.
        return self.rng.uniform(-fraction, fraction) * self.spacing

    def grow(self) -> None:
        """Every kingdom and phylum: shapes per kingdom, hues spread evenly over the phyla."""
        cfg, rng = self.cfg, self.rng
        kingdoms = KINGDOM_NAMES[: cfg.kingdoms]
        shapes = list(_SHAPES[: max(cfg.kingdoms, 3)])
        rng.shuffle(shapes)
        hue_offset = rng.uniform(0.0, self.spacing)
        phylum_hues = [hue_offset + i * self.spacing for i in range(cfg.kingdoms * cfg.phyla_per_kingdom)]
        rng.shuffle(phylum_hues)
        self.nouns = {k: list(_NOUNS[k]) for k in kingdoms}
        for k in kingdoms:
            rng.shuffle(self.nouns[k])
        for ki, kingdom in enumerate(kingdoms):
            for pi in range(cfg.phyla_per_kingdom):
                phylum = self.namer.name("phylum", kingdom)
                self.grow_phylum(kingdom, phylum, shapes[ki], phylum_hues[ki * cfg.phyla_per_kingdom + pi])

    def grow_phylum(self, kingdom: str, phylum: str, shape: str, hue_p: float) -> None:
        """Classes, orders, families and genera of one phylum, each rank setting its own traits."""
        cfg, rng, name = self.cfg, self.rng, self.namer.name
        for pattern, sat_val in _sibling_options(rng, cfg.classes_per_phylum, _PATTERNS, _SAT_VAL):
            class_ = name("class", kingdom)
            hue_c = hue_p + self.drift(0.12)
            for period, angle in _sibling_options(rng, cfg.orders_per_class, _PERIODS, _ANGLES):
                order = name("order", kingdom)
                hue_o = hue_c + self.drift(0.07)
                for secondary, outline in _sibling_options(
                    rng, cfg.families_per_order, _SECONDARY, _OUTLINES
                ):
                    family = name("family", kingdom)
                    hue_f = hue_o + self.drift(0.05)
                    for appendages, marker_pos in _sibling_options(
                        rng, cfg.genera_per_family, _APPENDAGES, _MARKER_POS
                    ):
                        genus = name("genus", kingdom)
                        hue_g = hue_f + self.drift(0.03)
                        traits = dict(shape=shape, saturation=sat_val[0], value=sat_val[1], pattern=pattern,
                                      period=period, angle=angle, secondary=secondary, outline=outline,
                                      appendages=appendages, marker_pos=marker_pos)  # fmt: skip
                        self.grow_genus((kingdom, phylum, class_, order, family, genus), traits, hue_g)

    def grow_genus(self, lineage: tuple[str, ...], traits: dict[str, Any], hue_g: float) -> None:
        """The species of one genus (marker and aspect per species), `unseen_per_genus` held out."""
        cfg, rng = self.cfg, self.rng
        nouns = self.nouns[lineage[0]]
        noun = nouns[self.genus_count % len(nouns)]
        self.genus_count += 1
        options = _sibling_options(rng, cfg.species_per_genus, _MARKER_COLOURS, _MARKER_SIZES, _ASPECTS)
        unseen = set(rng.sample(range(cfg.species_per_genus), cfg.unseen_per_genus))
        for si, (mcolour, msize, aspect) in enumerate(options):
            epithet = self.namer.name("species", lineage[0])
            hue = round((hue_g + self.drift(0.02)) % 360.0, 3)
            species_traits = Traits(
                hue=hue, marker_colour=mcolour, marker_size=msize, aspect=aspect, **traits
            )
            self.noun_of[len(self.species)] = noun
            self.species.append(
                SyntheticSpecies(
                    id=len(self.species),
                    taxon=Taxon(*lineage, epithet),
                    traits=species_traits,
                    seen=si not in unseen,
                )
            )

    def named(self) -> list[SyntheticSpecies]:
        """The species, an exact fraction of them (chosen by seed) with a unique common name."""
        n_common = round(self.cfg.common_name_fraction * len(self.species))
        with_common = set(self.rng.sample(range(len(self.species)), n_common))
        used: set[str] = set()
        out: list[SyntheticSpecies] = []
        for sp in self.species:
            if sp.id in with_common:
                common = self.common_name(sp, used)
                used.add(common)
                sp = replace(sp, taxon=replace(sp.taxon, common=common))
            # Round-trip through the cleaner so what the shards hold is exactly what readers decode.
            if Taxon.from_dict(sp.taxon.to_dict()) != sp.taxon:
                raise AssertionError(f"generated taxon does not survive cleaning: {sp.taxon}")
            out.append(sp)
        return out

    def common_name(self, sp: SyntheticSpecies, used: set[str]) -> str:
        # Common names describe the traits the way real ones do ("red-eyed crimson banded glider"),
        # so `com` captions carry information too.
        t = sp.traits
        base = (
            f"{t.marker_colour}-{_MARKER_WORDS.get(sp.taxon.kingdom, 'marked')} {_hue_word(t.hue)} "
            f"{_PATTERN_WORDS[t.pattern]} {self.noun_of[sp.id]}"
        )
        common = base
        mods = list(_MODIFIERS)
        self.rng.shuffle(mods)
        for mod in mods:
            if common not in used:
                break
            common = f"{mod} {base}"
        n = 2
        while common in used:  # more collisions than modifiers: number them, still unique
            common, n = f"{base} {n}", n + 1
        return common


def build_tree(config: SyntheticConfig) -> list[SyntheticSpecies]:
    """The species of the synthetic tree in taxonomic order (ids 0..N-1), deterministic by seed."""
    builder = _TreeBuilder(config)
    builder.grow()
    return builder.named()
