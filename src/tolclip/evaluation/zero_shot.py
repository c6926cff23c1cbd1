"""Zero-shot classification at every taxonomic rank, for seen and unseen species.

A class is a lineage cut at a rank (two genera with the same name in different families are two
classes). Its text embedding is the mean of the normalised embeddings of its name in every prompt
template, renormalised, as in CLIP. The classes of a rank are the union over all evaluation sets,
so seen and unseen species compete with each other, as they would in the field.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tolclip.core.captions import check_text_type, rank_name
from tolclip.core.taxonomy import RANKS, Taxon, lineage, rank_classes
from tolclip.core.templates import OPENAI_IMAGENET_TEMPLATES
from tolclip.core.tokenizer import get_tokenizer
from tolclip.evaluation.metrics import top_k_accuracy

log = logging.getLogger(__name__)

# Prompts tokenised at a time when building class embeddings (x 77 int64 tokens: about 40 MB).
TOKENIZE_CHUNK = 65536


@torch.no_grad()
def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[C, D] class embeddings: per class, the renormalised mean over templates.

    Prompts are encoded in order of token length, so each batch is cut at its own longest prompt (the
    text tower drops positions after the batch's last end-of-text token, which cannot change the pooled
    output under causal attention). ``progress(n)`` is told of every ``n`` classes done.
    """
    device = next(model.parameters()).device
    per_chunk = max(1, TOKENIZE_CHUNK // max(1, len(templates)))  # bounds the token tensor's memory
    out = []
    for start in range(0, len(class_names), per_chunk):
        names = class_names[start : start + per_chunk]
        tokens = tokenizer([t.format(n) for n in names for t in templates])
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)
        emb = torch.empty(len(tokens), 0)
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            chunk = model.encode_text(tokens[rows].to(device), normalize=True).float().cpu()
            if emb.shape[1] == 0:
                emb = torch.empty(len(tokens), chunk.shape[1])
            emb[rows] = chunk
        out.append(emb.view(len(names), len(templates), -1).mean(dim=1))
        if progress is not None:
            progress(len(names))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1).to(device)


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader) -> tuple[torch.Tensor, list[Taxon]]:
    """Normalised image features and taxa for every image an evaluation loader yields."""
    device = next(model.parameters()).device
    feats, taxa = [], []
    for batch in loader:
        feats.append(model.encode_image(batch["image"].to(device), normalize=True).float().cpu())
        taxa.extend(batch["taxon"])
    if not feats:
        raise ValueError("the evaluation set yielded no readable images")
    return torch.cat(feats), taxa


@dataclass
class RankResult:
    text_type: str
    eval_set: str
    rank: str
    images: int
    classes: int
    top1: float
    top5: float

    @property
    def chance(self) -> float:
        return 1.0 / self.classes


def evaluate_ranks(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    features: Mapping[str, tuple[torch.Tensor, list[Taxon]]],
    text_type: str = "taxon",
    templates: Sequence[str] = OPENAI_IMAGENET_TEMPLATES,
    ranks: Sequence[str] = RANKS,
) -> list[RankResult]:
    """Top-1/top-5 at each rank for each named feature set, classes shared across the sets."""
    check_text_type(text_type, allow_mixed=False)
    all_taxa = [t for _, taxa in features.values() for t in taxa]
    results = []
    for rank in ranks:
        classes = rank_classes(all_taxa, rank)
        if len(classes) < 2:
            continue
        keys = list(classes)
        index = {k: i for i, k in enumerate(keys)}
        names = [rank_name(classes[k], rank, text_type) for k in keys]
        weights = text_classifier(model, tokenizer, names, templates).cpu()
        for set_name, (feats, taxa) in features.items():
            rows = [i for i, t in enumerate(taxa) if lineage(t, rank) in index]
            if not rows:
                continue
            labels = torch.tensor([index[lineage(taxa[i], rank)] for i in rows])
            top1, top5 = top_k_accuracy(feats[rows] @ weights.T, labels)
            results.append(RankResult(text_type, set_name, rank, len(rows), len(keys), top1, top5))
    return results


def results_table(results: Sequence[RankResult], title: str = "zero-shot accuracy"):
    """A rich table: one row per rank, top-1/top-5 and chance per evaluation set."""
    from rich.table import Table

    sets = list(dict.fromkeys(r.eval_set for r in results))
    table = Table(title=title)
    table.add_column("rank")
    table.add_column("classes", justify="right")
    for s in sets:
        table.add_column(f"{s} top-1", justify="right")
        table.add_column(f"{s} top-5", justify="right")
    table.add_column("chance top-1", justify="right")
    by_key = {(r.eval_set, r.rank): r for r in results}
    for rank in dict.fromkeys(r.rank for r in results):
        any_r = next(r for r in results if r.rank == rank)
        cells = [rank, str(any_r.classes)]
        for s in sets:
            r = by_key.get((s, rank))
            cells += [f"{100 * r.top1:.1f}", f"{100 * r.top5:.1f}"] if r else ["-", "-"]
        cells.append(f"{100 * any_r.chance:.1f}")
        table.add_row(*cells)
    return table


# One result as a table row (zero_shot.csv, the dashboard's table), after any constant columns.
RESULT_COLUMNS = ["text_type", "eval_set", "rank", "images", "classes", "top1", "top5", "chance"]


def result_row(r: RankResult) -> list[str | int | float]:
    """The values of `RESULT_COLUMNS` for one result."""
    return [r.text_type, r.eval_set, r.rank, r.images, r.classes, r.top1, r.top5, r.chance]


def rank_metrics(results: Sequence[RankResult], prefix: str, by_text_type: bool = True) -> dict[str, float]:
    """The logged names of results: `{prefix}/{text type}/{set}/{rank}/top1|top5` (the supervised
    baseline, without text: `{prefix}/{set}/{rank}/...`)."""
    metrics: dict[str, float] = {}
    for r in results:
        name = (
            f"{prefix}/{r.text_type}/{r.eval_set}/{r.rank}"
            if by_text_type
            else f"{prefix}/{r.eval_set}/{r.rank}"
        )
        metrics |= {f"{name}/top1": float(r.top1), f"{name}/top5": float(r.top5)}
    return metrics


def write_csv(results: Sequence[RankResult], path: str | Path, **extra: str) -> Path:
    """CSV with one row per (text type, set, rank), plus constant `extra` columns (e.g. the run's
    training text type)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*extra, *RESULT_COLUMNS])
        for r in results:
            row = [f"{v:.4f}" if isinstance(v, float) else v for v in result_row(r)]
            writer.writerow([*extra.values(), *row])
    return path


def evaluate_datamodule(
    net: torch.nn.Module,
    datamodule,
    text_types: Sequence[str] = ("taxon",),
    templates: Sequence[str] = OPENAI_IMAGENET_TEMPLATES,
    ranks: Sequence[str] = RANKS,
    context_length: int = 77,
) -> list[RankResult]:
    """Zero-shot results of `net` on every eval set of a `ShardDataModule`, for each text type.

    Image features are extracted once per set and shared by all text types.
    """
    was_training = net.training
    net.eval()
    try:
        feats = {
            name: extract_features(net, datamodule.eval_dataloader(name)) for name in datamodule.eval_sets
        }
        tokenizer = get_tokenizer(context_length)
        return [r for t in text_types for r in evaluate_ranks(net, tokenizer, feats, t, templates, ranks)]
    finally:
        net.train(was_training)


def print_results(results: Sequence[RankResult]) -> None:
    """One rich table per text type, on the console."""
    from rich.console import Console

    console = Console()
    for text_type in dict.fromkeys(r.text_type for r in results):
        rows = [r for r in results if r.text_type == text_type]
        console.print(results_table(rows, f"zero-shot accuracy, class names as '{text_type}'"))
