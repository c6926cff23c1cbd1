"""Training entry point: `tolclip-train [overrides]` (Hydra; configs in configs/train.yaml).

Generates the embedded synthetic data when the data config asks for it, trains, and evaluates
zero-shot at every rank when training ends (the `zero_shot` callback prints the table).
"""

from __future__ import annotations

import fcntl
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from tolclip.zero_shot import ZeroShotEvaluation

log = logging.getLogger(__name__)

# ShardStream gives every loader worker its own shards and epoch length, which is exactly what this
# Lightning warning asks for; it cannot see that, so it would fire on every run.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def net_config(name: str) -> dict[str, Any]:
    """The `net` arguments of `configs/model/<name>.yaml` (for tools that build a bare CLIP)."""
    path = Path(CONFIG_DIR) / "model" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no model config {name!r}; known: {known}")
    net = OmegaConf.to_container(OmegaConf.load(path).net, resolve=True)
    net.pop("_target_", None)
    return net


def prepare_synthetic(generate: dict[str, Any]) -> None:
    """Build the synthetic shards once; a file lock keeps parallel DDP ranks from racing."""
    from tolclip.synthetic import build_synthetic_dataset

    out_dir = Path(generate["out_dir"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_synthetic_dataset(**generate)


def instantiate_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The configured DataModule, generating the synthetic shards first if the config asks."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    generate = data_cfg.pop("generate", None)
    if generate:
        prepare_synthetic(generate)
    return hydra.utils.instantiate(data_cfg, _convert_="all")


def instantiate_all(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    datamodule = instantiate_datamodule(cfg)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = [hydra.utils.instantiate(c, _convert_="all") for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c, _convert_="all") for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
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
    hparams = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
               for k, v in cfg.items() if k != "hydra"}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt(cfg.get("ckpt_path"), cfg.paths.output_dir))
    zero_shot = next((c for c in trainer.callbacks if isinstance(c, ZeroShotEvaluation)), None)
    return {
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "zero_shot": zero_shot.results if zero_shot else [],
        "trainer": trainer,
        "model": model,
    }


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_SILENT", "true")
    out = train(cfg)
    return out["metrics"].get("train/loss")


if __name__ == "__main__":
    main()
