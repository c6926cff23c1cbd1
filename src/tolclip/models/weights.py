"""open_clip / BioCLIP weights: state-dict files and release folders, read into our towers.

Formats understood (all local, nothing downloads, nothing executes code when read):

* a bare open_clip state dict: ``.safetensors``, or ``.pt`` / ``.bin`` / ``.pth`` read with
  ``torch.load(weights_only=True)``, possibly nested under ``"state_dict"`` and with a DDP ``"module."``
  prefix (open_clip training runs save them so);
* a release folder as BioCLIP is published on Hugging Face: ``open_clip_config.json`` (``model_cfg``,
  ``preprocess_cfg``) + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``. This is also what
  ``tolclip.models.export.export_open_clip`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tolclip.models.config import NetConfig
from tolclip.models.io import is_torchscript, load_weights_only
from tolclip.models.open_clip_config import CONFIG_FILE, net_config_from_model_cfg
from tolclip.models.open_clip_state_dict import open_clip_state_dict_to_ours, ours_state_dict_to_open_clip
from tolclip.models.towers import CLIP

__all__ = ["BIN_FILE", "SAFETENSORS_FILE", "Release", "net_from_open_clip", "read_release", "read_state_dict"]

SAFETENSORS_FILE = "open_clip_model.safetensors"
BIN_FILE = "open_clip_pytorch_model.bin"
# Weight files of a release folder, in open_clip's order of preference (factory._find_checkpoint_in_dir).
FOLDER_WEIGHTS = (
    SAFETENSORS_FILE,
    "open_clip_pytorch_model.safetensors",
    BIN_FILE,
    "open_clip_pytorch_model.pth",
)
# Entries of OpenAI's JIT state dict and old open_clip buffers that are not weights.
_NOT_WEIGHTS = ("attn_mask", "input_resolution", "context_length", "vocab_size")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch.save file, unwrapped from 'state_dict' / 'module.'."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        try:
            obj: Any = safetensors.torch.load_file(path, device="cpu")
        except Exception as exn:  # safetensors raises its own error type, or OSError
            raise ValueError(f"{path} is not a readable safetensors file: {exn}") from None
    else:
        if is_torchscript(path):
            raise ValueError(
                f"{path} is a TorchScript archive (like OpenAI's original JIT .pt files), which cannot be loaded "
                "without running its code. Convert it to a state dict once, in an environment you trust: "
                f"torch.save(torch.jit.load({str(path)!r}, map_location='cpu').state_dict(), 'model.pt'), "
                "and load that file with quick_gelu=True"
            )
        obj = load_weights_only(path, "PyTorch state dict")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # open_clip / Lightning training checkpoint
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path} is not a state dict of tensors: {len(bad)} other entries, e.g. {bad[:3]}")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


# --------------------------------------------------------------------------------------------------
# Release folders


@dataclass(frozen=True)
class Release:
    """A release folder: the architecture and preprocessing its open_clip_config.json gives, its weights file."""

    net_config: NetConfig
    preprocess_cfg: Mapping[str, Any]
    weights: Path


def read_release(folder: Path, quick_gelu: bool | None) -> Release:
    """Read a release folder's config; ``quick_gelu``, when given, must agree with it."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is a folder without {CONFIG_FILE}: not an open_clip model folder")
    cfg = _read_json(config_path)
    model_cfg = cfg["model_cfg"]
    if "quick_gelu" in model_cfg:
        if quick_gelu is not None and bool(quick_gelu) != bool(model_cfg["quick_gelu"]):
            raise ValueError(
                f"{config_path} says quick_gelu={model_cfg['quick_gelu']}, but quick_gelu={quick_gelu} was asked"
            )
        quick_gelu = bool(model_cfg["quick_gelu"])
    elif quick_gelu is None:
        quick_gelu = False  # open_clip's default when the config does not say
    try:
        net_config = net_config_from_model_cfg(model_cfg, quick_gelu)
    except ValueError as exn:
        raise ValueError(f"{config_path}: {exn}") from None
    return Release(net_config, cfg.get("preprocess_cfg") or {}, _folder_weights(folder))


def _folder_weights(folder: Path) -> Path:
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder} has {CONFIG_FILE} but no weights file (expected one of {list(FOLDER_WEIGHTS)})"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise ValueError(f"{path} is not readable JSON: {exn}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise ValueError(f"{path} has no 'model_cfg' object (not an open_clip model config)")
    return cfg


# --------------------------------------------------------------------------------------------------
# Building nets from weights


def _check_keys(sd: Mapping[str, torch.Tensor], net_config: NetConfig) -> None:
    """Compare an open_clip state dict with the one the architecture expects (names in open_clip's terms)."""
    with torch.device("meta"):
        net = CLIP(**net_config.to_dict())
        expected = {k: v.shape for k, v in ours_state_dict_to_open_clip(net.state_dict()).items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: {tuple(sd[k].shape)} in the file, {tuple(expected[k])} expected"
        for k in expected
        if k in sd and sd[k].shape != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    if problems:
        raise ValueError(
            "weights do not match the architecture " + net_config.describe() + ": " + ", ".join(problems)
        )


def net_from_open_clip(sd: Mapping[str, torch.Tensor], net_config: NetConfig) -> CLIP:
    """Our CLIP (eval mode) with the weights of an open_clip state dict of that architecture."""
    sd = {k: v for k, v in sd.items() if k not in _NOT_WEIGHTS}
    if "logit_scale" in sd and sd["logit_scale"].numel() == 1:  # nonscalar_logit_scale stores shape [1]
        sd["logit_scale"] = sd["logit_scale"].reshape(())
    _check_keys(sd, net_config)
    # Built without storage, then given the weights: a random init of every tensor (about half the load
    # time of a ViT-B) would only be overwritten. Copies in float32, as a plain load_state_dict makes.
    with torch.device("meta"):
        net = CLIP(**net_config.to_dict())
    ours = {k: v.to(torch.float32, copy=True) for k, v in open_clip_state_dict_to_ours(sd).items()}
    net.load_state_dict(ours, strict=True, assign=True)
    _materialise_buffers(net)
    return net.eval()


def _materialise_buffers(net: torch.nn.Module) -> None:
    """Give the non-persistent buffers (not in any state dict) their values after a build on ``meta``."""
    for module in net.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name != "position_ids":  # the text embeddings' arange; nothing else is expected
                raise RuntimeError(f"cannot materialise the buffer {name} of {type(module).__name__}")
            values = torch.arange(buf.shape[-1]).expand(buf.shape)
            module.register_buffer(name, values, persistent=False)
