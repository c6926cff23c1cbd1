"""Is the image embedding space shaped like the tree of life? Measures on fixed features, no model.

Definitions
-----------
Silhouette per rank
    sklearn's silhouette score (`metric`, cosine by default) of the features labelled by their
    lineage at the rank (`zero_shot.lineage`, so homonyms under different parents stay apart).
    Images whose taxon lacks the rank do not take part. Above `max_samples` images a seeded random
    subset is scored. None when fewer than two groups remain or every group has a single image
    (the score is undefined).
Tree-distance correlation
    Spearman's rho between the cosine distance of two image embeddings and the LCA height of their
    taxa (`hierarchy.lca_height`, 0..7). Every pair of distinct images is used when there are at
    most `max_pairs` of them; otherwise `max_pairs` pairs of distinct images are drawn with a seeded
    generator (with replacement; repeats are rare and do not bias rho). rho > 0 means related taxa
    sit closer together; a tree-shaped space gives rho near 1.
2-D maps
    t-SNE (sklearn) of the L2-normalised features, whose Euclidean distance is a monotone function
    of cosine distance; or UMAP with the cosine metric when `umap-learn` is installed. Plots colour
    each rank's most frequent groups and leave the rest grey.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import silhouette_score

from tolclip.core.taxonomy import RANKS, Taxon, lineage
from tolclip.evaluation.hierarchy import MAX_HEIGHT, lca_height
from tolclip.evaluation.metrics import l2_normalise

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _as_features(features: torch.Tensor | np.ndarray, taxa: Sequence[Taxon] | None = None) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [images, dim]; got shape {features.shape}")
    if taxa is not None and len(taxa) != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {len(taxa)} taxa")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features


def _group_labels(taxa: Sequence[Taxon], rank: str) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Rows whose taxon is known at `rank`, and their lineage keys."""
    rows = [i for i, t in enumerate(taxa) if t.rank(rank)]
    return np.asarray(rows, dtype=np.int64), [lineage(taxa[i], rank) for i in rows]


def silhouette_per_rank(
    features: torch.Tensor | np.ndarray,
    taxa: Sequence[Taxon],
    ranks: Sequence[str] = RANKS,
    metric: str = "cosine",
    max_samples: int = 5000,
    seed: int = 0,
) -> dict[str, float | None]:
    """Silhouette score of the features grouped by lineage at each rank (module doc)."""
    feats = _as_features(features, taxa)
    scores: dict[str, float | None] = {}
    for rank in ranks:
        rows, keys = _group_labels(taxa, rank)
        if len(rows) > max_samples:
            # A fresh generator per rank: a rank's subset does not depend on which ranks came before.
            pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_samples, replace=False))
            rows, keys = rows[pick], [keys[i] for i in pick]
        codes = {k: c for c, k in enumerate(dict.fromkeys(keys))}
        labels = np.asarray([codes[k] for k in keys], dtype=np.int64)
        if len(codes) < 2 or len(codes) == len(labels):
            scores[rank] = None
            continue
        scores[rank] = float(silhouette_score(feats[rows], labels, metric=metric))
    return scores


def _sample_pairs(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, max_pairs)
    j = rng.integers(0, n - 1, max_pairs)
    return i, j + (j >= i)  # skip i itself: j is uniform over the other n - 1 images


def tree_distance_correlation(
    features: torch.Tensor | np.ndarray,
    taxa: Sequence[Taxon],
    max_pairs: int = 20000,
    seed: int = 0,
) -> dict:
    """Spearman correlation of embedding cosine distance with LCA height over image pairs (module doc).

    Returns {"rho", "p_value", "pairs", "mean_distance_by_height"}; rho and p_value are None when
    either side is constant (all pairs at one height, or identical features). The last entry maps
    each LCA height seen to the mean cosine distance of its pairs: it should rise with height.
    The p-value is scipy's, which assumes independent pairs; pairs sharing images are not, so
    read it as indicative only.
    """
    feats = l2_normalise(_as_features(features, taxa))
    if len(taxa) < 2:
        raise ValueError("need at least two images to form a pair")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be positive; got {max_pairs}")
    i, j = _sample_pairs(len(taxa), max_pairs, seed)
    distance = 1.0 - np.einsum("pd,pd->p", feats[i], feats[j])
    height = np.asarray([lca_height(taxa[a], taxa[b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)])
    by_height = {h: float(distance[height == h].mean()) for h in range(MAX_HEIGHT + 1) if (height == h).any()}
    result = {"rho": None, "p_value": None, "pairs": len(i), "mean_distance_by_height": by_height}
    # Constant input makes rho undefined (scipy warns and returns NaN); say so with None instead.
    if np.ptp(height) == 0 or np.ptp(distance) <= 1e-12:
        return result
    from scipy.stats import spearmanr

    rho, p_value = spearmanr(distance, height)
    return result | {"rho": float(rho), "p_value": float(p_value)}


def embed_2d(features: torch.Tensor | np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, 2] coordinates from t-SNE (default) or UMAP; deterministic for a given seed."""
    feats = _as_features(features)
    n = feats.shape[0]
    if n < 3:
        raise ValueError(f"a 2-D map needs at least 3 images; got {n}")
    if method == "tsne":
        from sklearn.manifold import TSNE

        # sklearn requires perplexity < N; a third of N keeps small sets from being one blob.
        perplexity = min(30.0, (n - 1) / 3)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(l2_normalise(feats)).astype(np.float64)
    if method == "umap":
        if importlib.util.find_spec("umap") is None:
            raise ImportError("method='umap' needs the umap-learn package (pip install umap-learn)")
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=seed)
        return np.asarray(reducer.fit_transform(feats), dtype=np.float64)
    raise ValueError(f"unknown method {method!r}; choose 'tsne' or 'umap'")


def _legend_labels(keys: Sequence[tuple[str, ...]]) -> list[str]:
    """The rank's own name, with the parent's added where two coloured groups share a name."""
    counts = Counter(k[-1] for k in keys)
    return [f"{k[-1]} ({k[-2]})" if counts[k[-1]] > 1 and len(k) > 1 else k[-1] for k in keys]


def plot_ranks(
    coords: np.ndarray,
    taxa: Sequence[Taxon],
    out_dir: str | Path,
    ranks: Sequence[str] = RANKS,
    title: str = "",
    max_legend: int = 12,
    prefix: str = "tsne",
) -> list[Path]:
    """One PNG per rank with data (`{prefix}_{rank}.png`), points coloured by group at that rank.

    The `max_legend` most frequent groups get a colour and a legend entry, the others are grey;
    images whose taxon lacks the rank are not drawn. Returns the files written.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != len(taxa):
        raise ValueError(f"coords must be [{len(taxa)} images, 2]; got shape {coords.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = float(np.clip(3000 / max(len(taxa), 1), 2, 30))
    written = []
    for rank in ranks:
        rows, keys = _group_labels(taxa, rank)
        if len(rows) == 0:
            continue
        fig = _rank_figure(coords, rows, keys, f"{title}: {rank}" if title else rank, max_legend, size)
        path = out_dir / f"{prefix}_{rank}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _rank_figure(
    coords: np.ndarray,
    rows: np.ndarray,
    keys: list[tuple[str, ...]],
    heading: str,
    max_legend: int,
    size: float,
) -> Figure:
    """A scatter of the `rows` of `coords`, the `max_legend` most frequent keys in colour, the rest grey."""
    # Figure + the Agg canvas directly: no pyplot, so no display and no global figure state.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = [k for k, _ in Counter(keys).most_common(max_legend)]
    cmap = colormaps["tab20"] if len(top) <= 20 else colormaps["turbo"].resampled(len(top))
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for c, (key, label) in enumerate(zip(top, _legend_labels(top), strict=True)):
        mine = [r for r, k in zip(rows, keys, strict=True) if k == key]
        ax.scatter(
            *coords[mine].T, s=size, color=cmap(c % cmap.N), linewidths=0, label=f"{label} ({len(mine)})"
        )
    top_set = set(top)
    rest = [r for r, k in zip(rows, keys, strict=True) if k not in top_set]
    if rest:  # grey underneath the coloured groups, last in the legend
        n_other = len(set(keys) - top_set)
        ax.scatter(
            *coords[rest].T,
            s=size,
            c="lightgrey",
            linewidths=0,
            zorder=0.5,
            label=f"other ({n_other} groups)",
        )
    ax.set_title(heading)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=max(1, 20 / size))
    return fig
