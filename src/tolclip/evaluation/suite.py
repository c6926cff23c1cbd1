"""The benchmark suite: one model on one task, every measure of the BioCLIP paper and a few more.

`tolclip-eval-suite suite/model=NAME suite/task=NAME` (Hydra; configs/eval_suite.yaml) writes
`results.json` (and t-SNE PNGs, a per-class CSV) into its run folder; `make eval-suite` sweeps
models × tasks as a multirun and `python -m tolclip.evaluation.report --suite DIR` turns the folders into the
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
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from tolclip.core.captions import rank_name
from tolclip.core.resources import CONFIG_PATH
from tolclip.core.taxonomy import RANKS, Taxon, lineage, rank_classes
from tolclip.core.templates import templates_for
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.transforms import Preprocess
from tolclip.evaluation.features import FeatureCache, extract_image_features, file_stamp, fingerprint
from tolclip.evaluation.few_shot import linear_probe, simpleshot
from tolclip.evaluation.hierarchy import mistake_severity, rank_consistency, summed_rank_accuracy
from tolclip.evaluation.tasks import Task, describe, load_task
from tolclip.evaluation.zero_shot import text_classifier
from tolclip.models.interop import load_classifier, load_model

RESULTS_FILE = "results.json"


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
        raise FileNotFoundError(f"no training run with checkpoints/last.ckpt under {log_dir}/train/runs: run `make train`")
    return found[-1]


def pick_device(name: str = "auto") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


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
        return EvalModel(name, kind, module.encode_image, pre, fingerprint(file_stamp(path), pre), None,
                         device=device)
    loaded = load_model(spec)
    net = loaded.net.eval().to(device)
    key = fingerprint(file_stamp(loaded.source), loaded.net_config, loaded.preprocess)
    context = int(loaded.net_config.get("text", {}).get("context_length", 77))
    return EvalModel(spec.get("name") or loaded.name, str(kind), net.encode_image, loaded.preprocess, key, net,
                     context, device)


# ----------------------------------------------------------------------------------------- measures


def _top(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float().mean().item()


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(classes):
        mask = labels == c
        out.append((pred[mask] == c).float().mean().item() if mask.any() else None)
    return out


def direct_rank_predictions(
    model: EvalModel, feats: torch.Tensor, classes: Sequence[Taxon], text_type: str, templates: Sequence[str],
    ranks: Sequence[str], tokenizer: Callable, cache: FeatureCache,
) -> dict[str, tuple[list[tuple[str, ...]], torch.Tensor]]:
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


def _class_embeddings(model: EvalModel, names: Sequence[str], templates: Sequence[str], tokenizer,
                      cache: FeatureCache) -> torch.Tensor:
    key = fingerprint(model.key, list(names), list(templates))
    data = cache.get("text", key, lambda: {"weights": text_classifier(model.net, tokenizer, names, templates).cpu()})
    return data["weights"]


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def evaluate(model: EvalModel, task: Task, cfg: Mapping[str, Any], cache: FeatureCache,
             out_dir: Path | None = None) -> dict[str, Any]:
    """Every configured measure of `model` on `task`; also written to `out_dir/results.json`."""
    feature_key = fingerprint(model.key, task.fingerprint())
    data = cache.get("image", feature_key, lambda: vars(extract_image_features(
        model.encode_image, model.preprocess.transform(), task.paths, int(cfg.get("batch_size", 64)),
        int(cfg.get("num_workers", 0)), model.device)))
    feats, index = data["features"], data["index"]
    labels = torch.tensor(task.labels)[index]
    taxa = [task.taxa[i] for i in index.tolist()]
    result: dict[str, Any] = {"model": model.name, "model_kind": model.kind, "task": task.name,
                              "label_type": task.label_type, "images": len(task.paths), "features": len(index),
                              "unreadable": data["failed"], "classes": len(task.classes)}
    has_taxa = task.label_type != "asis" and all(any(t.ranks) for t in task.classes)

    if cfg.get("zero_shot", True) and model.has_text:
        templates = templates_for(cfg.get("templates", "openai"))
        tokenizer = get_tokenizer(model.context_length)
        weights = _class_embeddings(model, task.class_names(), templates, tokenizer, cache)
        logits = feats @ weights.T
        pred = logits.argmax(dim=-1)
        per_class = per_class_accuracy(pred, labels, len(task.classes))
        seen = [a for a in per_class if a is not None]
        result["zero_shot"] = {"top1": _top(logits, labels, 1), "top5": _top(logits, labels, 5),
                               "mean_per_class": sum(seen) / len(seen)}
        if out_dir is not None:
            _write_per_class(out_dir / "per_class.csv", task, per_class, labels)
        if has_taxa and cfg.get("rank_level", True):
            probs = (model.logit_scale * logits).softmax(dim=-1)
            ranks = list(cfg.get("ranks", RANKS))
            text_type = task.label_type
            direct = direct_rank_predictions(model, feats, task.classes, text_type, templates, ranks, tokenizer,
                                             cache)
            direct_acc = {}
            for rank, (groups, predicted) in direct.items():
                truth = [lineage(t, rank) for t in taxa]
                rows = [i for i, key in enumerate(truth) if key[-1]]
                direct_acc[rank] = sum(groups[predicted[i]] == truth[i] for i in rows) / len(rows) if rows else None
            consistent = rank_consistency({r: [g[p] for p in pred_r.tolist()] for r, (g, pred_r) in direct.items()})
            result["rank_level"] = {
                "summed": {r: v["top1"] for r, v in summed_rank_accuracy(probs, task.classes, taxa, ranks).items()},
                "direct": direct_acc,
                "consistency_direct": consistent,
                "severity": mistake_severity([task.classes[i] for i in pred.tolist()], taxa),
            }

    few = cfg.get("few_shot", {}) or {}
    if few.get("enabled", True):
        folds = int(few.get("folds", 5))
        result["few_shot"] = {}
        for k in few.get("ks", (1, 5)):
            r = simpleshot(feats, labels.tolist(), int(k), folds)
            result["few_shot"][f"{k}_shot"] = {"mean": r.mean, "std": r.std, "folds": r.folds,
                                               "classes": r.classes, "classes_left_out": r.classes_left_out}
        probe = few.get("linear_probe", {}) or {}
        if probe.get("enabled", True):
            r = linear_probe(feats, labels.tolist(), folds, float(probe.get("train_fraction", 0.5)),
                             float(probe.get("C", 1.0)), int(probe.get("max_iter", 1000)))
            result["few_shot"]["linear_probe"] = {"mean": r.mean, "std": r.std, "folds": r.folds}

    intrinsic = cfg.get("intrinsic", {}) or {}
    if has_taxa and intrinsic.get("enabled", True):
        from tolclip.evaluation.intrinsic import (
            embed_2d,
            plot_ranks,
            silhouette_per_rank,
            tree_distance_correlation,
        )

        corr = tree_distance_correlation(feats, taxa, int(intrinsic.get("max_pairs", 20000)))
        result["intrinsic"] = {"silhouette": silhouette_per_rank(feats, taxa),
                               "tree_distance_rho": corr["rho"], "tree_distance_pairs": corr["pairs"]}
        if out_dir is not None and intrinsic.get("plots", True) and len(index) >= 3:
            limit = int(intrinsic.get("max_points", 3000))
            pick = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))[:limit].sort().values
            coords = embed_2d(feats[pick], method=intrinsic.get("method", "tsne"))
            files = plot_ranks(coords, [taxa[i] for i in pick.tolist()], out_dir / "plots",
                               title=f"{model.name} on {task.name}")
            result["intrinsic"]["plots"] = [str(f) for f in files]

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
    parts = [f"{result['model']} on {result['task']}"]
    if "zero_shot" in result:
        parts.append(f"zero-shot top-1 {100 * result['zero_shot']['top1']:.1f}%")
    for name, r in (result.get("few_shot") or {}).items():
        if r.get("mean") is not None:
            parts.append(f"{name.replace('_', '-')} {100 * r['mean']:.1f}±{100 * r['std']:.1f}%")
    return ", ".join(parts)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval_suite")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(int(cfg.get("seed", 0)))
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    device = pick_device(str(suite.get("device", "auto")))
    try:
        model = load_eval_model(OmegaConf.to_container(cfg.model, resolve=True), cfg.paths.log_dir, device)
        task = load_task(OmegaConf.to_container(cfg.task, resolve=True))
    except (FileNotFoundError, ValueError) as err:  # TaskError is a ValueError
        # A missing checkpoint or benchmark folder is a message, not a stack trace.
        print(f"tolclip-eval-suite: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(describe(task))
    cache = FeatureCache(suite.get("cache_dir"))
    result = evaluate(model, task, suite, cache, Path(cfg.paths.output_dir))
    print(summary_line(result))


if __name__ == "__main__":
    main()
