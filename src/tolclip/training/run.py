"""One training run from a composed config: instantiate data, model, callbacks, loggers, trainer; fit.

The Hydra entry point is `tolclip.cli.train`; tests and sweeps call `train(cfg)` directly.
"""

from __future__ import annotations

import logging
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from tolclip.core.taxonomy import RANKS
from tolclip.data.stream import expand_shards
from tolclip.evaluation.zero_shot import rank_metrics
from tolclip.training.callbacks import SpeciesEvaluation, ZeroShotEvaluation
from tolclip.training.dashboard import finish_wandb
from tolclip.training.init_from import apply_init_from
from tolclip.training.resume import resume_path

log = logging.getLogger(__name__)

# ShardStream gives every loader worker its own shards and epoch length, which is exactly what this
# Lightning warning asks for; it cannot see that, so it would fire on every run.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


def instantiate_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The configured DataModule (its `prepare_data` writes the synthetic shards when configured)."""
    return hydra.utils.instantiate(cfg.data, _convert_="all")


def instantiate_all(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    datamodule = instantiate_datamodule(cfg)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = [
        hydra.utils.instantiate(c, _convert_="all") for c in (cfg.get("callbacks") or {}).values() if c
    ]
    loggers = [hydra.utils.instantiate(c, _convert_="all") for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )
    return datamodule, model, trainer


def resolve_ckpt(ckpt_path: str | None, output_dir: str) -> str | None:
    """The checkpoint to resume from, checked now: a bad file must not cost a start-up and a crash.
    "auto"/"last": the run folder's newest checkpoint (training/resume.py), so a requeued job
    continues where it stopped."""
    if ckpt_path and ckpt_path not in ("auto", "last"):
        check_checkpoint_file(ckpt_path)
    # What the run folder offers instead was checked there: only whole zip archives are taken.
    return resume_path(ckpt_path, output_dir)


def check_checkpoint_file(ckpt_path: str, key: str = "ckpt_path") -> None:
    """A Lightning checkpoint is a torch zip archive, whose directory sits at its end: a text file or
    a truncated copy fails this cheap test without reading the tensors."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"{key}: checkpoint {ckpt_path} does not exist")
    if not path.is_file():
        raise IsADirectoryError(f"{key}: {ckpt_path} is not a file (give the .ckpt file itself)")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{key}: {ckpt_path} is not a readable checkpoint (not a complete torch archive: "
            "truncated, or another kind of file)"
        )


def _has_a_sample(url: str) -> bool:
    """True when a local shard is a tar with at least one member (only its first header is read)."""
    try:
        with tarfile.open(url) as tar:
            return tar.next() is not None
    except (OSError, tarfile.TarError):
        return False


def check_shard_set(key: str, spec: str | list[str]) -> list[str]:
    """The shard URLs of one config key; a typo or a set of only empty/unreadable shards names the key."""
    try:
        urls = expand_shards(spec)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}: {err}") from None
    local = [u for u in urls if not (u.startswith("pipe:") or "://" in u)]
    if local and len(local) == len(urls) and not any(_has_a_sample(u) for u in local):
        raise ValueError(f"{key}: all {len(local)} shard(s) are empty or not tar files, e.g. {local[0]}")
    return urls


def check_data(datamodule: L.LightningDataModule, train: bool = True) -> None:
    """Fail fast on the data config: train shards and every eval set (after `prepare_data`, which
    writes the synthetic shards), so a typo ends the run before the first step, not after training.
    Sizes were checked when the DataModule was built."""
    if train and getattr(datamodule, "train_shards", None) is not None:
        # Sources mixed by weight are checked one by one, each named (`data.train_shards.inat21`).
        sets = getattr(datamodule, "train_shard_sets", None)
        for key, spec in sets() if sets else [("data.train_shards", datamodule.train_shards)]:
            check_shard_set(key, spec)
    for name, spec in (getattr(datamodule, "eval_sets", None) or {}).items():
        check_shard_set(f"data.eval_sets.{name}", spec)


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's metrics and the end-of-training evaluation tables, under the names the
    evaluation callbacks log them (`zeroshot/{text type}/{set}/{rank}/top1`, `classifier/...`): they
    go to the loggers only, so Lightning's `callback_metrics` lacks them."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for callback in trainer.callbacks:
        if isinstance(callback, ZeroShotEvaluation):
            metrics |= rank_metrics(callback.results, "zeroshot")
        elif isinstance(callback, SpeciesEvaluation):
            metrics |= rank_metrics(callback.results, "classifier", by_text_type=False)
    return metrics


def optimized_value(out: dict[str, Any], name: str | None) -> float | None:
    """The value of `optimized_metric` in `train`'s output (what a hyperparameter search maximises);
    None when unset."""
    metrics = out["metrics"]
    if not name:
        return None
    # Evaluation runs on global rank 0 alone: the other DDP ranks have no zero-shot numbers to return.
    if name not in metrics and out["trainer"].is_global_zero:
        raise ValueError(
            f"optimized_metric: this run has no metric {name!r}; it has: {', '.join(sorted(metrics))}"
        )
    return metrics.get(name)


def check_optimized_metric(cfg: DictConfig) -> None:
    """A zero-shot `optimized_metric` the config cannot produce stops before training, not after it:
    `zeroshot/{text type}/{eval set}/{rank}/top1|top5` must name a configured text type, set and rank."""
    name = cfg.get("optimized_metric")
    if not name or not str(name).startswith("zeroshot/"):
        return  # other names (train/loss, classifier/...) are checked against the run's metrics at its end
    zero_shot = (cfg.get("callbacks") or {}).get("zero_shot")
    if not zero_shot:
        raise ValueError(f"optimized_metric: {name!r} needs the zero-shot evaluation (callbacks.zero_shot)")
    choices = [
        list(zero_shot.get("text_types") or []),
        list((cfg.data.get("eval_sets") or {}).keys()),
        list(zero_shot.get("ranks") or RANKS),
        ["top1", "top5"],
    ]
    parts = str(name).split("/")[1:]
    what = ("text type", "eval set", "rank", "measure")
    bad = [
        f"{w} {p!r} (choose from {c})" for w, p, c in zip(what, parts, choices, strict=False) if p not in c
    ]
    if len(parts) != 4 or bad:
        raise ValueError(
            f"optimized_metric: {name!r} is not a zero-shot metric of this config "
            f"(zeroshot/<text type>/<eval set>/<rank>/top1|top5): {'; '.join(bad) or 'wrong number of parts'}"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the trainer's final metrics and the zero-shot results."""
    check_optimized_metric(cfg)  # a typo in a search's metric must not cost a whole training run
    apply_init_from(cfg)  # first: the data configs read the net sizes that released weights may set
    L.seed_everything(cfg.seed, workers=True)
    # Every path is checked before anything is logged or trained: the checkpoint first (cheap), the
    # shards after prepare_data, which writes the synthetic set (Lightning's own call reuses it).
    ckpt_path = resolve_ckpt(cfg.get("ckpt_path"), cfg.paths.output_dir)
    datamodule, model, trainer = instantiate_all(cfg)
    hparams = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }
    datamodule.prepare_data()
    check_data(datamodule)
    failed = True
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        failed = False
    finally:
        finish_wandb(trainer, failed)  # the next job of a multirun (same process) gets its own run
    zero_shot = next((c for c in trainer.callbacks if isinstance(c, ZeroShotEvaluation)), None)
    return {
        "metrics": final_metrics(trainer),
        "zero_shot": zero_shot.results if zero_shot else [],
        "trainer": trainer,
        "model": model,
    }
