"""``model.init_from``: settle the net's architecture from released weights before anything is built.

The data configs read ``${model.net.vision.image_size}`` and ``${model.net.text.context_length}``, so the
sizes a config leaves null (``model/net=from_weights``) are filled from the weights here, first thing in
``train()``; sizes it gives must match them (``models.pretrained.reconcile``). The source's absolute path
and sha256 go into the config (``model.init_from``, ``model.init_sha256``), and so into the loggers'
hyperparameters and the checkpoints' hparams; ``<run dir>/init_from.json`` records the source, and the run's
``.hydra/config.yaml`` gets the settled sizes, so that ``tolclip eval`` and ``load_tolclip`` can rebuild the
net from the run folder. The weights themselves are loaded by ``CLIPLitModule`` (``models.pretrained``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from tolclip.core.hashing import file_sha256
from tolclip.models.config import as_plain_dict
from tolclip.models.pretrained import WeightsSource, describe_source, reconcile

__all__ = ["INIT_FILE", "REQUIRED", "apply_init_from"]

log = logging.getLogger(__name__)

INIT_FILE = "init_from.json"
# What an experiment that needs weights sets (configs/experiment/bioclip.yaml): `???` cannot be used there,
# as OmegaConf's merge keeps model/tiny.yaml's `init_from: null` under a missing value.
REQUIRED = "REQUIRED"
_REQUIRED_HELP = (
    "model.init_from is required by this experiment: the released weights to start from (an open_clip / "
    "BioCLIP model folder, a state dict, or a tolclip .ckpt), e.g. model.init_from=/models/openai-vit-b-16"
)


def _null_sizes(net: Any, prefix: str = "model.net") -> list[str]:
    found = []
    for key, value in net.items():
        if isinstance(value, dict):
            found += _null_sizes(value, f"{prefix}.{key}")
        elif value is None:
            found.append(f"{prefix}.{key}")
    return found


def _settle(cfg: DictConfig) -> tuple[WeightsSource, dict[str, Any]] | None:
    """The source of ``model.init_from`` and the sizes it fills in; None when there is none."""
    model = cfg.model
    if "init_from" not in model:  # a module without released weights (e.g. the supervised baseline)
        return None
    if OmegaConf.is_missing(model, "init_from") or model.init_from == REQUIRED:
        raise ValueError(_REQUIRED_HELP)
    if not model.init_from:
        nulls = _null_sizes(as_plain_dict(model.net))
        if nulls:
            raise ValueError(
                f"{', '.join(nulls)} null: these sizes come from the weights of model.init_from, which is not "
                "set (give model.init_from=PATH, or a net with every size, e.g. model/net=tiny)"
            )
        return None
    given = model.init_from
    try:
        source = describe_source(given, model.get("init_quick_gelu"), hint=model.net)
        filled = reconcile(source.net_config, model.net)
    except (ValueError, FileNotFoundError) as exn:
        raise type(exn)(f"model.init_from={given}: {exn}") from None
    return source, filled


def apply_init_from(cfg: DictConfig) -> WeightsSource | None:
    """Fill ``cfg.model.net`` from ``model.init_from`` and record the source (see the module docstring)."""
    settled = _settle(cfg)
    if settled is None:
        return None
    source, filled = settled
    sha256 = file_sha256(source.weights)
    with open_dict(cfg):
        for key, value in filled.items():
            OmegaConf.update(cfg.model.net, key, value, merge=False)
        cfg.model.init_from = str(source.path)
        cfg.model.init_sha256 = sha256
    log.info("model.init_from: %s (%s, sha256 %s)", source.path, source.kind, sha256)
    if cfg.get("paths") is not None:
        _write_records(cfg, source, filled)
    return source


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@rank_zero_only
def _write_records(cfg: DictConfig, source: WeightsSource, filled: dict[str, Any]) -> None:
    """``init_from.json``, and the settled sizes in the run's saved config (one writer: rank 0)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "path": str(source.path),
        "kind": source.kind,
        "weights": str(source.weights),
        "sha256": cfg.model.init_sha256,
        "quick_gelu": source.quick_gelu,
        "net": source.net_config.to_dict(),  # the weights' architecture
        "trained_image_size": cfg.model.net.vision.image_size,  # differs when positions were resized
        "filled_from_weights": sorted(filled),
    }
    _atomic_write(out / INIT_FILE, json.dumps(record, indent=2) + "\n")
    saved = out / ".hydra" / "config.yaml"
    if saved.is_file():  # Hydra wrote it before the sizes were known
        run_cfg = OmegaConf.load(saved)
        for key, value in filled.items():
            OmegaConf.update(run_cfg, f"model.net.{key}", value, merge=False)
        OmegaConf.update(run_cfg, "model.init_from", str(source.path), merge=False)
        OmegaConf.update(run_cfg, "model.init_sha256", cfg.model.init_sha256, merge=False)
        _atomic_write(saved, OmegaConf.to_yaml(run_cfg))
