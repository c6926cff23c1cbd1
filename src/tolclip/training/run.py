"""One training run from a composed config: instantiate data, model, callbacks, loggers, trainer; fit.

The Hydra entry point is `tolclip.cli.train`; tests and sweeps call `train(cfg)` directly.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from tolclip.training.callbacks import ZeroShotEvaluation

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
    if ckpt_path == "last":
        path = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path=last but {path} does not exist")
        return str(path)
    if ckpt_path and not Path(ckpt_path).exists():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    return ckpt_path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the trainer's final metrics and the zero-shot results."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = instantiate_all(cfg)
    hparams = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    trainer.fit(
        model, datamodule=datamodule, ckpt_path=resolve_ckpt(cfg.get("ckpt_path"), cfg.paths.output_dir)
    )
    zero_shot = next((c for c in trainer.callbacks if isinstance(c, ZeroShotEvaluation)), None)
    return {
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "zero_shot": zero_shot.results if zero_shot else [],
        "trainer": trainer,
        "model": model,
    }
