"""The measures every evaluation shares: top-k accuracy, class probabilities summed into coarser
groups, and row-wise L2 normalisation. Written once so zero-shot, the suite, the rank-level
measures and the classifier baseline count the same way."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

NORM_EPS = 1e-12


def top_k_hits(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """[len(ks)] float counts of rows whose label is among their top-min(k, classes) scores.

    One topk for the largest k serves every k. A label of -1 (a class that is not scored) never hits.
    """
    top = scores.topk(min(max(ks), scores.shape[1]), dim=-1).indices == labels[:, None]
    return torch.stack([top[:, :k].any(dim=-1).sum() for k in ks]).float()


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Fraction of rows whose label is among their top-min(k, classes) scores, for each k."""
    return (top_k_hits(scores, labels, ks) / len(labels)).tolist()


def group_index(keys: Sequence[Hashable]) -> tuple[dict[Hashable, int], torch.Tensor]:
    """Distinct keys numbered in order of first appearance, and the number of every key."""
    index: dict[Hashable, int] = {}
    return index, torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)


def sum_into_groups(probs: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, groups]: each row's class probabilities summed within groups (`group[c]` is class c's).

    As pybioclip predicts a genus: P(genus g) = sum of P(s) over its species s.
    """
    return probs.new_zeros(probs.shape[0], groups).index_add_(1, group, probs)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm; a row of norm below NORM_EPS is left as it is."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row (e.g. a feature equal to the support mean) has no direction: leave it at zero.
    return x / np.where(norm < NORM_EPS, 1.0, norm)
