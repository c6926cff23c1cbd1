"""Rank grouping: summing species probabilities into a coarser rank, tolclip vs pybioclip, side by side.

pybioclip's ``TreeOfLifeClassifier.format_grouped_probs`` loops over the species above ``min_prob`` in
Python for each image (pybioclip issue #147); tolclip sums every image of a batch in one ``index_add``
(``TreeOfLifeClassifier._rank_top``). Both run here on the same probabilities over a synthetic tree of
``--species`` species (no model: the grouping step alone), and their top-k answers are checked equal.

    python scripts/bench_rank_grouping.py --species 100000 --images 20 --rank genus
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from tolclip.core.taxonomy import RANKS, Taxon
from tolclip.prediction.classify import TreeOfLifeClassifier
from tolclip.prediction.index import LabelIndex


def synthetic_taxa(n: int, per_genus: int = 8, per_family: int = 10) -> list[Taxon]:
    genera = [f"Genus{g}" for g in range((n + per_genus - 1) // per_genus)]
    return [
        Taxon(
            "Animalia",
            "Chordata",
            "Aves",
            f"Order{g // (per_family * 20)}",
            f"Family{g // per_family}",
            genera[g],
            f"epithet{i}",
            "",
        )
        for i in range(n)
        for g in [i // per_genus]
    ]


def ours(taxa: list[Taxon], probs: torch.Tensor, rank: str, k: int, min_prob: float) -> tuple[float, list]:
    clf = object.__new__(TreeOfLifeClassifier)  # the grouping needs only the index, not a model
    clf.index = LabelIndex(torch.empty(len(taxa), 1), "taxa", [""] * len(taxa), taxa)
    clf._groups = {}
    start = time.perf_counter()  # the first call also numbers the groups (once per rank and index)
    named, values, indices = clf._rank_top(probs, rank, k, min_prob)
    answers = [[named[j].rank(rank) for j in row] for row in indices.tolist()]
    return time.perf_counter() - start, answers


def theirs(taxa: list[Taxon], probs: torch.Tensor, rank: str, k: int, min_prob: float) -> tuple[float, list]:
    import bioclip.predict as bp
    from bioclip._constants import Rank

    clf = object.__new__(bp.TreeOfLifeClassifier)  # its txt_names layout: [[ranks..., epithet], common]
    clf.txt_names = [[[*t.ranks[:-1], t.species], t.common] for t in taxa]
    clf._subset_txt_names = None
    start = time.perf_counter()
    rows = [clf.format_grouped_probs(str(i), p, Rank[rank.upper()], min_prob, k) for i, p in enumerate(probs)]
    answers = [[r[rank] for r in image_rows] for image_rows in rows]
    return time.perf_counter() - start, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rank", default="genus", choices=RANKS[:-1])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--min-prob", type=float, default=1e-9)
    args = parser.parse_args()
    taxa = synthetic_taxa(args.species)
    gen = torch.Generator().manual_seed(0)
    # Peaked like a real prediction: a few hundred species carry most of the mass, the rest is tiny.
    logits = torch.randn(args.images, args.species, generator=gen) * 4.0
    probs = torch.softmax(logits, dim=1)
    above = int((probs > args.min_prob).sum()) / args.images
    t_ours, a_ours = ours(taxa, probs, args.rank, args.k, args.min_prob)
    t_theirs, a_theirs = theirs(taxa, probs, args.rank, args.k, args.min_prob)
    if a_ours != a_theirs:
        print("bench_rank_grouping: the two disagree on the top names", file=sys.stderr)
        return 1
    print(
        f"{args.images} images x {args.species} species -> {args.rank}, top-{args.k}, min_prob {args.min_prob}"
    )
    print(f"  species above min_prob per image: {above:.0f}; answers identical")
    print(f"  tolclip   {t_ours * 1000:9.1f} ms  ({t_ours / args.images * 1000:.2f} ms/image)")
    print(f"  pybioclip {t_theirs * 1000:9.1f} ms  ({t_theirs / args.images * 1000:.2f} ms/image)")
    print(f"  ratio {t_theirs / t_ours:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
