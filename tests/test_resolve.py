"""Taxonomy resolution: real NCBI names through taxoniq, homonyms through a table backbone, the report."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tolclip.core.taxonomy import RANKS
from tolclip.curate.resolve import Resolver, TableBackend, TaxoniqBackend, resolve

pytest.importorskip("taxoniq")
NCBI = TaxoniqBackend()


def _ncbi(scientific_name: str, ranks: dict[str, str] | None = None, common: str = ""):
    return resolve(ranks or {}, scientific_name, common, NCBI)


def test_species_resolves_to_seven_ranks_with_normalised_kingdoms() -> None:
    raven = _ncbi("Corvus corax Linnaeus, 1758")
    assert raven.status == "resolved" and raven.rank == "species"
    assert raven.taxon.ranks == (
        "Animalia",
        "Chordata",
        "Aves",
        "Passeriformes",
        "Corvidae",
        "Corvus",
        "corax",
    )
    assert raven.taxon.common == "Common raven"  # from the backend: the source gave none
    assert _ncbi("Corvus corax", common="raven").taxon.common == "raven"  # the source's wins

    agaric = _ncbi("Amanita muscaria")
    assert agaric.status == "resolved" and agaric.taxon.kingdom == "Fungi"

    beet = _ncbi("Beta vulgaris subsp. vulgaris")
    assert beet.status == "resolved"
    assert beet.taxon.kingdom == "Plantae" and beet.taxon.scientific_name == "Beta vulgaris"
    # The species' common name would mislabel a subspecies, so none is taken.
    assert beet.taxon.common == "" and "infraspecific" in beet.note


def test_higher_names_give_partial_with_ranks_filled_above() -> None:
    baboon = _ncbi("Papio")
    assert (baboon.status, baboon.rank) == ("partial", "genus")
    assert baboon.taxon.ranks[:6] == (
        "Animalia",
        "Chordata",
        "Mammalia",
        "Primates",
        "Cercopithecidae",
        "Papio",
    )
    assert baboon.taxon.species == ""

    metalmark = _ncbi("Riodinidae")
    assert (metalmark.status, metalmark.rank) == ("partial", "family")
    assert metalmark.taxon.order == "Lepidoptera" and metalmark.taxon.genus == ""


def test_species_missing_from_ncbi_keeps_the_source_epithet() -> None:
    morpho = _ncbi("Morpho peleides", common="blue morpho")
    assert (morpho.status, morpho.rank, morpho.query) == ("partial", "genus", "Morpho")
    assert morpho.taxon.ranks == (
        "Animalia",
        "Arthropoda",
        "Insecta",
        "Lepidoptera",
        "Nymphalidae",
        "Morpho",
        "peleides",
    )
    assert "not in backend" in morpho.note and morpho.taxon.common == "blue morpho"

    # NCBI files Polygonia as a subgenus of Nymphalis: the source's genus is kept, the difference noted.
    question_mark = _ncbi("Polygonia interrogationis")
    assert (question_mark.status, question_mark.rank) == ("partial", "genus")
    assert question_mark.taxon.scientific_name == "Polygonia interrogationis"
    assert question_mark.taxon.family == "Nymphalidae"
    assert "backend Nymphalis" in question_mark.note


def test_garbage_is_unresolved_and_keeps_what_the_source_said() -> None:
    res = _ncbi("Xyzzy foo")
    assert (res.status, res.rank) == ("unresolved", "")
    assert res.taxon.scientific_name == "Xyzzy foo" and res.taxon.kingdom == ""
    assert resolve({}, "unknown", "", NCBI).status == "unresolved"


def test_alligator_lacks_a_class_in_ncbi() -> None:
    gator = _ncbi("Alligator mississippiensis")
    assert (gator.status, gator.rank) == ("partial", "species")
    assert gator.taxon.class_ == "" and gator.taxon.order == "Crocodylia"
    assert "lacks class" in gator.note
    # A source that gives the class fills the gap and the label is fully resolved.
    given = _ncbi("Alligator mississippiensis", {"class": "Reptilia"})
    assert given.status == "resolved" and given.taxon.class_ == "Reptilia"


def test_source_ranks_win_over_the_backend_and_contradictions_are_noted() -> None:
    gbif_style = {
        "kingdom": "Plantae",
        "phylum": "Tracheophyta",
        "class": "Magnoliopsida",
        "order": "Caryophyllales",
        "family": "Amaranthaceae",
        "genus": "Beta",
        "species": "vulgaris",
    }
    res = resolve(gbif_style, "", "", NCBI)
    assert res.status == "resolved"
    assert res.taxon.phylum == "Tracheophyta" and res.taxon.family == "Amaranthaceae"
    assert "family: source Amaranthaceae, backend Chenopodiaceae" in res.note


def test_taxoniq_homonyms_are_caught_only_through_the_source_ranks() -> None:
    # taxoniq indexes one taxon per name: "Morus" is the gannet genus, the mulberry is unreachable by name.
    [only] = NCBI.lookup("Morus")
    assert only.taxon.family == "Sulidae"
    assert NCBI.lookup("Xyzzy") == []
    assert _ncbi("Morus alba").taxon.kingdom == "Plantae"  # the binomial itself is unique

    mulberry = resolve({"kingdom": "Plantae", "family": "Moraceae", "genus": "Morus"}, "", "", NCBI)
    assert (mulberry.status, mulberry.rank) == ("partial", "family")
    assert mulberry.taxon.phylum == "Streptophyta" and mulberry.taxon.genus == "Morus"
    assert "kingdom Animalia" in mulberry.note  # the bird was rejected, not merged

    # NCBI's "Anisoptera" is a plant genus; the dragonflies fall back to the order the source gave.
    dragonfly = resolve({"kingdom": "Animalia", "order": "Odonata"}, "Anisoptera", "", NCBI)
    assert (dragonfly.status, dragonfly.rank) == ("partial", "order")
    assert dragonfly.taxon.class_ == "Insecta" and dragonfly.taxon.family == ""


@pytest.fixture
def morus_table(tmp_path: Path) -> TableBackend:
    path = tmp_path / "backbone.tsv"
    rows = [
        (
            "Plantae",
            "Tracheophyta",
            "Magnoliopsida",
            "Rosales",
            "Moraceae",
            "Morus",
            "Morus alba",
            "white mulberry",
        ),
        (
            "Animalia",
            "Chordata",
            "Aves",
            "Suliformes",
            "Sulidae",
            "Morus",
            "Morus bassanus",
            "northern gannet",
        ),
        ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Sula", "Sula sula", ""),
    ]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow([*RANKS, "vernacular_name"])
        writer.writerows(rows)
    return TableBackend.from_file(path)


def test_table_backend_returns_every_homonym(morus_table: TableBackend) -> None:
    assert {c.taxon.kingdom for c in morus_table.lookup("Morus")} == {"Plantae", "Animalia"}
    [gannet] = morus_table.lookup("morus bassanus")
    assert (gannet.rank, gannet.taxon.common) == ("species", "northern gannet")
    assert morus_table.lookup("Sulidae")[0].taxon.genus == ""


def test_homonym_is_picked_by_the_source_higher_ranks_or_left_ambiguous(morus_table: TableBackend) -> None:
    bird = resolve({"class": "Aves", "genus": "Morus"}, "", "", morus_table)
    assert (bird.status, bird.rank, bird.taxon.family) == ("partial", "genus", "Sulidae")
    plant = resolve({"kingdom": "Plantae"}, "Morus", "", morus_table)
    assert (plant.status, plant.rank, plant.taxon.family) == ("partial", "genus", "Moraceae")

    unsure = resolve({}, "Morus", "", morus_table)
    assert (unsure.status, unsure.rank) == ("ambiguous", "")
    assert unsure.taxon.ranks == ("", "", "", "", "", "Morus", "")  # only what the source gave
    assert "2 taxa" in unsure.note

    species = resolve({}, "Morus bassanus", "", morus_table)
    assert species.status == "resolved" and species.taxon.common == "northern gannet"


def test_table_backend_rejects_a_table_without_rank_columns() -> None:
    with pytest.raises(ValueError, match="no rank columns"):
        TableBackend([{"name": "Morus"}])


def test_resolver_report_counts_images_per_distinct_label(morus_table: TableBackend, tmp_path: Path) -> None:
    resolver = Resolver(morus_table)
    for _ in range(3):
        resolver.resolve({}, "Morus bassanus", "gannet")
    resolver.resolve({}, "Morus", "")
    resolver.resolve({"family": "Sulidae"}, "", "", images=2)
    resolver.resolve({}, "Xyzzy foo", "")

    rows = {row["label"]: row for row in resolver.report_rows()}
    assert len(rows) == 4
    gannet = rows["scientific_name=Morus bassanus; common_name=gannet"]
    assert (gannet["status"], gannet["images"], gannet["common"], gannet["kingdom"]) == (
        "resolved",
        3,
        "gannet",
        "Animalia",
    )
    assert rows["family=Sulidae"]["rank"] == "family" and rows["family=Sulidae"]["images"] == 2

    summary = resolver.summary()
    assert summary["labels"] == {"resolved": 1, "partial": 1, "unresolved": 1, "ambiguous": 1}
    assert summary["images"] == {"resolved": 3, "partial": 2, "unresolved": 1, "ambiguous": 1}
    assert summary["total_images"] == 7
    assert summary["fraction_all_ranks"] == pytest.approx(3 / 7)

    path = resolver.write_report(tmp_path / "out" / "resolution.csv")
    with path.open() as fh:
        written = list(csv.DictReader(fh))
    assert [r["status"] for r in written] == ["resolved", "ambiguous", "partial", "unresolved"]
    assert written[0]["images"] == "3" and written[0]["class"] == "Aves"


SHARED_NAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sources" / "butterflies-100"


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_NAMES / "names.csv").exists(), reason="needs ../shared/data")
def test_butterfly_labels_all_get_an_honest_outcome(tmp_path: Path) -> None:
    resolver = Resolver()
    with (SHARED_NAMES / "names.csv").open() as fh:
        for row in csv.DictReader(fh):
            resolver.resolve({}, row["scientific_name"], row["label"].lower())
    rows = {row["label"].split(";")[0]: row for row in resolver.report_rows()}
    assert rows["scientific_name=Riodinidae"]["rank"] == "family"
    assert rows["scientific_name=Hemaris"]["rank"] == "genus"
    assert rows["scientific_name=Danaus plexippus"]["status"] == "resolved"
    summary = resolver.summary()
    assert summary["total_labels"] == 101 and summary["labels"]["ambiguous"] == 0
    assert summary["labels"]["resolved"] > 80  # most labels are NCBI species
    assert resolver.write_report(tmp_path / "r.csv").stat().st_size > 0
