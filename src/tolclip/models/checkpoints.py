"""Our Lightning checkpoints (``.ckpt``): the net of a CLIP training run, the supervised baseline.

The weights are the LightningModule's ``net.`` entries; the architecture is the run's ``model.net`` config
(saved by Hydra next to the checkpoints) or one given by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from tolclip.core.taxonomy import SpeciesKey
from tolclip.models.classifier import SpeciesClassifier
from tolclip.models.config import as_plain_dict
from tolclip.models.io import is_torchscript, load_weights_only
from tolclip.models.towers import CLIP

__all__ = ["load_classifier", "load_net", "run_net_config"]


def run_net_config(ckpt_path: Path, fallback: DictConfig | None) -> DictConfig | None:
    """The `model.net` config the checkpoint was trained with, when its run directory has one."""
    parents = Path(ckpt_path).resolve().parents
    saved = parents[1] / ".hydra" / "config.yaml" if len(parents) > 1 else None
    if saved is not None and saved.exists():
        return OmegaConf.load(saved).model.net
    return fallback


def _net_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The net's own weights in a LightningModule state dict (its ``net.`` entries, prefix removed)."""
    return {k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")}


def _build(net_cfg: Mapping[str, Any]) -> torch.nn.Module:
    if "_target_" in net_cfg:  # a Hydra model config, as training writes it
        return hydra.utils.instantiate(net_cfg, _convert_="all")
    return CLIP(**as_plain_dict(net_cfg))


def load_net(ckpt_path: str | Path, net_cfg: Mapping[str, Any]) -> torch.nn.Module:
    """Build the net from config and load the weights of a Lightning checkpoint into it."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if is_torchscript(path):
        raise ValueError(f"{path} is a TorchScript archive, not a Lightning checkpoint")
    ckpt = load_weights_only(path, "checkpoint")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    state = _net_weights(ckpt["state_dict"])
    if not state:
        raise ValueError(f"{path} has no 'net.' weights: not a tolclip training checkpoint")
    net = _build(net_cfg)
    hint = "pass the model=... it was trained with"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exn:  # same names, other shapes
        raise ValueError(f"{path} does not match the model config ({hint}):\n{exn}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model config: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); {hint}"
        )
    return net.eval()


def load_classifier(ckpt_path: str | os.PathLike) -> tuple[SpeciesClassifier, list[SpeciesKey]]:
    """A trained supervised baseline in eval mode, and its species classes (index = logit column)."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = load_weights_only(path, "checkpoint")
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not hparams.get("species_classes") or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a supervised tolclip checkpoint (no species classes in its hyperparameters); "
            "CLIP checkpoints load with tolclip.models.checkpoints.load_net"
        )
    classes = [tuple(c) for c in hparams["species_classes"]]
    net = SpeciesClassifier(hparams["net"]["embed_dim"], hparams["net"]["vision"], len(classes))
    net.load_state_dict(_net_weights(ckpt["state_dict"]))
    return net.eval(), classes
