import importlib.util
from itertools import product

import numpy as np
import pytest
import torch

from tolclip.core.taxonomy import RANKS, Taxon, lineage
from tolclip.evaluation.intrinsic import (
    PNG_SIGNATURE,
    embed_2d,
    plot_ranks,
    silhouette_per_rank,
    tree_distance_correlation,
)

DIM = 32


def tree_taxa(branching: int = 2, per_species: int = 2) -> list[Taxon]:
    """`branching` children at every rank: branching**7 species, `per_species` images each."""
    taxa = []
    for path in product(range(branching), repeat=len(RANKS)):
        names = [f"{r[:2].upper()}{'-'.join(map(str, path[: d + 1]))}" for d, r in enumerate(RANKS)]
        names[-1] = names[-1].lower()
        taxa += [Taxon(*names)] * per_species
    return taxa


def hierarchical_features(taxa: list[Taxon], seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Each lineage at each rank adds one random offset shared by all its descendants, plus noise."""
    rng = np.random.default_rng(seed)
    offsets: dict[tuple[str, ...], np.ndarray] = {}
    rows = []
    for t in taxa:
        v = sum(offsets.setdefault(lineage(t, r), rng.standard_normal(DIM)) for r in RANKS)
        rows.append(v + noise * rng.standard_normal(DIM))
    return np.stack(rows)


TAXA = tree_taxa()  # 128 species, 256 images


def test_tree_distance_correlation_follows_the_tree():
    tree = tree_distance_correlation(hierarchical_features(TAXA), TAXA, max_pairs=5000)
    assert tree["pairs"] == 5000
    assert tree["rho"] > 0.5 and tree["p_value"] < 1e-6
    means = [tree["mean_distance_by_height"][h] for h in sorted(tree["mean_distance_by_height"])]
    assert means == sorted(means)  # closer relatives, closer embeddings
    noise = tree_distance_correlation(np.random.default_rng(1).standard_normal((len(TAXA), DIM)), TAXA, 5000)
    assert abs(noise["rho"]) < 0.1


def test_tree_distance_correlation_pairs_and_determinism():
    feats = torch.from_numpy(hierarchical_features(TAXA[:10]))
    every = tree_distance_correlation(feats, TAXA[:10])
    assert every["pairs"] == 10 * 9 // 2  # all distinct pairs when they fit
    assert every == tree_distance_correlation(feats.numpy(), TAXA[:10])  # torch or numpy
    feats = hierarchical_features(TAXA)
    a = tree_distance_correlation(feats, TAXA, max_pairs=300, seed=3)
    assert a == tree_distance_correlation(feats, TAXA, max_pairs=300, seed=3)
    assert a != tree_distance_correlation(feats, TAXA, max_pairs=300, seed=4)
    # two images of one species only: a single height, rho undefined
    flat = tree_distance_correlation(np.eye(3), TAXA[:2] + TAXA[:1])
    assert flat["rho"] is None and flat["pairs"] == 3
    with pytest.raises(ValueError, match="taxa"):
        tree_distance_correlation(np.eye(3), TAXA[:2])


def genus_clusters(seed: int = 0) -> tuple[np.ndarray, list[Taxon]]:
    taxa = tree_taxa(per_species=3)[:96]  # 32 species in 16 genera, 6 images per genus
    rng = np.random.default_rng(seed)
    centres = {}
    feats = [centres.setdefault(lineage(t, "genus"), rng.standard_normal(DIM)) for t in taxa]
    return np.stack(feats) + 0.2 * rng.standard_normal((len(taxa), DIM)), taxa


def test_silhouette_higher_when_clustered_by_genus():
    feats, taxa = genus_clusters()
    shuffled = feats[np.random.default_rng(5).permutation(len(feats))]
    clustered = silhouette_per_rank(feats, taxa, ranks=("genus",))["genus"]
    assert clustered > 0.5
    assert clustered > silhouette_per_rank(shuffled, taxa, ranks=("genus",))["genus"] + 0.4


def test_silhouette_none_cases_and_missing_ranks():
    feats, taxa = genus_clusters()
    scores = silhouette_per_rank(torch.from_numpy(feats), taxa)
    assert set(scores) == set(RANKS)
    assert scores["kingdom"] is None  # all 96 images in kingdom KI0: one group
    assert scores["genus"] is not None
    one_each = silhouette_per_rank(feats[::3], taxa[::3], ranks=("species",))  # 32 species, one image each
    assert one_each["species"] is None
    no_species = [Taxon(*t.ranks[:-1]) for t in taxa]
    assert silhouette_per_rank(feats, no_species, ranks=("species",))["species"] is None


def test_silhouette_subsamples_deterministically():
    feats, taxa = genus_clusters()
    a = silhouette_per_rank(feats, taxa, ranks=("genus", "family"), max_samples=40, seed=1)
    b = silhouette_per_rank(feats, taxa, ranks=("family", "genus"), max_samples=40, seed=1)
    assert a == b and a["genus"] is not None
    assert a["genus"] != silhouette_per_rank(feats, taxa, ranks=("genus",))["genus"]  # a real subset


def test_embed_2d_shape_and_determinism():
    feats = hierarchical_features(TAXA[:40])
    coords = embed_2d(feats, seed=0)
    assert coords.shape == (40, 2) and np.isfinite(coords).all()
    np.testing.assert_array_equal(coords, embed_2d(torch.from_numpy(feats), seed=0))
    assert embed_2d(feats[:5]).shape == (5, 2)  # perplexity clipped below N
    with pytest.raises(ValueError, match="unknown method"):
        embed_2d(feats, method="pca")


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed")
def test_embed_2d_umap_missing_is_a_clear_error():
    with pytest.raises(ImportError, match="umap-learn"):
        embed_2d(np.eye(5), method="umap")


def test_plot_ranks_writes_pngs(tmp_path):
    taxa = [Taxon(*t.ranks[:-1]) for t in TAXA[:64]]  # no species known: six ranks have data
    coords = np.random.default_rng(0).standard_normal((len(taxa), 2))
    files = plot_ranks(coords, taxa, tmp_path / "maps", title="synthetic", max_legend=4, prefix="map")
    assert [f.name for f in files] == [f"map_{r}.png" for r in RANKS[:-1]]
    for f in files:
        assert f.read_bytes()[:8] == PNG_SIGNATURE and f.stat().st_size > 1000
    with pytest.raises(ValueError, match="coords"):
        plot_ranks(coords[:3], taxa, tmp_path)
