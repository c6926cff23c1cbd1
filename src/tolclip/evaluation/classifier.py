"""Accuracy of a species classifier at every rank: the supervised baseline's own measure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from tolclip.core.taxonomy import RANKS, SpeciesKey, lineage
from tolclip.evaluation.metrics import group_index, sum_into_groups, top_k_hits
from tolclip.evaluation.zero_shot import RankResult


@torch.no_grad()
def evaluate_classifier(
    net: torch.nn.Module,
    species_classes: Sequence[SpeciesKey],
    loaders: Mapping[str, Iterable[dict]],
    ranks: Sequence[str] = RANKS,
) -> list[RankResult]:
    """Top-1/top-5 of the species head at every rank, for each named evaluation loader.

    A rank's classes are the training species' lineages cut at that rank, scored by summing the
    softmax over their species. Images whose class at a rank is not among them (an unseen species,
    say, at the species rank) are left out there: `images` counts those that take part.
    """
    # rank -> ({lineage prefix: class}, the class of each species)
    groups = {r: group_index([c[: RANKS.index(r) + 1] for c in species_classes]) for r in ranks}
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
                    index, group = groups[r]
                    labels = torch.tensor([index.get(lineage(t, r), -1) for t in batch["taxon"]])
                    rows = labels >= 0
                    if not rows.any():
                        continue
                    scores = probs[rows]
                    if r != RANKS[-1]:  # species are the classes themselves; coarser ranks sum them
                        scores = sum_into_groups(scores, group, len(index))
                    hits[r] += top_k_hits(scores, labels[rows])
                    counts[r] += int(rows.sum())
            for r in ranks:
                classes = len(groups[r][0])
                if counts[r] and classes >= 2:
                    top1, top5 = (hits[r] / counts[r]).tolist()
                    results.append(RankResult("classifier", name, r, counts[r], classes, top1, top5))
    finally:
        net.train(was_training)
    return results
