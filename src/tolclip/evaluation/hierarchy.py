"""Rank-level evaluation of a species classifier, and how far up the tree its mistakes go.

All measures work on fixed inputs (probabilities, predicted taxa); no model is involved.

Definitions
-----------
LCA height
    For two taxa, walk the ranks from kingdom down while their lineages (`zero_shot.lineage`, the
    class keys of every rank) are equal. The lowest common ancestor (LCA) is the deepest rank
    reached whose name is known, and the height is the number of ranks from species up to it:
    0 same species, 1 same genus, 2 same family, ..., 6 same kingdom, 7 nothing shared.
    Missing ranks count as lineages do: a rank missing in both taxa does not break the walk (the
    keys below it can still be equal), a rank missing in one only does (the keys differ), and a
    missing name is never itself a common ancestor. So two records known only to genus Corvus
    are at height 1, never 0: that they are the same species is not known.
Summed rank prediction
    Probabilities of species classes summed within each lineage at a coarser rank, as pybioclip
    does: P(genus g) = sum of P(s) over the classes s in g. It needs probabilities (softmax),
    not logits.
Summed rank accuracy
    Top-1/top-5 of the summed prediction against the true lineage at each rank. As in
    `zero_shot.evaluate_ranks`, images whose true taxon lacks the rank do not take part at it,
    top-5 is top-min(5, groups), and ranks with fewer than two groups are left out.
Mistake severity
    Over images whose true taxon is known to species, the LCA height between predicted and true
    taxon: its mean over mistakes (height > 0; Bertinetto et al. 2020, "Making Better Mistakes"),
    its mean over all predictions, and its histogram.
Rank consistency
    With one prediction per rank from prompting each rank's names directly, the fraction of images
    whose predicted lineages nest: each finer prediction extends the coarser ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import torch

from tolclip.core.taxonomy import RANKS, Taxon, lineage
from tolclip.evaluation.metrics import group_index, sum_into_groups, top_k_accuracy

MAX_HEIGHT = len(RANKS)  # nothing in common, not even the kingdom


def lca_height(a: Taxon, b: Taxon) -> int:
    """Ranks from species up to the lowest common ancestor of `a` and `b` (0..7, see module doc)."""
    deepest = -1
    # Equal names at every rank so far <=> equal lineage keys, so one pass over names suffices.
    for depth, (x, y) in enumerate(zip(a.ranks, b.ranks, strict=True)):
        if x != y:
            break
        if x:
            deepest = depth
    return len(RANKS) - 1 - deepest


def _as_probs(probs: torch.Tensor | np.ndarray, n_classes: int) -> torch.Tensor:
    probs = torch.as_tensor(probs).detach().cpu()
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must be [images, {n_classes} classes]; got shape {tuple(probs.shape)}")
    return probs if probs.is_floating_point() else probs.float()


def summed_rank_predictions(
    probs: torch.Tensor | np.ndarray, classes: Sequence[Taxon], rank: str
) -> tuple[list[tuple[str, ...]], torch.Tensor]:
    """Group keys (lineages at `rank`, in order of first appearance in `classes`) and [N, G] summed probs.

    Classes whose name at `rank` is unknown keep a group of their own (its key ends in ""), so
    every row keeps its total; such a group can never be a right answer.
    """
    if rank not in RANKS:
        raise ValueError(f"unknown rank {rank!r}; expected one of {list(RANKS)}")
    probs = _as_probs(probs, len(classes))
    keys, group = group_index([lineage(t, rank) for t in classes])
    return list(keys), sum_into_groups(probs, group, len(keys))


def summed_rank_accuracy(
    probs: torch.Tensor | np.ndarray,
    classes: Sequence[Taxon],
    true_taxa: Sequence[Taxon],
    ranks: Sequence[str] = RANKS,
) -> dict[str, dict]:
    """Per rank: {"top1", "top5", "images", "groups", "absent"} of the summed prediction.

    `absent` counts the scored images whose true lineage is not among the classes' groups (an
    open-set image): they take part and can only be wrong.
    """
    probs = _as_probs(probs, len(classes))
    if probs.shape[0] != len(true_taxa):
        raise ValueError(f"{probs.shape[0]} rows of probs but {len(true_taxa)} true taxa")
    results: dict[str, dict] = {}
    for rank in ranks:
        keys, summed = summed_rank_predictions(probs, classes, rank)
        rows = [i for i, t in enumerate(true_taxa) if t.rank(rank)]
        if len(keys) < 2 or not rows:
            continue
        index = {k: g for g, k in enumerate(keys)}
        # -1 never matches a predicted group index.
        labels = torch.tensor([index.get(lineage(true_taxa[i], rank), -1) for i in rows])
        top1, top5 = top_k_accuracy(summed[rows], labels)
        results[rank] = {
            "top1": top1,
            "top5": top5,
            "images": len(rows),
            "groups": len(keys),
            "absent": int((labels < 0).sum()),
        }
    return results


def mistake_severity(pred: Sequence[Taxon], true: Sequence[Taxon]) -> dict:
    """LCA heights of predictions against truth (module doc).

    Returns {"images", "skipped", "mistakes", "mean_mistake_height", "mean_height", "histogram"}:
    `skipped` images have a true taxon not known to species; means are None when there is nothing
    to average; `histogram[h]` is the number of scored predictions at height h (0..7).
    """
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions but {len(true)} true taxa")
    heights = [lca_height(p, t) for p, t in zip(pred, true, strict=True) if t.species]
    wrong = [h for h in heights if h > 0]
    histogram = [0] * (MAX_HEIGHT + 1)
    for h in heights:
        histogram[h] += 1
    return {
        "images": len(heights),
        "skipped": len(true) - len(heights),
        "mistakes": len(wrong),
        "mean_mistake_height": sum(wrong) / len(wrong) if wrong else None,
        "mean_height": sum(heights) / len(heights) if heights else None,
        "histogram": histogram,
    }


def rank_consistency(pred_lineages: Mapping[str, Sequence[tuple[str, ...] | None]]) -> float:
    """Fraction of images whose per-rank predicted lineages nest (module doc).

    `pred_lineages[rank][i]` is image i's predicted lineage (kingdom..rank) when prompting that
    rank's names; None where the image was not classified at that rank (it is then checked on the
    ranks it has). Ranks may be given in any order; one rank alone is trivially consistent.
    """
    if not pred_lineages:
        raise ValueError("no ranks given")
    unknown = set(pred_lineages) - set(RANKS)
    if unknown:
        raise ValueError(f"unknown ranks {sorted(unknown)}; expected some of {list(RANKS)}")
    ranks = sorted(pred_lineages, key=RANKS.index)
    sizes = {len(pred_lineages[r]) for r in ranks}
    if len(sizes) != 1:
        raise ValueError(f"every rank needs one prediction per image; got lengths {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("no predictions to compare")
    consistent = 0
    for i in range(n):
        chain = []
        for r in ranks:
            pred = pred_lineages[r][i]
            if pred is None:
                continue
            if isinstance(pred, str) or len(pred) != RANKS.index(r) + 1:
                raise ValueError(f"image {i} at {r}: expected a lineage tuple kingdom..{r}, got {pred!r}")
            chain.append(tuple(pred))
        # Prefix order is transitive, so neighbouring ranks are enough.
        consistent += all(fine[: len(coarse)] == coarse for coarse, fine in pairwise(chain))
    return consistent / n
