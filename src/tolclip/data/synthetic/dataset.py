"""The embedded default dataset: a seeded, synthetic tree of life with inherited visual traits.

`make train` must train a small CLIP on a 2-core CPU in minutes without downloading anything, so the
project generates its own data. A seeded generator invents a taxonomy (kingdom .. species, Latin-style
names, English-like common names for some species) and renders small images in which every rank adds
its own visible trait on top of its parent's, so siblings look alike and cousins less so:

    kingdom  body shape family      (round, angular, elongated, lobed, star, egg, kidney)
    phylum   hue family             (phyla spread evenly round the colour wheel)
    class    pattern                (stripes, spots, rings, edged, checks) and saturation/value
    order    pattern period and orientation (in the body frame, so rotation keeps it)
    family   secondary colour and outline
    genus    appendage count and marker position
    species  marker colour and size, body aspect ratio

Each rank below phylum also drifts the hue a little, so colour distance follows the tree. Per image,
position, scale, rotation, lighting, pattern phase, background and noise vary, so memorising pixels
does not work but the traits stay visible at 64 px and at 32 px.

Each genus keeps `unseen_per_genus` species out of training: they are only written to the `unseen`
split, to measure zero-shot generalisation to species whose genus (and family) were seen.

Output (`build_synthetic_dataset`): `train/`, `val/`, `unseen/` shard folders written with
`shards.write_shards`, `taxa.json` and, last, `manifest.json`.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tolclip.core.taxonomy import Taxon, clean_higher_rank
from tolclip.data.images import encode_jpeg
from tolclip.data.shards import Sample, shard_spec, write_shards

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "SyntheticConfig",
    "SyntheticSpecies",
    "Traits",
    "build_synthetic_dataset",
    "build_tree",
    "iter_samples",
    "load_manifest",
    "main",
    "render",
]

#: Bump whenever the tree, names or rendering change, so cached datasets are regenerated.
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "unseen")
MANIFEST = "manifest.json"
TAXA = "taxa.json"
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
_MARKER_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "red": (235, 25, 25),
    "yellow": (255, 225, 30),
    "blue": (30, 90, 255),
}
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


def build_tree(config: SyntheticConfig) -> list[SyntheticSpecies]:
    """The species of the synthetic tree in taxonomic order (ids 0..N-1), deterministic by seed."""
    cfg = config
    rng = random.Random(f"tolclip-synthetic-tree/{cfg.seed}")
    namer = _Namer(rng)
    kingdoms = KINGDOM_NAMES[: cfg.kingdoms]
    shapes = list(_SHAPES[: max(cfg.kingdoms, 3)])
    rng.shuffle(shapes)
    n_phyla = cfg.kingdoms * cfg.phyla_per_kingdom
    spacing = 360.0 / n_phyla
    hue_offset = rng.uniform(0.0, spacing)
    phylum_hues = [hue_offset + i * spacing for i in range(n_phyla)]
    rng.shuffle(phylum_hues)

    # Hue drift per rank below phylum, as a fraction of the gap between phyla: the sum stays well
    # under half a gap, so a phylum's colour never reaches its neighbour's.
    def drift(fraction: float) -> float:
        return rng.uniform(-fraction, fraction) * spacing

    species: list[SyntheticSpecies] = []
    nouns = {k: list(_NOUNS[k]) for k in kingdoms}
    for k in kingdoms:
        rng.shuffle(nouns[k])
    noun_of: dict[int, str] = {}  # species id -> common-name noun, shared within a genus
    genus_count = 0
    for ki, kingdom in enumerate(kingdoms):
        shape = shapes[ki]
        for pi in range(cfg.phyla_per_kingdom):
            phylum = namer.name("phylum", kingdom)
            hue_p = phylum_hues[ki * cfg.phyla_per_kingdom + pi]
            for pattern, sat_val in _sibling_options(rng, cfg.classes_per_phylum, _PATTERNS, _SAT_VAL):
                class_ = namer.name("class", kingdom)
                hue_c = hue_p + drift(0.12)
                for period, angle in _sibling_options(rng, cfg.orders_per_class, _PERIODS, _ANGLES):
                    order = namer.name("order", kingdom)
                    hue_o = hue_c + drift(0.07)
                    for secondary, outline in _sibling_options(
                        rng, cfg.families_per_order, _SECONDARY, _OUTLINES
                    ):
                        family = namer.name("family", kingdom)
                        hue_f = hue_o + drift(0.05)
                        for appendages, marker_pos in _sibling_options(
                            rng, cfg.genera_per_family, _APPENDAGES, _MARKER_POS
                        ):
                            genus = namer.name("genus", kingdom)
                            hue_g = hue_f + drift(0.03)
                            noun = nouns[kingdom][genus_count % len(nouns[kingdom])]
                            genus_count += 1
                            options = _sibling_options(
                                rng, cfg.species_per_genus, tuple(_MARKER_COLOURS), _MARKER_SIZES, _ASPECTS
                            )
                            unseen = set(rng.sample(range(cfg.species_per_genus), cfg.unseen_per_genus))
                            for si, (mcolour, msize, aspect) in enumerate(options):
                                epithet = namer.name("species", kingdom)
                                traits = Traits(
                                    shape=shape,
                                    hue=round((hue_g + drift(0.02)) % 360.0, 3),
                                    saturation=sat_val[0],
                                    value=sat_val[1],
                                    pattern=pattern,
                                    period=period,
                                    angle=angle,
                                    secondary=secondary,
                                    outline=outline,
                                    appendages=appendages,
                                    marker_pos=marker_pos,
                                    marker_colour=mcolour,
                                    marker_size=msize,
                                    aspect=aspect,
                                )
                                taxon = Taxon(kingdom, phylum, class_, order, family, genus, epithet)
                                noun_of[len(species)] = noun
                                species.append(
                                    SyntheticSpecies(
                                        id=len(species), taxon=taxon, traits=traits, seen=si not in unseen
                                    )
                                )

    # Common names for an exact fraction of species, chosen by seed. They describe the traits the
    # way real ones do ("red-eyed crimson banded glider"), so `com` captions carry information too.
    n_common = round(cfg.common_name_fraction * len(species))
    with_common = set(rng.sample(range(len(species)), n_common))
    used: set[str] = set()
    out: list[SyntheticSpecies] = []
    for sp in species:
        if sp.id in with_common:
            t = sp.traits
            base = (
                f"{t.marker_colour}-{_MARKER_WORDS.get(sp.taxon.kingdom, 'marked')} {_hue_word(t.hue)} "
                f"{_PATTERN_WORDS[t.pattern]} {noun_of[sp.id]}"
            )
            common = base
            mods = list(_MODIFIERS)
            rng.shuffle(mods)
            for mod in mods:
                if common not in used:
                    break
                common = f"{mod} {base}"
            n = 2
            while common in used:  # more collisions than modifiers: number them, still unique
                common, n = f"{base} {n}", n + 1
            used.add(common)
            sp = replace(sp, taxon=replace(sp.taxon, common=common))
        # Round-trip through the cleaner so what the shards hold is exactly what readers decode.
        if Taxon.from_dict(sp.taxon.to_dict()) != sp.taxon:
            raise AssertionError(f"generated taxon does not survive cleaning: {sp.taxon}")
        out.append(sp)
    return out


# --------------------------------------------------------------------------------------------------
# Rendering


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v), dtype=np.float32) * 255.0


def _shape_radius(shape: str, theta: np.ndarray) -> np.ndarray:
    """Boundary radius (in body radii) of a shape family at body-frame angles `theta`."""
    if shape == "round":
        return np.full_like(theta, 1.0)
    if shape == "angular":  # a diamond: corners front/back/top/bottom
        quarter = np.float32(np.pi / 2)
        a = theta - np.floor(theta / quarter) * quarter - quarter / 2  # np.mod is slow on floats
        return np.float32(0.86) / np.cos(a)
    if shape == "elongated":
        a, b = 1.4, 0.6
        return a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    if shape == "lobed":
        return 0.85 + 0.22 * np.cos(5 * theta)
    if shape == "star":
        return 0.6 + 0.55 * np.abs(np.cos(2 * theta)) ** 3
    if shape == "egg":
        return 0.95 + 0.25 * np.cos(theta)
    if shape == "kidney":
        return 1.0 - 0.4 * np.maximum(-np.cos(theta), 0.0) ** 4
    raise ValueError(f"unknown shape {shape!r}")


_MARKER_ANGLE = {"front": 0.0, "back": math.pi, "top": -math.pi / 2}
_GRIDS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre x and y coordinates (H, W) and a fixed bank of Gaussian noise (3, 2H, 2W)."""
    if size not in _GRIDS:
        c = np.arange(size, dtype=np.float32) + 0.5
        xs = np.ascontiguousarray(np.broadcast_to(c[None, :], (size, size)))
        ys = np.ascontiguousarray(np.broadcast_to(c[:, None], (size, size)))
        # Drawing fresh normals costs more than the rest of an image; a random crop of a fixed bank
        # is as good for "mild sensor noise" and just as deterministic.
        bank = np.random.default_rng(20240917).standard_normal((3, 2 * size, 2 * size), dtype=np.float32)
        _GRIDS[size] = (xs, ys, bank)
    return _GRIDS[size]


def _lerp(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: img = img + alpha * (colour - img), img (3, H, W), colour (3,) or (3, H, W)."""
    for ch in range(3):
        img[ch] += alpha * (colour[ch] - img[ch])


def _soft(x: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a region whose signed distance (in pixels) is x: a 1 px ramp."""
    return np.clip(x + 0.5, 0.0, 1.0)


def render(traits: Traits, rng: np.random.Generator, config: SyntheticConfig | None = None) -> np.ndarray:
    """One image (H, W, 3 uint8) of an organism with these traits; nuisance drawn from `rng`.

    Everything is computed in closed form per pixel (distances in a rotated, scaled body frame) with
    ~1 px soft edges: anti-aliased, vectorised, channel-first for speed, no drawing library needed.
    """
    cfg = config or SyntheticConfig()
    size = cfg.image_size
    xs, ys, bank = _grid(size)
    f32 = np.float32
    # All nuisance numbers in one draw: scalar draws cost ~5 us each, a whole image ~0.5 ms.
    z = rng.random(24)

    def span(i: int, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(z[i])

    # Pose and lighting.
    radius = 0.26 * size * span(0, 1.0 - cfg.scale_jitter, 1.0 + cfg.scale_jitter)
    rot = math.radians(span(1, -cfg.max_rotation, cfg.max_rotation))
    cx = size / 2 + span(2, -1.0, 1.0) * cfg.max_shift * size
    cy = size / 2 + span(3, -1.0, 1.0) * cfg.max_shift * size
    light = f32(span(4, 0.88, 1.1))
    hue = traits.hue + span(5, -3.0, 3.0)
    inv_px = f32(radius)  # body radii -> pixels, for the 1 px soft edges

    # Background: low-saturation colour, linear gradient and one soft ripple, so it carries no trait.
    bg_col = _hsv(span(6, 0, 360), span(7, 0.0, 0.25), span(8, 0.3, 0.92))
    gx, gy = span(9, -25, 25) / size, span(10, -25, 25) / size
    ripple = f32(span(13, 0, 10)) * np.sin(
        xs * f32(span(11, -0.3, 0.3)) + ys * f32(span(12, -0.3, 0.3)) + f32(span(14, 0, 2 * math.pi))
    )
    shade = ripple + (xs - f32(size / 2)) * f32(gx) + (ys - f32(size / 2)) * f32(gy)
    img = np.empty((3, size, size), dtype=f32)
    for ch in range(3):
        img[ch] = shade + bg_col[ch]

    # Body frame, in body radii: u along the body axis, v across it (divided by the aspect ratio).
    dx, dy = xs - f32(cx), ys - f32(cy)
    cr, sr = f32(math.cos(rot) / radius), f32(math.sin(rot) / radius)
    u = dx * cr + dy * sr
    v = (dy * cr - dx * sr) / f32(traits.aspect)
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    inside = _shape_radius(traits.shape, theta) - r  # > 0 inside; ~distance to the edge

    primary = _hsv(hue, traits.saturation, traits.value) * light
    if traits.secondary == "dark":
        secondary = primary * f32(0.3)
    elif traits.secondary == "light":
        secondary = primary + (f32(250.0) - primary) * f32(0.75)
    else:
        secondary = np.full(3, 105.0, dtype=f32) * light

    # Appendages, under the body: k rays leaving the outline, rotated off the front (marker side).
    k = traits.appendages
    if k:
        step = 2 * math.pi / k
        th0 = math.pi / k
        j = np.floor((theta - f32(th0)) * f32(1 / step) + f32(0.5))
        d_ang = theta - f32(th0) - j * f32(step)
        ray_rb = _shape_radius(traits.shape, np.asarray(th0 + np.arange(k) * step, dtype=f32))
        rb_j = ray_rb[j.astype(np.int64) % k]
        along = r * np.cos(d_ang)
        perp = r * np.abs(np.sin(d_ang))
        a_app = _soft((f32(0.085) - perp) * inv_px) * _soft((rb_j + f32(0.5) - along) * inv_px)
        a_app *= along > rb_j * f32(0.5)
        _lerp(img, primary * f32(0.45), a_app)

    # Pattern mask m in [0, 1] (1 = secondary colour), in the body frame so rotation carries it.
    period = f32(traits.period)
    ca, sa = f32(math.cos(math.radians(traits.angle))), f32(math.sin(math.radians(traits.angle)))
    p = u * ca + v * sa + f32(span(15, 0, traits.period))
    q = v * ca - u * sa + f32(span(16, 0, traits.period))
    tau = f32(2 * math.pi) / period
    gain = inv_px / tau  # sine edges ~1 px wide
    if traits.pattern == "stripes":
        m = np.clip(0.5 + np.sin(p * tau) * gain, 0, 1)
    elif traits.pattern == "rings":
        m = np.clip(0.5 + np.sin((r + f32(span(17, 0, traits.period))) * tau) * gain, 0, 1)
    elif traits.pattern == "checks":
        m = np.clip(0.5 + np.sin(p * tau) * np.sin(q * tau) * (2 * gain), 0, 1)
    elif traits.pattern == "spots":
        fp = p / period
        fq = q / period
        fp -= np.floor(fp + 0.5)
        fq -= np.floor(fq + 0.5)
        m = _soft((f32(0.3) - np.sqrt(fp * fp + fq * fq)) * (period * inv_px))
    elif traits.pattern == "edged":  # solid body with a band of secondary colour along the edge
        m = _soft((f32(0.35) * period - inside) * inv_px)
    else:
        raise ValueError(f"unknown pattern {traits.pattern!r}")
    a_body = _soft(inside * inv_px)
    body = primary[:, None, None] + m[None] * (secondary - primary)[:, None, None]
    _lerp(img, body, a_body)

    if traits.outline != "none":
        outline = np.full(3, 25.0 if traits.outline == "dark" else 245.0, dtype=f32)
        _lerp(img, outline, a_body * _soft((f32(0.13) - inside) * inv_px))

    # Marker ("eye"): position from the genus, colour and size from the species; a contrasting rim
    # keeps it visible on any body colour.
    ang = _MARKER_ANGLE[traits.marker_pos]
    mrb = float(_shape_radius(traits.shape, np.asarray([ang], dtype=f32))[0])
    mu, mv = f32(0.5 * mrb * math.cos(ang)), f32(0.5 * mrb * math.sin(ang))
    du, dv = u - mu, (v - mv) * f32(traits.aspect)  # round in the image whatever the aspect
    d = np.sqrt(du * du + dv * dv)
    msize = f32(traits.marker_size)
    rim = np.full(3, 245.0 if traits.marker_colour == "black" else 15.0, dtype=f32)
    _lerp(img, rim, _soft((msize + f32(0.09) - d) * inv_px))
    marker = np.array(_MARKER_COLOURS[traits.marker_colour], dtype=f32) * light
    _lerp(img, marker, _soft((msize - d) * inv_px))

    if cfg.noise_std > 0:
        ox, oy = int(z[18] * size), int(z[19] * size)
        img += bank[:, oy : oy + size, ox : ox + size] * f32(cfg.noise_std)
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.transpose(1, 2, 0)).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Samples and dataset


def _image_rng(config: SyntheticConfig, split: str, species_id: int, index: int) -> np.random.Generator:
    # One stream per image, keyed by its identity: images do not depend on write order or on the
    # number of images drawn for other species.
    return np.random.default_rng([config.seed, SPLITS.index(split), species_id, index])


def _split_jobs(
    config: SyntheticConfig, tree: Sequence[SyntheticSpecies], split: str
) -> list[tuple[int, int]]:
    jobs = [(sp.id, i) for sp in tree for i in range(sp.counts(config)[split])]
    # Shuffled (seeded) so consecutive samples and thus shards mix all species.
    random.Random(f"tolclip-synthetic-order/{config.seed}/{split}").shuffle(jobs)
    return jobs


def iter_samples(
    config: SyntheticConfig, split: str, tree: Sequence[SyntheticSpecies] | None = None
) -> Iterator[Sample]:
    """The samples of one split in write order (seeded shuffle), rendered and JPEG-encoded lazily."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tree = build_tree(config) if tree is None else tree
    for species_id, i in _split_jobs(config, tree, split):
        sp = tree[species_id]
        pixels = render(sp.traits, _image_rng(config, split, species_id, i), config)
        yield Sample(
            key=f"syn{config.seed}_{split}_{species_id:05d}_{i:04d}",
            image=encode_jpeg(Image.fromarray(pixels), quality=config.jpeg_quality),
            taxon=sp.taxon,
            source="synthetic",
            source_id=f"seed{config.seed}/{split}/{species_id}/{i}",
        )


def _config_key(config: SyntheticConfig) -> dict[str, Any]:
    """The config as it reads back from JSON, for comparing with a stored manifest."""
    return json.loads(json.dumps(config.to_dict()))


def _with_paths(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Add absolute locations: the manifest file itself stores paths relative to its folder."""
    root = out.resolve()
    specs = {split: str(root / spec) for split, spec in manifest["shards"].items() if spec}
    return {**manifest, "root": str(root), "specs": specs}


def load_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete dataset in `out_dir` (with absolute `root` and `specs`), else None."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        return None
    files = [f for split_files in manifest.get("files", {}).values() for f in split_files]
    if not (out / TAXA).is_file() or not all((out / f).is_file() for f in files):
        return None  # something was deleted since: not complete any more
    return _with_paths(manifest, out)


_OURS = {*SPLITS, TAXA, MANIFEST, MANIFEST + ".tmp", TAXA + ".tmp"}


def _clear(out: Path) -> None:
    """Remove a previous (possibly partial) synthetic dataset, refusing to touch anything else."""
    if not out.exists():
        return
    foreign = sorted(set(os.listdir(out)) - _OURS)
    if foreign:
        raise FileExistsError(
            f"{out} holds files a synthetic dataset does not write ({', '.join(foreign[:5])}); "
            "choose an empty or new directory"
        )
    for name in _OURS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def build_synthetic_dataset(
    out_dir: str | os.PathLike, config: SyntheticConfig | None = None, **overrides: Any
) -> dict[str, Any]:
    """Write the synthetic dataset to `out_dir` and return its manifest.

    `out_dir/train`, `val`, `unseen` hold shards, `taxa.json` every species, `manifest.json` (written
    last, so an interrupted run is never taken for complete) the config, counts and shard specs
    (relative to `out_dir`). The returned dict adds `root` and absolute `specs` per split. If a
    complete dataset with the same config is already there, it is returned without regenerating;
    a different or partial one is removed first (only if the folder holds nothing else).
    """
    cfg = replace(config or SyntheticConfig(), **overrides)
    out = Path(out_dir)
    existing = load_manifest(out)
    if existing is not None and existing.get("config") == _config_key(cfg):
        return existing
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)

    tree = build_tree(cfg)
    shards: dict[str, str | None] = {}
    files: dict[str, list[str]] = {}
    images: dict[str, int] = {}
    for split in SPLITS:
        n = sum(sp.counts(cfg)[split] for sp in tree)
        images[split] = n
        if n == 0:  # write_shards would leave one empty shard behind
            shards[split], files[split] = None, []
            continue
        n_shards = math.ceil(n / cfg.samples_per_shard)
        paths = write_shards(iter_samples(cfg, split, tree), out / split, max_count=math.ceil(n / n_shards))
        rel = [p.relative_to(out) for p in paths]
        shards[split] = shard_spec(rel)
        files[split] = [str(p) for p in rel]

    taxa = [
        {
            "id": sp.id,
            "taxon": sp.taxon.to_dict(),
            "seen": sp.seen,
            "counts": sp.counts(cfg),
            "traits": asdict(sp.traits),
        }
        for sp in tree
    ]
    _write_json(out / TAXA, taxa)
    seen = [sp for sp in tree if sp.seen]
    counts: dict[str, Any] = {
        "kingdoms": cfg.kingdoms,
        "phyla": len({sp.taxon.phylum for sp in tree}),
        "classes": len({sp.taxon.class_ for sp in tree}),
        "orders": len({sp.taxon.order for sp in tree}),
        "families": len({sp.taxon.family for sp in tree}),
        "genera": len({sp.taxon.genus for sp in tree}),
        "species": len(tree),
        "species_seen": len(seen),
        "species_unseen": len(tree) - len(seen),
        "species_with_common_name": sum(bool(sp.taxon.common) for sp in tree),
        "images": images,
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "tolclip.data.synthetic",
        "config": _config_key(cfg),
        "counts": counts,
        "shards": shards,
        "files": files,
        "taxa": TAXA,
    }
    _write_json(out / MANIFEST, manifest)
    return _with_paths(manifest, out)


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings into typed SyntheticConfig overrides."""
    defaults = SyntheticConfig()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(SyntheticConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {', '.join(types)}; got {item!r}")
        out[key] = types[key](value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tolclip.data.synthetic OUT_DIR [--seed N] [--set KEY=VALUE ...] [--force]`."""
    parser = argparse.ArgumentParser(prog="python -m tolclip.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write train/, val/, unseen/, taxa.json, manifest.json")
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a SyntheticConfig field"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(**{**_parse_overrides(args.set), "seed": args.seed})
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    out = Path(args.out_dir)
    if args.force:
        (out / MANIFEST).unlink(missing_ok=True)
    previous = load_manifest(out)
    cached = previous is not None and previous["config"] == _config_key(config)
    start = time.perf_counter()
    manifest = build_synthetic_dataset(out, config)
    seconds = time.perf_counter() - start
    counts = manifest["counts"]
    print(json.dumps(counts, indent=1))
    for split, spec in manifest["specs"].items():
        print(f"{split}: {spec}")
    total = sum(counts["images"].values())
    if cached:
        print(f"{total} images: already generated in {manifest['root']}")
    else:
        print(f"{total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
