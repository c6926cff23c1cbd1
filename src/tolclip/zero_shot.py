"""Zero-shot classification at every taxonomic rank, for seen and unseen species.

A class is a lineage cut at a rank (two genera with the same name in different families are two
classes). Its text embedding is the mean of the normalised embeddings of its name in every prompt
template, renormalised, as in CLIP. The classes of a rank are the union over all evaluation sets,
so seen and unseen species compete with each other, as they would in the field.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tolclip.captions import check_text_type, rank_name
from tolclip.taxonomy import RANKS, Taxon
from tolclip.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

# The 80 prompt templates OpenAI used for ImageNet zero-shot; BioCLIP evaluates with the same.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "single": ("a photo of {}.",),  # fast mode for validation during training
}


def templates_for(name: str) -> tuple[str, ...]:
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown template set {name!r}; choose one of {sorted(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]


def lineage(taxon: Taxon, rank: str) -> tuple[str, ...]:
    """The class key of a taxon at a rank: its names from kingdom down to that rank."""
    return taxon.ranks[: RANKS.index(rank) + 1]


def rank_classes(taxa: Iterable[Taxon], rank: str) -> dict[tuple[str, ...], Taxon]:
    """The classes at a rank: each distinct lineage down to it, with its first taxon (for naming).

    Taxa not identified to the rank do not take part at it.
    """
    classes: dict[tuple[str, ...], Taxon] = {}
    for taxon in taxa:
        key = lineage(taxon, rank)
        if key[-1]:
            classes.setdefault(key, taxon)
    return classes


@torch.no_grad()
def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 512,
) -> torch.Tensor:
    """[C, D] class embeddings: per class, the renormalised mean over templates."""
    device = next(model.parameters()).device
    prompts = [t.format(n) for n in class_names for t in templates]
    chunks = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[i : i + batch_size]).to(device)
        chunks.append(model.encode_text(tokens, normalize=True).float())
    emb = torch.cat(chunks).view(len(class_names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


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
            logits = feats[rows] @ weights.T
            topk = logits.topk(min(5, len(keys)), dim=-1).indices
            hits = topk == labels[:, None]
            results.append(
                RankResult(
                    text_type=text_type,
                    eval_set=set_name,
                    rank=rank,
                    images=len(rows),
                    classes=len(keys),
                    top1=hits[:, 0].float().mean().item(),
                    top5=hits.any(dim=-1).float().mean().item(),
                )
            )
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


def write_csv(results: Sequence[RankResult], path: str | Path, **extra: str) -> Path:
    """CSV with one row per (text type, set, rank), plus constant `extra` columns (e.g. the run's
    training text type)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [*extra, "text_type", "eval_set", "rank", "images", "classes", "top1", "top5", "chance"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow(
                {**extra, "text_type": r.text_type, "eval_set": r.eval_set, "rank": r.rank, "images": r.images, "classes": r.classes,
                 "top1": f"{r.top1:.4f}", "top5": f"{r.top5:.4f}", "chance": f"{r.chance:.4f}"}
            )
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
        feats = {name: extract_features(net, datamodule.eval_dataloader(name)) for name in datamodule.eval_sets}
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


class ZeroShotEvaluation(Callback):
    """Runs `evaluate_ranks` on the DataModule's eval sets every N steps and when training ends.

    Evaluation runs on global rank 0 alone (eval sets are small next to training) while the
    other ranks wait at a barrier; metrics go to the logger as `zeroshot/{set}/{rank}/top1`.
    """

    def __init__(
        self,
        text_types: Sequence[str] = ("taxon",),
        templates: str = "openai",
        every_n_steps: int = 0,
        step_templates: str = "single",
        ranks: Sequence[str] = RANKS,
        output_csv: str | None = "zero_shot.csv",
        context_length: int = 77,
    ):
        super().__init__()
        self.text_types = tuple(check_text_type(t, allow_mixed=False) for t in text_types)
        self.templates = templates_for(templates)
        self.step_templates = templates_for(step_templates)
        self.every_n_steps = every_n_steps
        self.ranks = tuple(ranks)
        self.output_csv = output_csv
        self.context_length = context_length
        self.results: list[RankResult] = []

    def run(self, trainer, pl_module, templates: Sequence[str], prefix: str) -> list[RankResult]:
        dm = trainer.datamodule
        results: list[RankResult] = []
        if trainer.is_global_zero and dm.eval_sets:
            results = evaluate_datamodule(pl_module.net, dm, self.text_types, templates, self.ranks, self.context_length)
            metrics = {f"{prefix}/{r.text_type}/{r.eval_set}/{r.rank}/top1": r.top1 for r in results}
            metrics |= {f"{prefix}/{r.text_type}/{r.eval_set}/{r.rank}/top5": r.top5 for r in results}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        trainer.strategy.barrier()
        return results

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self.run(trainer, pl_module, self.step_templates, "val_zeroshot")

    def on_train_end(self, trainer, pl_module) -> None:
        self.results = self.run(trainer, pl_module, self.templates, "zeroshot")
        if trainer.is_global_zero and self.results:
            print_results(self.results)
            if self.output_csv:
                train_type = getattr(trainer.datamodule, "text_type", "")
                path = write_csv(self.results, Path(trainer.default_root_dir) / self.output_csv, train_text_type=train_type)
                log.info("zero-shot results written to %s", path)
