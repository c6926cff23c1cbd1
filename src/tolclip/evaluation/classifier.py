"""Accuracy of a species classifier at every rank: the supervised baseline's own measure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from tolclip.core.taxonomy import RANKS, SpeciesKey, lineage
from tolclip.evaluation.zero_shot import RankResult


@torch.no_grad()
def evaluate_classifier(
    net: torch.nn.Module, species_classes: Sequence[SpeciesKey], loaders: Mapping[str, Iterable[dict]], ranks: Sequence[str] = RANKS
) -> list[RankResult]:
    """Top-1/top-5 of the species head at every rank, for each named evaluation loader.

    A rank's classes are the training species' lineages cut at that rank, scored by summing the
    softmax over their species. Images whose class at a rank is not among them (an unseen species,
    say, at the species rank) are left out there: `images` counts those that take part.
    """
    index: dict[str, dict[SpeciesKey, int]] = {r: {} for r in ranks}  # rank -> {lineage prefix: class}
    groups: dict[str, torch.Tensor] = {}  # rank -> the class index of each species
    for r in ranks:
        keys = [c[: RANKS.index(r) + 1] for c in species_classes]
        groups[r] = torch.tensor([index[r].setdefault(k, len(index[r])) for k in keys])
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    results = []
    try:
        for name, loader in loaders.items():
            hits = {r: torch.zeros(2) for r in ranks}  # top-1, top-5 hits
            counts = dict.fromkeys(ranks, 0)
            for batch in loader:
                probs = net(batch["image"].to(device)).float().softmax(-1).cpu()
                for r in ranks:
                    labels = torch.tensor([index[r].get(lineage(t, r), -1) for t in batch["taxon"]])
                    rows = labels >= 0
                    if not rows.any():
                        continue
                    scores = probs[rows]
                    if r != RANKS[-1]:  # species are the classes themselves; coarser ranks sum them
                        scores = torch.zeros(len(scores), len(index[r])).index_add_(1, groups[r], scores)
                    top = scores.topk(min(5, scores.shape[1]), dim=-1).indices == labels[rows, None]
                    hits[r] += torch.stack([top[:, 0].sum(), top.any(-1).sum()]).float()
                    counts[r] += int(rows.sum())
            for r in ranks:
                if counts[r] and len(index[r]) >= 2:
                    top1, top5 = (hits[r] / counts[r]).tolist()
                    results.append(RankResult("classifier", name, r, counts[r], len(index[r]), top1, top5))
    finally:
        net.train(was_training)
    return results
