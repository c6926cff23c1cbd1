"""Caption text types of BioCLIP and the file names they take in TreeOfLife-10M shards.

A caption is a template filled with a *name*; the text type decides which name:

    com        "a photo of {common}."
    sci        "a photo of Genus species."
    taxon      "a photo of Animalia Chordata Aves ... Genus species."
    sci_com    "a photo of Genus species with common name {common}."
    taxon_com  "a photo of Animalia ... Genus species with common name {common}."
    mixed      one of the five, drawn anew during training
"""

from __future__ import annotations

import random

from tolclip.core.taxonomy import RANKS, Taxon

TEXT_TYPES: tuple[str, ...] = ("com", "sci", "taxon", "sci_com", "taxon_com")
MIXED = "mixed"
TRAIN_TEMPLATE = "a photo of {}."

# Per-sample text files of the TreeOfLife-10M webdataset release, written and read as-is.
CAPTION_FILES: dict[str, str] = {t: f"{t}.txt" for t in TEXT_TYPES}
NAME_FILES: dict[str, str] = {
    "scientific_name": "scientific_name.txt",
    "taxonomic_name": "taxonomic_name.txt",
    "common_name": "common_name.txt",
}


def check_text_type(text_type: str, allow_mixed: bool = True) -> str:
    allowed = TEXT_TYPES + ((MIXED,) if allow_mixed else ())
    if text_type not in allowed:
        raise ValueError(f"unknown text type {text_type!r}; choose one of {', '.join(allowed)}")
    return text_type


def common_name(taxon: Taxon) -> str:
    """The common name, falling back to the scientific name and then the taxonomic string."""
    return taxon.common or taxon.scientific_name or taxon.taxonomic_name


def name(taxon: Taxon, text_type: str) -> str:
    """The un-templated name a text type puts in a caption."""
    check_text_type(text_type, allow_mixed=False)
    sci = taxon.scientific_name or taxon.taxonomic_name
    tax = taxon.taxonomic_name
    if text_type == "com":
        return common_name(taxon)
    if text_type == "sci":
        return sci
    if text_type == "taxon":
        return tax
    # The "with common name" suffix only carries information when a real common name exists.
    suffix = f" with common name {taxon.common}" if taxon.common else ""
    return (sci if text_type == "sci_com" else tax) + suffix


def caption(taxon: Taxon, text_type: str, template: str = TRAIN_TEMPLATE) -> str:
    return template.format(name(taxon, text_type))


def all_captions(taxon: Taxon) -> dict[str, str]:
    """Every text file of a ToL-10M sample: the five captions and the three raw names."""
    out = {CAPTION_FILES[t]: caption(taxon, t) for t in TEXT_TYPES}
    out[NAME_FILES["scientific_name"]] = taxon.scientific_name
    out[NAME_FILES["taxonomic_name"]] = taxon.taxonomic_name
    out[NAME_FILES["common_name"]] = common_name(taxon)
    return out


def draw_text_type(rng: random.Random) -> str:
    """One of the five text types, uniformly, for `mixed` training."""
    return rng.choice(TEXT_TYPES)


def rank_name(taxon: Taxon, rank: str, text_type: str) -> str:
    """Class name for zero-shot classification at a rank above species.

    Taxonomic text types name the lineage down to that rank (the way BioCLIP's captions carry it);
    the others name the rank alone, since common names exist only for species.
    """
    if rank == RANKS[-1]:
        return name(taxon, text_type)
    cut = taxon.truncate(rank)
    if text_type in ("taxon", "taxon_com", MIXED):
        return cut.taxonomic_name
    return cut.rank(rank)
