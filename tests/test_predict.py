"""The prediction API: rank sums against a naive loop, subsets, custom labels and bins, failures kept as rows,
and every taxa source (rank CSV, names resolved offline, build-shards catalog, synthetic taxa.json)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tolclip.core.taxonomy import RANKS, Taxon, lineage
from tolclip.models.loading import LoadedModel, load_path
from tolclip.prediction import (
    CustomLabelsBinningClassifier,
    CustomLabelsClassifier,
    TreeOfLifeClassifier,
    embed_images,
)
from tolclip.prediction.classify import LABEL_COLUMNS, TOL_COLUMNS, parse_ranks
from tolclip.prediction.taxa import TaxaError, read_taxa

from helpers import SHARED_DATA, colour_image, small_release, write_catalog


def taxon(k: str, p: str, c: str, o: str, f: str, g: str, s: str = "", common: str = "") -> Taxon:
    return Taxon.clean(
        kingdom=k, phylum=p, **{"class": c}, order=o, family=f, genus=g, species=s, common=common
    )


BIRDS = ("Animalia", "Chordata", "Aves")
ROSALES = ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales")
AGARICS = ("Fungi", "Basidiomycota", "Agaricomycetes")
# Several kingdoms, families and genera; the genus Morus twice (gannets, a bird family; mulberries, a plant
# family), so a genus is only a genus with its lineage; Rosa also known only to genus.
TREE = [
    taxon(*BIRDS, "Passeriformes", "Corvidae", "Corvus", "corax", "common raven"),
    taxon(*BIRDS, "Passeriformes", "Corvidae", "Corvus", "corone", "carrion crow"),
    taxon(*BIRDS, "Passeriformes", "Corvidae", "Pica", "pica", "Eurasian magpie"),
    taxon(*BIRDS, "Suliformes", "Sulidae", "Morus", "bassanus", "northern gannet"),
    taxon(*BIRDS, "Suliformes", "Sulidae", "Morus", "serrator"),
    taxon(*ROSALES, "Moraceae", "Morus", "alba", "white mulberry"),
    taxon(*ROSALES, "Moraceae", "Morus", "nigra"),
    taxon(*ROSALES, "Rosaceae", "Rosa", "canina", "dog rose"),
    taxon(*ROSALES, "Rosaceae", "Rosa"),
    taxon(*AGARICS, "Agaricales", "Amanitaceae", "Amanita", "muscaria", "fly agaric"),
    taxon(*AGARICS, "Agaricales", "Amanitaceae", "Amanita", "phalloides", "death cap"),
    taxon(*AGARICS, "Boletales", "Boletaceae", "Boletus", "edulis", "penny bun"),
    taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Leopardus", "pardalis", "ocelot"),
    taxon("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"),
]
IMAGES = [colour_image(i) for i in range(8)]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_release(tmp_path_factory.mktemp("predict") / "release")


@pytest.fixture(scope="module")
def model(release: Path) -> LoadedModel:
    return load_path(release)


@pytest.fixture(scope="module")
def tol(model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> TreeOfLifeClassifier:
    cache = tmp_path_factory.mktemp("cache")
    return TreeOfLifeClassifier(model, taxa=TREE, templates="single", cache_dir=cache, device="cpu")


def naive_probs(clf: TreeOfLifeClassifier, images: list) -> torch.Tensor:
    feats = clf.embed(images).features
    scale = clf.model.net.logit_scale.detach().exp()
    return torch.softmax(scale * feats @ clf.index.embeddings.T, dim=-1).double()


def naive_sums(probs: list[float], taxa: list[Taxon], rank: str, min_prob: float) -> dict[tuple, float]:
    """pybioclip's loop: each species' probability added to its lineage at `rank` (above min_prob)."""
    sums: dict[tuple, float] = {}
    for p, t in zip(probs, taxa, strict=True):
        if rank == "species" or p > min_prob:  # the species rank is the probabilities themselves
            key = lineage(t, rank)
            sums[key] = sums.get(key, 0.0) + p
    return sums


def row_key(row: dict, rank: str) -> tuple[str, ...]:
    names = [row[r] for r in RANKS[:-1]] + [row["species_epithet"]]
    return tuple(names[: RANKS.index(rank) + 1])


@pytest.mark.parametrize("min_prob", [1e-9, 1e-3])
def test_rank_sums_equal_a_naive_loop(tol: TreeOfLifeClassifier, min_prob: float) -> None:
    k = 4
    rows = tol.predict(IMAGES, rank="all", k=k, min_prob=min_prob)
    probs = naive_probs(tol, IMAGES)
    taxa = tol.index.taxa
    per_rank = {rank: min(k, len({lineage(t, rank) for t in taxa})) for rank in RANKS}
    assert len(rows) == sum(per_rank.values()) * len(IMAGES)
    for i, row_probs in enumerate(probs.tolist()):
        mine = [r for r in rows if r["file_name"] == str(i)]
        assert [r["rank"] for r in mine] == [rank for rank in RANKS for _ in range(per_rank[rank])]
        for rank in RANKS:
            naive = naive_sums(row_probs, taxa, rank, min_prob)
            got = [(row_key(r, rank), r["score"]) for r in mine if r["rank"] == rank]
            groups = {lineage(t, rank) for t in taxa}
            expected = sorted([*naive.values(), *[0.0] * (len(groups) - len(naive))], reverse=True)[:k]
            assert [s for _, s in got] == pytest.approx(expected, abs=1e-6), (i, rank)
            for key, score in got:
                assert key in groups, f"{key} is not a lineage of the taxa at {rank}"
                assert score == pytest.approx(naive.get(key, 0.0), abs=1e-6), (i, rank, key)


def test_homonym_genera_are_two_classes(tol: TreeOfLifeClassifier) -> None:
    rows = tol.predict(IMAGES[:1], rank="genus", k=100)
    morus = {(r["kingdom"], r["family"]) for r in rows if r["genus"] == "Morus"}
    assert morus == {("Animalia", "Sulidae"), ("Plantae", "Moraceae")}
    assert len(rows) == len({lineage(t, "genus") for t in TREE})
    assert sum(r["score"] for r in rows) == pytest.approx(1.0, abs=1e-5)


def test_species_rows_and_genus_only_taxon(tol: TreeOfLifeClassifier) -> None:
    rows = tol.predict(IMAGES[:2], k=len(TREE))
    assert len(rows) == 2 * len(TREE)
    assert list(rows[0]) == list(TOL_COLUMNS)
    first = [r for r in rows if r["file_name"] == "0"]
    assert sum(r["score"] for r in first) == pytest.approx(1.0, abs=1e-5)
    assert [r["score"] for r in first] == sorted((r["score"] for r in first), reverse=True)
    rosa = [r for r in first if r["genus"] == "Rosa"]
    assert {(r["species_epithet"], r["species"]) for r in rosa} == {("canina", "Rosa canina"), ("", "")}
    raven = next(r for r in first if r["species"] == "Corvus corax")
    assert raven["common_name"] == "common raven" and raven["error"] == ""


def test_parse_ranks() -> None:
    assert parse_ranks("species,genus") == ["genus", "species"]
    assert parse_ranks("all") == list(RANKS)
    with pytest.raises(ValueError, match="unknown rank tribe"):
        parse_ranks("genus,tribe")


def names_of(clf: TreeOfLifeClassifier) -> set[str]:
    return {t.scientific_name for t in clf.index.taxa}


@pytest.mark.parametrize(
    ("subset", "expected"),
    [
        ("Morus", {"Morus bassanus", "Morus serrator", "Morus alba", "Morus nigra"}),
        ("genus=Morus", {"Morus bassanus", "Morus serrator", "Morus alba", "Morus nigra"}),
        ("family=Sulidae", {"Morus bassanus", "Morus serrator"}),
        ("rosa", {"Rosa canina", "Rosa"}),
        ("Amanita muscaria, Pica", {"Amanita muscaria", "Pica pica"}),
    ],
)
def test_subset_by_name(model: LoadedModel, tol: TreeOfLifeClassifier, subset: str, expected: set) -> None:
    clf = TreeOfLifeClassifier(
        model, index=tol.index, subset=subset, templates="single", cache_dir=None, device="cpu"
    )
    assert names_of(clf) == expected
    rows = clf.predict(IMAGES[:3], k=10)
    assert {r["species"] or r["genus"] for r in rows} <= expected
    assert len(rows) == 3 * len(expected)
    # The softmax is over the subset: its classes share all of the probability.
    assert sum(r["score"] for r in rows if r["file_name"] == "0") == pytest.approx(1.0, abs=1e-5)


def test_subset_from_a_csv_first_column_a_rank(model: LoadedModel, tol, tmp_path: Path) -> None:
    by_genus = tmp_path / "genera.csv"
    by_genus.write_text("genus,note\nCorvus,crows\nPica,\n")
    clf = TreeOfLifeClassifier(model, index=tol.index, subset=str(by_genus), cache_dir=None, device="cpu")
    assert names_of(clf) == {"Corvus corax", "Corvus corone", "Pica pica"}
    by_class = tmp_path / "classes.csv"
    by_class.write_text("cls\nAgaricomycetes\n")
    clf = TreeOfLifeClassifier(model, index=tol.index, subset=str(by_class), cache_dir=None, device="cpu")
    assert names_of(clf) == {"Amanita muscaria", "Amanita phalloides", "Boletus edulis"}
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nCorvus\n")
    with pytest.raises(TaxaError, match="first column must be named one of"):
        TreeOfLifeClassifier(model, index=tol.index, subset=str(bad), cache_dir=None, device="cpu")


@pytest.mark.parametrize(
    ("subset", "message"),
    [
        ("Nonexistus", "not among the index's taxa: Nonexistus"),
        ("Corvus,genus=Sulidae", "not among the index's taxa: genus=Sulidae"),
        ("tribe=Corvini", "unknown rank 'tribe'"),
        (" , ", "names no taxon"),
    ],
)
def test_subset_that_names_nothing_is_an_error(model: LoadedModel, tol, subset: str, message: str) -> None:
    with pytest.raises(TaxaError, match=message):
        TreeOfLifeClassifier(model, index=tol.index, subset=subset, cache_dir=None, device="cpu")


def test_unreadable_inputs_are_rows(tol: TreeOfLifeClassifier, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    colour_image(3).save(good)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    rows = tol.predict([str(good), str(text), str(tmp_path / "gone.jpg"), IMAGES[0]], k=2)
    assert [r["file_name"] for r in rows] == [str(good)] * 2 + [str(text), str(tmp_path / "gone.jpg")] + [
        "3"
    ] * 2
    errors = {r["file_name"]: r["error"] for r in rows if r["error"]}
    assert errors == {str(text): "not an image", str(tmp_path / "gone.jpg"): "file not found"}
    assert all(r["score"] is None for r in rows if r["error"])
    # The photo from a file and the same picture in memory are one prediction.
    assert [r["score"] for r in rows[:2]] == pytest.approx(
        [r["score"] for r in tol.predict(colour_image(3), k=2)]
    )


def test_no_inputs_no_rows(tol: TreeOfLifeClassifier) -> None:
    assert tol.predict([], k=2) == []


def test_embeddings_are_unit_vectors(model: LoadedModel) -> None:
    emb = embed_images(model, IMAGES[:3], batch_size=2)
    assert emb.keys == ["0", "1", "2"] and emb.ok == [0, 1, 2] and emb.failures == {}
    assert emb.features.norm(dim=1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    raw = embed_images(model, IMAGES[:3], normalize=False)
    assert torch.allclose(torch.nn.functional.normalize(raw.features, dim=-1), emb.features, atol=1e-5)
    assert not torch.allclose(raw.features.norm(dim=1), torch.ones(3), atol=1e-3)


def test_bf16_embeddings_are_close_to_fp32(model: LoadedModel) -> None:
    fp32 = embed_images(model, IMAGES[:3]).features
    bf16 = embed_images(model, IMAGES[:3], precision="bf16").features
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # bf16 arithmetic really ran
    cosine = torch.nn.functional.cosine_similarity(bf16, fp32)
    assert cosine.min() > 0.999, cosine
    with pytest.raises(ValueError, match="precision"):
        embed_images(model, IMAGES[:1], precision="fp8")


LABELS = ["Amanita muscaria", "Boletus edulis", "Corvus corax", "Rosa canina", "a rock"]
BINS = {
    "Amanita muscaria": "fungus",
    "Boletus edulis": "fungus",
    "Corvus corax": "bird",
    "Rosa canina": "plant",
}


def test_custom_labels_all_by_default_and_bins_sum(model: LoadedModel, tmp_path: Path) -> None:
    common = {"templates": "single", "cache_dir": tmp_path, "device": "cpu"}
    rows = CustomLabelsClassifier(model, LABELS, **common).predict(IMAGES[:3])
    assert len(rows) == 3 * len(LABELS) and list(rows[0]) == list(LABEL_COLUMNS)
    for i in range(3):
        mine = [r for r in rows if r["file_name"] == str(i)]
        assert {r["classification"] for r in mine} == set(LABELS)
        assert sum(r["score"] for r in mine) == pytest.approx(1.0, abs=1e-5)
    only = {lab: BINS[lab] for lab in LABELS if lab in BINS}
    plain = CustomLabelsClassifier(model, list(only), **common).predict(IMAGES[:3])
    binned = CustomLabelsBinningClassifier(model, only, **common).predict(IMAGES[:3])
    assert len(binned) == 3 * 3
    for i in range(3):
        by_hand: dict[str, float] = {}
        for r in plain:
            if r["file_name"] == str(i):
                by_hand[only[r["classification"]]] = by_hand.get(only[r["classification"]], 0) + r["score"]
        got = [(r["classification"], r["score"]) for r in binned if r["file_name"] == str(i)]
        assert dict(got) == pytest.approx(by_hand, abs=1e-6)
        assert [s for _, s in got] == pytest.approx(sorted(by_hand.values(), reverse=True), abs=1e-6)
    top2 = CustomLabelsBinningClassifier(model, only, **common).predict(IMAGES[2], k=2)
    assert [r["classification"] for r in top2] == [c for c, _ in got[:2]]
    assert [r["score"] for r in top2] == pytest.approx([v for _, v in got[:2]], abs=1e-5)


def test_custom_label_errors(model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="at least two labels"):
        CustomLabelsClassifier(model, ["only one", " "], cache_dir=None, device="cpu")
    with pytest.raises(ValueError, match="labels repeat: cat"):
        CustomLabelsClassifier(model, ["cat", "dog", "cat "], cache_dir=None, device="cpu")
    with pytest.raises(ValueError, match="labels without a bin: dog"):
        CustomLabelsBinningClassifier(model, {"cat": "pet", "dog": " "}, cache_dir=None, device="cpu")


# ------------------------------------------------------------------------------------ taxa sources


def test_rank_csv_reads_cls_as_class_over_a_label_column(tmp_path: Path) -> None:
    # BioCLIP's Rare Species metadata: an unnamed index column, `cls` the class, `class` the species label.
    path = tmp_path / "metadata.csv"
    path.write_text(
        ",kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class\n"
        "0,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata,purple wartyback,a.jpg,"
        "Cyclonaias tuberculata\n"
        "1,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata,,b.jpg,Cyclonaias tuberculata\n"
        "2,Animalia,Chordata,Reptilia,Testudines,Geoemydidae,Pangshura,sylhetensis,,c.jpg,Pangshura sylhetensis\n"
    )
    taxa = read_taxa(path)
    assert [t.ranks for t in taxa.taxa] == [
        ("Animalia", "Mollusca", "Bivalvia", "Unionida", "Unionidae", "Cyclonaias", "tuberculata"),
        ("Animalia", "Chordata", "Reptilia", "Testudines", "Geoemydidae", "Pangshura", "sylhetensis"),
    ]
    assert taxa.taxa[0].common == "purple wartyback" and taxa.unresolved == []
    tsv = tmp_path / "ranks.tsv"
    tsv.write_text("kingdom\tgenus\tspecies\nFungi\tAmanita\tmuscaria\n")
    assert [t.ranks for t in read_taxa(tsv).taxa] == [("Fungi", "", "", "", "", "Amanita", "muscaria")]


@pytest.mark.shared_data
def test_bioclip_rare_species_metadata() -> None:
    path = SHARED_DATA / "taxonomy" / "rare_species_metadata.csv"
    if not path.is_file():
        pytest.skip(f"{path} absent (../shared/data)")
    taxa = read_taxa(path)
    assert len(taxa) == 400
    assert {t.class_ for t in taxa.taxa} >= {"Bivalvia", "Aves", "Mammalia"}
    assert not [t for t in taxa.taxa if t.class_ == t.genus], "the species label was read as the class"


def test_names_csv_resolved_offline(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    path.write_text(
        "scientific_name,common_name\nAmanita muscaria,fly agaric\nBoletus edulis,\nFooxus imaginarius,nothing\n"
    )
    taxa = read_taxa(path)
    by_genus = {t.genus: t for t in taxa.taxa}
    assert by_genus["Amanita"].ranks == (
        "Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "muscaria"
    )  # fmt: skip
    assert by_genus["Amanita"].common == "fly agaric"
    assert by_genus["Boletus"].family == "Boletaceae" and by_genus["Boletus"].kingdom == "Fungi"
    assert taxa.unresolved == ["Fooxus imaginarius"]
    assert by_genus["Fooxus"].ranks == ("", "", "", "", "", "Fooxus", "imaginarius")


def test_catalog_parquet_from_build_shards(tmp_path: Path) -> None:
    from tolclip.curate.stats import CATALOG_COLUMNS

    def row(key: str, t: Taxon, common: str) -> dict:
        base = dict.fromkeys(CATALOG_COLUMNS, "")
        return {
            **base,
            "key": key,
            "train_small": False,
            **{r: t.rank(r) for r in RANKS},
            "common_name": common,
        }

    rows = [row("a", TREE[0], ""), row("b", TREE[0], "raven"), row("c", TREE[5], ""), row("d", TREE[0], "")]
    write_catalog(tmp_path, rows)
    for source in (tmp_path, tmp_path / "catalog.parquet", tmp_path / "catalog.csv"):
        taxa = read_taxa(source)
        assert [t.ranks for t in taxa.taxa] == [TREE[0].ranks, TREE[5].ranks], source
        assert taxa.taxa[0].common == "raven"  # the first common name seen for the lineage


def test_synthetic_taxa_json(tmp_path: Path) -> None:
    from tolclip.data.synthetic.dataset import build_synthetic_dataset

    sizes = dict(phyla_per_kingdom=1, classes_per_phylum=1, orders_per_class=1, families_per_order=1)
    manifest = build_synthetic_dataset(
        tmp_path / "syn", kingdoms=1, **sizes, genera_per_family=2, species_per_genus=2, image_size=16,
        train_per_species=1, val_per_species=1, unseen_per_species=1,
    )  # fmt: skip
    taxa = read_taxa(tmp_path / "syn")
    assert taxa.source.endswith("taxa.json")
    assert len(taxa) == manifest["counts"]["species"] == 4
    assert all(t.kingdom and t.genus and t.species for t in taxa.taxa)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.csv", "does not exist"),
        ("colour,size\nred,3\n", "odd.csv", "expected rank columns .* found colour, size"),
        ("kingdom\n", "empty.csv", "no rows"),
        ("genus,species\n,\n", "blank.csv", "no row names any rank"),
        ("[1, 2]", "taxa.json", "not a synthetic taxa.json"),
        ("Corvus corax\n", "names.txt", "taxa come from a .csv"),
    ],
)
def test_bad_taxa_sources(tmp_path: Path, content: str | None, name: str, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(TaxaError, match=message):
        read_taxa(path)


def test_folder_without_taxa(tmp_path: Path) -> None:
    with pytest.raises(TaxaError, match="no catalog.parquet / catalog.csv / taxa.json in this folder"):
        read_taxa(tmp_path)


def test_release_without_taxa_asks_for_them(model: LoadedModel) -> None:
    with pytest.raises(TaxaError, match="names no taxa of its own: pass --taxa"):
        TreeOfLifeClassifier(model, cache_dir=None, device="cpu")


def test_release_that_ships_taxa(release: Path, tmp_path: Path) -> None:
    import shutil

    shipped = tmp_path / "with_taxa"
    shutil.copytree(release, shipped)
    (shipped / "taxa.csv").write_text("genus,species,common_name\nCorvus,corax,raven\nPica,pica,magpie\n")
    clf = TreeOfLifeClassifier(shipped, templates="single", cache_dir=tmp_path / "cache", device="cpu")
    assert names_of(clf) == {"Corvus corax", "Pica pica"}
    assert clf.index.meta["source"] == str(shipped / "taxa.csv")
    assert math.isclose(sum(r["score"] for r in clf.predict(IMAGES[0], k=5)), 1.0, abs_tol=1e-5)
