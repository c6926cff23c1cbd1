"""The synthetic tree of life: determinism, splits, record format, caption length, learnability."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tolclip.cli.synthetic import main
from tolclip.core.captions import TEXT_TYPES, all_captions, caption
from tolclip.core.taxonomy import RANKS, Taxon
from tolclip.data.shards import decode_taxon, iter_records
from tolclip.data.synthetic import (
    SPLITS,
    SyntheticConfig,
    build_synthetic_dataset,
    build_tree,
    dataset,
    load_manifest,
    render,
)

# 3 kingdoms x 2 phyla x 2 genera x 3 species (1 unseen): 36 species, 264 images, well under a second.
SMALL = SyntheticConfig(
    classes_per_phylum=1,
    orders_per_class=1,
    families_per_order=1,
    genera_per_family=2,
    species_per_genus=3,
    train_per_species=6,
    val_per_species=4,
    unseen_per_species=2,
    samples_per_shard=50,
)
TINY = dict(kingdoms=1, phyla_per_kingdom=1, classes_per_phylum=1, orders_per_class=1, families_per_order=1,
            genera_per_family=1, species_per_genus=2, train_per_species=2, val_per_species=1,
            unseen_per_species=1)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, build_synthetic_dataset(out, SMALL)


def _taxa(out: Path) -> list[dict]:
    return json.loads((out / "taxa.json").read_text(encoding="utf-8"))


def _records(out: Path, manifest: dict, split: str) -> list[dict]:
    return [rec for f in manifest["files"][split] for rec in iter_records(str(out / f))]


def test_counts_match_config(built: tuple[Path, dict]) -> None:
    out, manifest = built
    counts = manifest["counts"]
    assert counts["species"] == 36 and counts["species_seen"] == 24 and counts["species_unseen"] == 12
    assert counts["genera"] == 12 and counts["phyla"] == 6 and counts["kingdoms"] == 3
    assert counts["images"] == {"train": 24 * 6, "val": 24 * 4, "unseen": 12 * 2}
    assert counts["species_with_common_name"] == round(0.6 * 36)
    for split, n in counts["images"].items():
        assert len(_records(out, manifest, split)) == n
    # Shards are balanced (144 -> 3 x 48) and the specs expand to the files written.
    assert manifest["shards"]["train"] == "train/shard-{000000..000002}.tar"
    assert manifest["specs"]["train"] == str(out.resolve() / "train/shard-{000000..000002}.tar")
    assert [sum(1 for _ in iter_records(str(out / f))) for f in manifest["files"]["train"]] == [48, 48, 48]
    taxa = _taxa(out)
    assert len(taxa) == 36
    assert sum(t["counts"]["train"] for t in taxa) == counts["images"]["train"]
    assert json.loads((out / "manifest.json").read_text())["config"] == SMALL.to_dict()


def test_every_record_decodes(built: tuple[Path, dict]) -> None:
    out, manifest = built
    by_name = {Taxon.from_dict(t["taxon"]).scientific_name: t for t in _taxa(out)}
    keys = set()
    for split in SPLITS:
        for rec in _records(out, manifest, split):
            assert rec["__key__"] not in keys and "." not in rec["__key__"]
            keys.add(rec["__key__"])
            with Image.open(io.BytesIO(rec["jpg"])) as img:
                assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
            meta = json.loads(rec["taxon.json"])
            assert meta["source"] == "synthetic" and meta["source_id"]
            taxon = decode_taxon(rec["taxon.json"])
            entry = by_name[taxon.scientific_name]
            assert taxon == Taxon(**{("class_" if k == "class" else k): v for k, v in entry["taxon"].items()})
            assert entry["seen"] == (split != "unseen")
            for filename, text in all_captions(taxon).items():
                assert rec[filename].decode("utf-8") == text and text
    assert len(keys) == sum(manifest["counts"]["images"].values())


def test_unseen_species_share_genus_and_never_train(built: tuple[Path, dict]) -> None:
    out, manifest = built
    taxa = [(Taxon.from_dict(t["taxon"]), t["seen"]) for t in _taxa(out)]
    seen_genera = {t.genus for t, seen in taxa if seen}
    seen_families = {t.family for t, seen in taxa if seen}
    unseen = {t for t, seen in taxa if not seen}
    assert len(unseen) == 12
    assert all(t.genus in seen_genera and t.family in seen_families for t in unseen)
    per_genus = Counter(t.genus for t in unseen)
    assert set(per_genus.values()) == {SMALL.unseen_per_genus}
    for split in ("train", "val"):
        split_taxa = {decode_taxon(r["taxon.json"]) for r in _records(out, manifest, split)}
        assert not split_taxa & unseen
        assert len(split_taxa) == 24
    assert {decode_taxon(r["taxon.json"]) for r in _records(out, manifest, "unseen")} == unseen


def test_train_order_is_shuffled(built: tuple[Path, dict]) -> None:
    out, manifest = built
    first = manifest["files"]["train"][0]
    species = [decode_taxon(r["taxon.json"]).genus for r in iter_records(str(out / first))]
    assert len(set(species)) >= 8  # 48 samples of the first shard span most of the 12 genera


def test_determinism(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = built
    again = build_synthetic_dataset(tmp_path / "again", SMALL)
    assert (out / "taxa.json").read_bytes() == (tmp_path / "again" / "taxa.json").read_bytes()
    assert again["files"] == manifest["files"] and again["counts"] == manifest["counts"]
    for split in SPLITS:
        for f in manifest["files"][split]:
            assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes()
    other = build_tree(SyntheticConfig(**{**SMALL.to_dict(), "seed": 1}))
    assert [s.taxon for s in other] != [s.taxon for s in build_tree(SMALL)]


def test_cache_regenerate_and_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    first = build_synthetic_dataset(out, **TINY)
    shard = out / first["files"]["train"][0]
    stamp = shard.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although the dataset was complete")

    with monkeypatch.context() as m:
        m.setattr(dataset, "write_shards", fail)
        assert build_synthetic_dataset(out, **TINY) == first
    assert shard.stat().st_mtime_ns == stamp

    # A different config replaces the dataset; an interrupted one (no manifest) is rebuilt.
    second = build_synthetic_dataset(out, **{**TINY, "seed": 7})
    assert second["config"]["seed"] == 7 and second["counts"] == first["counts"]
    (out / "manifest.json").unlink()
    (out / "val" / "shard-000009.tar").write_bytes(b"partial")
    third = build_synthetic_dataset(out, **{**TINY, "seed": 7})
    assert third == second and not (out / "val" / "shard-000009.tar").exists()

    # A folder holding anything else is never wiped.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_synthetic_dataset(out, **TINY)
    assert (out / "notes.txt").exists()


def test_main_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(tmp_path / "d"), "--seed", "3", *(f"--set={k}={v}" for k, v in TINY.items())]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert '"species": 2' in printed and "images in" in printed
    manifest = load_manifest(tmp_path / "d")
    assert manifest is not None and manifest["config"]["seed"] == 3
    with pytest.raises(SystemExit):
        main([str(tmp_path / "e"), "--set", "no_such_field=1"])


def _token_counter():
    try:
        from tolclip.core.tokenizer import get_tokenizer
    except ImportError:  # rough fallback: a CLIP BPE token per ~3 letters of an invented word
        return lambda text: sum(max(1, -(-len(w) // 3)) for w in text.replace("-", " - ").split())
    tok = get_tokenizer()
    return lambda text: len(tok.encode(text))


def test_names_and_captions_fit_context() -> None:
    tree = build_tree(SyntheticConfig())  # the default experiment
    count = _token_counter()
    longest = max(count(caption(sp.taxon, tt)) for sp in tree for tt in TEXT_TYPES)
    assert longest <= 60, longest  # 77 with start/end tokens; leave room for prompt templates
    for i, rank in enumerate(RANKS):
        names = {sp.taxon.ranks[:i] + (sp.taxon.rank(rank),) for sp in tree}
        assert len({n[-1] for n in names}) == len(names), f"{rank} names are not unique"
    for sp in tree:
        t = sp.taxon
        assert Taxon.from_dict(t.to_dict()) == t
        assert t.species.islower() and t.genus[:1].isupper() and t.genus[1:].islower()
        assert t.family.endswith(("aceae", "idae")) and t.order.endswith(("ales", "iformes", "ida"))
        assert t.phylum.endswith(("phyta", "mycota", "ozoa", "poda", "ata"))
    commons = [sp.taxon.common for sp in tree if sp.taxon.common]
    assert len(commons) == round(0.6 * len(tree)) and len(set(commons)) == len(commons)
    assert {sp.taxon.kingdom for sp in tree} == {"Animalia", "Plantae", "Fungi"}


def test_traits_are_inherited() -> None:
    tree = build_tree(SyntheticConfig())
    # Each rank fixes its traits for all descendants ...
    owner = {"shape": "kingdom", "pattern": "class", "period": "order", "angle": "order",
             "secondary": "family", "outline": "family", "appendages": "genus", "marker_pos": "genus"}  # fmt: skip
    for trait, rank in owner.items():
        groups = defaultdict(set)
        for sp in tree:
            groups[sp.taxon.truncate(rank)].add(getattr(sp.traits, trait))
        assert all(len(v) == 1 for v in groups.values()), trait
    # ... and siblings differ in them (two children per rank: the first attribute always differs).
    for trait, rank in (("shape", "kingdom"), ("pattern", "class"), ("period", "order"),
                        ("secondary", "family"), ("appendages", "genus")):  # fmt: skip
        parent = RANKS[RANKS.index(rank) - 1]
        children = defaultdict(dict)
        for sp in tree:
            children[sp.taxon.truncate(parent)][sp.taxon.rank(rank)] = getattr(sp.traits, trait)
        assert all(len(set(c.values())) == len(c) for c in children.values()), trait
    for genus in {sp.taxon.genus for sp in tree}:
        looks = {
            (s.traits.marker_colour, s.traits.marker_size, s.traits.aspect)
            for s in tree
            if s.taxon.genus == genus
        }
        assert len(looks) == 4


def _features(images: np.ndarray) -> np.ndarray:
    """Fixed features of 32 px versions: hue histogram of saturated pixels and a 4x4x4 colour histogram."""
    n = len(images)
    small = images.reshape(n, 32, 2, 32, 2, 3).mean((2, 4))
    hi, lo = small.max(-1), small.min(-1)
    chroma = np.maximum(hi - lo, 1e-6)
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    hue = np.where(
        hi == r, ((g - b) / chroma) % 6, np.where(hi == g, (b - r) / chroma + 2, (r - g) / chroma + 4)
    )
    coloured = ((hi - lo) / np.maximum(hi, 1) > 0.35) & (hi > 50)  # backgrounds are greyish
    hue_bins = np.minimum((hue * 4).astype(np.int64), 23)
    hue_hist = np.stack([np.bincount(hue_bins[i][coloured[i]], minlength=24) for i in range(n)]).astype(float)
    hue_hist /= np.maximum(hue_hist.sum(1, keepdims=True), 1)
    q = np.minimum(small // 64, 3).astype(np.int64)
    bins = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(n, -1)
    rgb_hist = np.stack([np.bincount(x, minlength=64) for x in bins]).astype(float) / bins.shape[1]
    return np.concatenate([np.sqrt(hue_hist), 0.5 * np.sqrt(rgb_hist)], axis=1)


def _elongation(image: np.ndarray) -> float:
    """Ratio of the principal axes of the saturated (organism) pixels: a rotation-free shape cue."""
    hi, lo = image.max(-1), image.min(-1)
    ys, xs = np.nonzero(((hi - lo) / np.maximum(hi, 1) > 0.35) & (hi > 50))
    small, large = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
    return float(np.sqrt(large / small))


def test_traits_are_learnable_from_simple_features() -> None:
    cfg = SyntheticConfig(orders_per_class=1, families_per_order=1, genera_per_family=2, species_per_genus=2)
    tree = [sp for sp in build_tree(cfg) if sp.seen]  # 3 kingdoms, 6 phyla, 12 classes, 24 genera

    def draw(split: str, per: int) -> tuple[np.ndarray, list[Taxon]]:
        images, taxa = [], []
        for sp in tree:
            for i in range(per):
                images.append(render(sp.traits, dataset._image_rng(cfg, split, sp.id, i), cfg))
                taxa.append(sp.taxon)
        return np.stack(images).astype(np.float32), taxa

    train_x, train_t = draw("train", 10)
    val_x, val_t = draw("val", 4)
    f_train, f_val = _features(train_x), _features(val_x)
    # Chance: 1/3, 1/6, 1/12. Class rests on pattern and shade, so it is weaker with these features.
    for rank, at_least in (("kingdom", 0.9), ("phylum", 0.9), ("class", 0.5)):
        y_train = np.array([t.rank(rank) for t in train_t])
        y_val = np.array([t.rank(rank) for t in val_t])
        names = sorted(set(y_train))
        centroids = np.stack([f_train[y_train == n].mean(0) for n in names])
        pred = np.array(names)[((f_val[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
        accuracy = float((pred == y_val).mean())
        assert accuracy >= at_least, (rank, accuracy, 1 / len(names))

    # Distances follow the tree: same genus < same kingdom, other genus < other kingdom.
    dist = np.sqrt(((f_val[:, None] - f_val[None]) ** 2).sum(-1))
    genus = np.array([t.genus for t in val_t])
    kingdom = np.array([t.kingdom for t in val_t])
    same_genus = genus[:, None] == genus[None]
    same_kingdom = kingdom[:, None] == kingdom[None]
    off_diagonal = ~np.eye(len(val_t), dtype=bool)
    d_genus = dist[same_genus & off_diagonal].mean()
    d_kingdom = dist[same_kingdom & ~same_genus].mean()
    d_other = dist[~same_kingdom].mean()
    assert d_genus < d_kingdom < d_other, (d_genus, d_kingdom, d_other)

    # The kingdom's shape is there without colour: the elongated kingdom is clearly elongated.
    elongation = defaultdict(list)
    shape_of = {sp.taxon.kingdom: sp.traits.shape for sp in tree}
    for image, taxon in zip(val_x, val_t, strict=True):
        elongation[shape_of[taxon.kingdom]].append(_elongation(image))
    others = [np.mean(v) for shape, v in elongation.items() if shape != "elongated"]
    assert np.mean(elongation["elongated"]) > 1.4 * max(others), elongation


def test_render_is_deterministic_and_varies() -> None:
    cfg = SyntheticConfig()
    sp = build_tree(cfg)[0]
    a = render(sp.traits, dataset._image_rng(cfg, "train", sp.id, 0), cfg)
    b = render(sp.traits, dataset._image_rng(cfg, "train", sp.id, 0), cfg)
    c = render(sp.traits, dataset._image_rng(cfg, "train", sp.id, 1), cfg)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(unseen_per_genus=4)
    with pytest.raises(ValueError):
        SyntheticConfig(kingdoms=8)
    with pytest.raises(ValueError):
        SyntheticConfig(common_name_fraction=1.5)
