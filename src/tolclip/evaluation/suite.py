"""The benchmark suite: one model on one task, every measure of the BioCLIP paper and a few more.

`tolclip eval-suite suite/model=NAME suite/task=NAME` (Hydra; configs/eval_suite.yaml) writes
`results.json` (and t-SNE PNGs, a per-class CSV) into its run folder; `make eval-suite` sweeps
models × tasks as a multirun and `tolclip report --suite DIR` turns the folders into the
paper-shaped table. Per model × task:

* zero-shot: the 80 OpenAI templates, top-1 / top-5 and mean per-class accuracy (class-text
  embeddings cached);
* few-shot: SimpleShot (CL2N + nearest centroid), k = 1 and 5 over 5 folds, and a linear probe;
* rank-level (tasks whose classes have taxa): accuracy at every rank by summing species
  probabilities and by prompting the rank names directly, mistake severity, rank consistency;
* intrinsic: silhouette per rank, tree-distance correlation, t-SNE maps coloured by rank.

Image features are extracted once per model × task and cached (`features.py`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tolclip.core.captions import rank_name
from tolclip.core.hashing import fingerprint
from tolclip.core.taxonomy import RANKS, Taxon, lineage, rank_classes
from tolclip.core.templates import templates_for
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.transforms import Preprocess
from tolclip.evaluation.features import FeatureCache, extract_image_features, file_stamp
from tolclip.evaluation.few_shot import FewShotResult, linear_probe, simpleshot
from tolclip.evaluation.hierarchy import mistake_severity, rank_consistency, summed_rank_accuracy
from tolclip.evaluation.intrinsic import embed_2d, plot_ranks, silhouette_per_rank, tree_distance_correlation
from tolclip.evaluation.metrics import top_k_accuracy
from tolclip.evaluation.tasks import Task
from tolclip.evaluation.zero_shot import text_classifier
from tolclip.models.checkpoints import load_classifier
from tolclip.models.loading import load_model

RESULTS_FILE = "results.json"
# Per rank: its groups (lineages) and each image's predicted group index.
RankPredictions = dict[str, tuple[list[tuple[str, ...]], torch.Tensor]]


@dataclass
class EvalModel:
    """What the suite needs of a model: an image encoder, its preprocessing, maybe a text encoder."""

    name: str
    kind: str
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    preprocess: Preprocess
    key: str  # identifies weights + architecture + preprocessing, for the feature cache
    net: torch.nn.Module | None = None  # a CLIP (has encode_text); None for image-only models
    context_length: int = 77
    device: str = "cpu"

    @property
    def has_text(self) -> bool:
        return self.net is not None and hasattr(self.net, "encode_text")

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.net, "logit_scale", None)
        return float(scale.detach().exp()) if scale is not None else 100.0


def latest_checkpoint(log_dir: str | Path) -> Path:
    """The newest `last.ckpt` of a training run under `log_dir` (what `make train` wrote last)."""
    found = sorted(Path(log_dir).glob("train/runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no training run with checkpoints/last.ckpt under {log_dir}/train/runs: run `make train`"
        )
    return found[-1]


def load_eval_model(spec: Mapping[str, Any], log_dir: str | Path = "logs", device: str = "cpu") -> EvalModel:
    """Load a model described by an `suite/model` config: kind tolclip | open_clip | supervised."""
    spec = dict(spec)
    kind = spec.get("kind")
    if kind == "tolclip" and spec.get("path") in (None, "latest"):
        spec["path"] = str(latest_checkpoint(log_dir))
    path = spec.get("path")
    if not path:
        raise ValueError(f"model spec {spec} needs a `path:`")
    if kind == "supervised":
        net, _ = load_classifier(path)
        module = net.to(device)
        pre = Preprocess(module.visual.image_size)
        name = spec.get("name") or f"supervised:{Path(path).parent.parent.name}"
        return EvalModel(
            name, kind, module.encode_image, pre, fingerprint(file_stamp(path), pre), None, device=device
        )
    loaded = load_model(spec)
    net = loaded.net.eval().to(device)
    key = fingerprint(file_stamp(loaded.source), loaded.net_config, loaded.preprocess)
    context = int(loaded.net_config.get("text", {}).get("context_length", 77))
    name = spec.get("name") or loaded.name
    return EvalModel(name, str(kind), net.encode_image, loaded.preprocess, key, net, context, device)


# ----------------------------------------------------------------------------------------- measures


@dataclass
class _Features:
    """The readable images of a task: their features, class indices and taxa, row for row."""

    feats: torch.Tensor
    labels: torch.Tensor
    taxa: list[Taxon]


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(classes):
        mask = labels == c
        out.append((pred[mask] == c).float().mean().item() if mask.any() else None)
    return out


def direct_rank_predictions(
    model: EvalModel,
    feats: torch.Tensor,
    classes: Sequence[Taxon],
    text_type: str,
    templates: Sequence[str],
    ranks: Sequence[str],
    tokenizer: Callable,
    cache: FeatureCache,
) -> RankPredictions:
    """Per rank: the rank's groups (lineages) and each image's predicted group, by prompting rank names."""
    out = {}
    for rank in ranks:
        groups = rank_classes(classes, rank)
        if len(groups) < 2:
            continue
        names = [rank_name(t, rank, text_type) for t in groups.values()]
        weights = _class_embeddings(model, names, templates, tokenizer, cache)
        out[rank] = (list(groups), (feats @ weights.T).argmax(dim=-1))
    return out


def _class_embeddings(
    model: EvalModel, names: Sequence[str], templates: Sequence[str], tokenizer: Callable, cache: FeatureCache
) -> torch.Tensor:
    key = fingerprint(model.key, list(names), list(templates))
    data = cache.get(
        "text", key, lambda: {"weights": text_classifier(model.net, tokenizer, names, templates).cpu()}
    )
    return data["weights"]


def _image_features(
    model: EvalModel, task: Task, cfg: Mapping[str, Any], cache: FeatureCache
) -> dict[str, Any]:
    """The task's image features from the cache, extracted on a miss (`features`, `index`, `failed`)."""

    def compute() -> dict[str, Any]:
        batch_size, workers = int(cfg.get("batch_size", 64)), int(cfg.get("num_workers", 0))
        images = extract_image_features(
            model.encode_image, model.preprocess.transform(), task.paths, batch_size, workers, model.device
        )
        return vars(images)

    return cache.get("image", fingerprint(model.key, task.fingerprint()), compute)


def _zero_shot(
    model: EvalModel,
    task: Task,
    cfg: Mapping[str, Any],
    cache: FeatureCache,
    x: _Features,
    out_dir: Path | None,
) -> dict[str, Any]:
    """Zero-shot accuracy on the task's class names; also rank-level measures when `cfg` asks for them."""
    templates = templates_for(cfg.get("templates", "openai"))
    tokenizer = get_tokenizer(model.context_length)
    weights = _class_embeddings(model, task.class_names(), templates, tokenizer, cache)
    logits = x.feats @ weights.T
    pred = logits.argmax(dim=-1)
    per_class = per_class_accuracy(pred, x.labels, len(task.classes))
    seen = [a for a in per_class if a is not None]
    top1, top5 = top_k_accuracy(logits, x.labels)
    zero_shot = {"top1": top1, "top5": top5, "mean_per_class": sum(seen) / len(seen), "computed": True}
    # Every class competes, so chance is over the task; a class whose images were all unreadable is
    # scored on no image, which the coverage shows as a class left out.
    zero_shot |= coverage(len(seen), len(task.classes), len(x.labels), 1.0 / len(task.classes))
    out: dict[str, Any] = {"zero_shot": zero_shot}
    if out_dir is not None:
        _write_per_class(out_dir / "per_class.csv", task, per_class, x.labels)
    if _has_taxa(task) and cfg.get("rank_level", True):
        ranks = list(cfg.get("ranks", RANKS))
        direct = direct_rank_predictions(
            model, x.feats, task.classes, task.label_type, templates, ranks, tokenizer, cache
        )
        out["rank_level"] = _rank_level(model, task, x, logits, direct, ranks)
    return out


def _rank_level(
    model: EvalModel,
    task: Task,
    x: _Features,
    logits: torch.Tensor,
    direct: RankPredictions,
    ranks: Sequence[str],
) -> dict[str, Any]:
    """Accuracy per rank by summing species probabilities and by prompting rank names; consistency of
    the prompted predictions across ranks; how far up the tree the species mistakes go."""
    probs = (model.logit_scale * logits).softmax(dim=-1)
    summed = summed_rank_accuracy(probs, task.classes, x.taxa, ranks)
    predicted = [task.classes[i] for i in logits.argmax(dim=-1).tolist()]
    prompted = {r: [groups[p] for p in pred.tolist()] for r, (groups, pred) in direct.items()}
    return {
        "summed": {r: v["top1"] for r, v in summed.items()},
        "direct": _direct_accuracy(direct, x.taxa),
        "consistency_direct": rank_consistency(prompted),
        "severity": mistake_severity(predicted, x.taxa),
    }


def _direct_accuracy(direct: RankPredictions, taxa: Sequence[Taxon]) -> dict[str, float | None]:
    """Per rank, the fraction of images known at that rank whose prompted prediction is their lineage."""
    out = {}
    for rank, (groups, predicted) in direct.items():
        truth = [lineage(t, rank) for t in taxa]
        rows = [i for i, key in enumerate(truth) if key[-1]]
        out[rank] = sum(groups[predicted[i]] == truth[i] for i in rows) / len(rows) if rows else None
    return out


# The rule behind every few-shot number, written next to it in results.json and under the table.
SHOT_RULE = (
    "a k-shot episode needs k support images plus at least 1 query per class; smaller classes are left out"
)
PROBE_RULE = "the linear probe needs 1 train and 1 test image per class; smaller classes are left out"


def coverage(
    classes_used: int, classes_in_task: int, images_used: int, chance: float | None
) -> dict[str, Any]:
    """What a measure was computed on, in the same keys for every measure (the report reads these)."""
    return {
        "classes_used": classes_used,
        "classes_in_task": classes_in_task,
        "classes_left_out": classes_in_task - classes_used,
        "images_used": images_used,
        "chance": chance,  # for the classes used, not the whole task
        "partial": classes_used < classes_in_task,
    }


def few_shot_entry(r: FewShotResult, classes_in_task: int, rule: str) -> dict[str, Any]:
    """One few-shot measure for results.json: a number with its coverage, or "not computed" and why.

    Classes with no readable image never reach the protocol, so they are counted as left out here
    against the task's classes: a 3-of-520 figure must say 3/520, not 3/3.
    """
    entry: dict[str, Any] = {"computed": r.computed}
    if r.computed:
        entry |= {"mean": r.mean, "std": r.std, "folds": r.folds}
    else:
        entry |= {"mean": None, "std": None, "folds": [], "reason": r.reason}
    entry |= {"classes": r.classes, "queries": r.queries, "rule": rule}
    return entry | coverage(r.classes, classes_in_task, r.images, r.chance)


def _few_shot(x: _Features, few: Mapping[str, Any], classes_in_task: int) -> dict[str, Any]:
    """SimpleShot for every k and a linear probe, on the frozen features (folds as `few` says)."""
    folds = int(few.get("folds", 5))
    labels = x.labels.tolist()
    out: dict[str, Any] = {}
    for k in few.get("ks", (1, 5)):
        r = simpleshot(x.feats, labels, int(k), folds)
        out[f"{k}_shot"] = few_shot_entry(r, classes_in_task, SHOT_RULE)
    probe = few.get("linear_probe", {}) or {}
    if probe.get("enabled", True):
        r = linear_probe(
            x.feats,
            labels,
            folds,
            float(probe.get("train_fraction", 0.5)),
            float(probe.get("C", 1.0)),
            int(probe.get("max_iter", 1000)),
        )
        out["linear_probe"] = few_shot_entry(r, classes_in_task, PROBE_RULE)
    return out


def _intrinsic(
    x: _Features, intrinsic: Mapping[str, Any], plots_dir: Path | None, title: str
) -> dict[str, Any]:
    """Silhouette per rank and tree-distance correlation; t-SNE maps too when given a folder."""
    corr = tree_distance_correlation(x.feats, x.taxa, int(intrinsic.get("max_pairs", 20000)))
    out: dict[str, Any] = {
        "silhouette": silhouette_per_rank(x.feats, x.taxa),
        "tree_distance_rho": corr["rho"],
        "tree_distance_pairs": corr["pairs"],
    }
    if plots_dir is not None and intrinsic.get("plots", True) and len(x.taxa) >= 3:
        limit = int(intrinsic.get("max_points", 3000))
        # A seeded subset: the maps of one model × task do not change between runs.
        pick = torch.randperm(len(x.taxa), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        coords = embed_2d(x.feats[pick], method=intrinsic.get("method", "tsne"))
        files = plot_ranks(coords, [x.taxa[i] for i in pick.tolist()], plots_dir, title=title)
        out["plots"] = [str(f) for f in files]
    return out


def _has_taxa(task: Task) -> bool:
    """Rank-level and intrinsic measures need a taxon for every class."""
    return task.label_type != "asis" and all(any(t.ranks) for t in task.classes)


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def evaluate(
    model: EvalModel, task: Task, cfg: Mapping[str, Any], cache: FeatureCache, out_dir: Path | None = None
) -> dict[str, Any]:
    """Every configured measure of `model` on `task`; also written to `out_dir/results.json`."""
    data = _image_features(model, task, cfg, cache)
    index = data["index"]
    x = _Features(data["features"], torch.tensor(task.labels)[index], [task.taxa[i] for i in index.tolist()])
    result: dict[str, Any] = {
        "model": model.name,
        "model_kind": model.kind,
        "task": task.name,
        "label_type": task.label_type,
        "images": len(task.paths),
        "features": len(index),
        "unreadable": data["failed"],
        "classes": len(task.classes),
    }
    if cfg.get("zero_shot", True) and model.has_text:
        result |= _zero_shot(model, task, cfg, cache, x, out_dir)
    few = cfg.get("few_shot", {}) or {}
    if few.get("enabled", True):
        result["few_shot"] = _few_shot(x, few, len(task.classes))
    intrinsic = cfg.get("intrinsic", {}) or {}
    if _has_taxa(task) and intrinsic.get("enabled", True):
        plots_dir = out_dir / "plots" if out_dir is not None else None
        result["intrinsic"] = _intrinsic(x, intrinsic, plots_dir, f"{model.name} on {task.name}")
    result = _json_ready(result)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RESULTS_FILE).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


def _write_per_class(path: Path, task: Task, per_class: list[float | None], labels: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = torch.bincount(labels, minlength=len(task.classes)).tolist()
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "name", "images", "top1"])
        for i, (name, acc) in enumerate(zip(task.class_names(), per_class, strict=True)):
            w.writerow([task.raw_labels[i], name, counts[i], "" if acc is None else f"{acc:.4f}"])


def summary_line(result: Mapping[str, Any]) -> str:
    """One line per run: every measure with what it was computed on, never a bare subset figure."""
    parts = [f"{result['model']} on {result['task']}"]
    if "zero_shot" in result:
        parts.append(
            f"zero-shot top-1 {100 * result['zero_shot']['top1']:.1f}%{_subset(result['zero_shot'])}"
        )
    for name, r in (result.get("few_shot") or {}).items():
        label = name.replace("_", "-").replace("linear-probe", "linear probe")
        if r.get("mean") is None:
            parts.append(f"{label} not computed ({r.get('reason', 'no usable class')})")
        else:
            parts.append(f"{label} {100 * r['mean']:.1f}±{100 * r['std']:.1f}%{_subset(r)}")
    return ", ".join(parts)


def _subset(entry: Mapping[str, Any]) -> str:
    if not entry.get("partial"):
        return ""
    chance = entry.get("chance")
    odds = f", chance {100 * chance:.1f}%" if chance is not None else ""
    return f" ({entry['classes_used']}/{entry['classes_in_task']} cls{odds})"
