import random

import pytest

from tolclip.core.captions import (
    TEXT_TYPES,
    all_captions,
    caption,
    check_text_type,
    draw_text_type,
    name,
    rank_name,
)
from tolclip.core.taxonomy import RANKS, Taxon, clean_name

RAVEN = dict(
    kingdom="Animalia",
    phylum="Chordata",
    **{"class": "Aves"},
    order="Passeriformes",
    family="Corvidae",
    genus="Corvus",
    species="corax",
    common="Common Raven",
)


@pytest.mark.parametrize("raw", ["unknown", "Unknown", "(unidentified)", "not_classified", "  ", None, "NaN"])
def test_placeholders_become_empty(raw):
    assert clean_name(raw) == ""


def test_kingdom_synonyms_and_html():
    assert Taxon.clean(kingdom="Metazoa").kingdom == "Animalia"
    for k in ("Viridiplantae", "Archaeplastida", "Chloroplastida", "PLANTAE"):
        assert Taxon.clean(kingdom=k).kingdom == "Plantae"
    assert Taxon.clean(family="<i>Corvidae</i> ").family == "Corvidae"
    assert Taxon.clean(common="Rock &amp; Roll  bird").common == "Rock & Roll bird"


@pytest.mark.parametrize(
    "genus,species,expect",
    [
        ("Corvus", "corax Linnaeus, 1758", ("Corvus", "corax")),
        ("Corvus", "Corvus corax", ("Corvus", "corax")),  # genus repeated in the epithet field
        ("", "Corvus corax", ("Corvus", "corax")),  # genus filled from the binomial
        ("Beta", "vulgaris subsp. vulgaris", ("Beta", "vulgaris")),
        ("Beta", "vulgaris ssp. maritima", ("Beta", "vulgaris")),
        ("Rosa", "canina var. lutetiana (Léman) Baker", ("Rosa", "canina")),
        ("Puma", "concolor (Linnaeus, 1771)", ("Puma", "concolor")),
        ("Amanita", "unknown", ("Amanita", "")),
    ],
)
def test_epithet_cleaning(genus, species, expect):
    t = Taxon.clean(genus=genus, species=species)
    assert (t.genus, t.species) == expect


def test_higher_rank_authorship_removed():
    t = Taxon.clean(family="Corvidae Leach, 1820", order="PASSERIFORMES")
    assert t.family == "Corvidae" and t.order == "Passeriformes"


def test_unknown_field_is_an_error():
    with pytest.raises(ValueError, match="unknown taxon fields"):
        Taxon.clean(kingdon="Animalia")


def test_roundtrip_and_names():
    t = Taxon.clean(**RAVEN)
    assert Taxon.from_dict(t.to_dict()) == t
    assert list(t.to_dict())[:7] == list(RANKS)
    assert t.scientific_name == "Corvus corax"
    assert t.taxonomic_name == "Animalia Chordata Aves Passeriformes Corvidae Corvus corax"
    assert t.lowest_rank == "species"
    assert t.truncate("family").taxonomic_name == "Animalia Chordata Aves Passeriformes Corvidae"


def test_captions_all_types():
    t = Taxon.clean(**RAVEN)
    tax = "Animalia Chordata Aves Passeriformes Corvidae Corvus corax"
    assert caption(t, "com") == "a photo of Common Raven."
    assert caption(t, "sci") == "a photo of Corvus corax."
    assert caption(t, "taxon") == f"a photo of {tax}."
    assert caption(t, "sci_com") == "a photo of Corvus corax with common name Common Raven."
    assert caption(t, "taxon_com") == f"a photo of {tax} with common name Common Raven."


def test_missing_ranks_dropped_and_common_fallback():
    t = Taxon.clean(
        kingdom="Animalia", phylum="unknown", **{"class": "Aves"}, genus="Corvus", species="corax"
    )
    assert caption(t, "taxon") == "a photo of Animalia Aves Corvus corax."
    assert caption(t, "com") == "a photo of Corvus corax."  # no common name: scientific name
    assert caption(t, "sci_com") == "a photo of Corvus corax."
    only_family = Taxon.clean(kingdom="Animalia", family="Corvidae")
    assert name(only_family, "sci") == "Corvidae"  # lowest known rank stands in
    assert name(only_family, "com") == "Corvidae"
    only_kingdom = Taxon.clean(kingdom="Fungi")
    assert name(only_kingdom, "com") == "Fungi"


def test_tol10m_files():
    files = all_captions(Taxon.clean(**RAVEN))
    assert set(files) == {
        "com.txt",
        "sci.txt",
        "taxon.txt",
        "sci_com.txt",
        "taxon_com.txt",
        "scientific_name.txt",
        "taxonomic_name.txt",
        "common_name.txt",
    }
    assert files["common_name.txt"] == "Common Raven"


def test_rank_names():
    t = Taxon.clean(**RAVEN)
    assert rank_name(t, "genus", "taxon") == "Animalia Chordata Aves Passeriformes Corvidae Corvus"
    assert rank_name(t, "genus", "sci") == "Corvus"
    assert rank_name(t, "family", "com") == "Corvidae"
    assert rank_name(t, "species", "com") == "Common Raven"


def test_text_type_check_and_draw():
    with pytest.raises(ValueError, match="unknown text type"):
        check_text_type("latin")
    with pytest.raises(ValueError):
        name(Taxon.clean(**RAVEN), "mixed")
    rng = random.Random(0)
    drawn = {draw_text_type(rng) for _ in range(200)}
    assert drawn == set(TEXT_TYPES)
