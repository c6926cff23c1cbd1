"""Load a model for inference, whatever it came from: open_clip / BioCLIP weights (``tolclip.models.weights``)
or one of our Lightning checkpoints (``tolclip.models.checkpoints``).

Every model comes back as a :class:`LoadedModel` whose ``Preprocess`` travels with it.
Bad input raises ``ValueError`` / ``FileNotFoundError`` naming the file and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tolclip.data.transforms import Preprocess
from tolclip.models.checkpoints import load_net, run_net_config
from tolclip.models.config import NetConfig
from tolclip.models.open_clip_config import QUICK_GELU_HELP, infer_net_config, reject_unsupported
from tolclip.models.towers import CLIP
from tolclip.models.weights import net_from_open_clip, read_release, read_state_dict

__all__ = [
    "LoadedModel",
    "load_model",
    "load_open_clip",
    "load_path",
    "load_tolclip",
    "pick_device",
    "run_checkpoint",
]


@dataclass
class LoadedModel:
    net: CLIP  # in eval mode, on CPU
    net_config: dict  # kwargs for tolclip.models.towers.CLIP (embed_dim, vision, text), canonical form
    preprocess: Preprocess
    name: str  # short display name (file/folder stem)
    source: str  # the path it came from


def load_open_clip(path: str | os.PathLike, quick_gelu: bool | None = None) -> LoadedModel:
    """Load open_clip weights (a state dict file, or a release folder with open_clip_config.json) into our towers.

    ``quick_gelu`` is needed for a bare state dict (see :data:`QUICK_GELU_HELP`); a folder's config decides it
    (an explicit value that disagrees is an error).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    net_config: NetConfig | None = None
    preprocess_cfg: Mapping[str, Any] = {}
    weights = path
    if path.is_dir():
        release = read_release(path, quick_gelu)
        net_config, preprocess_cfg, weights = release.net_config, release.preprocess_cfg, release.weights
    sd = read_state_dict(weights)  # first: a file that cannot be read at all is the more useful error
    if net_config is None and quick_gelu is None:
        raise ValueError(f"{path}: {QUICK_GELU_HELP}")
    try:
        reject_unsupported(sd)
        if net_config is None:
            net_config = NetConfig.from_dict(infer_net_config(sd, bool(quick_gelu)))
        net = net_from_open_clip(sd, net_config)
        preprocess = Preprocess.from_open_clip_cfg(preprocess_cfg, net_config.vision.image_size)
    except ValueError as exn:
        raise ValueError(f"{weights}: {exn}") from None
    name = path.stem if path.is_file() else path.name
    return LoadedModel(net, net_config.to_dict(), preprocess, name=name, source=str(path))


def load_tolclip(ckpt_path: str | os.PathLike, net_config: Mapping | None = None) -> LoadedModel:
    """Load one of our Lightning checkpoints, with the net config of its run (or ``net_config``).

    The preprocessing is our training normalisation at the model's image size.
    """
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    cfg = net_config if net_config is not None else run_net_config(path, None)
    if cfg is None:
        raise ValueError(
            f"{path}: no net config (the run's .hydra/config.yaml is not next to it); pass net_config, "
            "e.g. the net section of configs/model/<name>.yaml"
        )
    net = load_net(path, cfg)
    if not isinstance(net, CLIP):
        raise ValueError(f"{path}: the net config builds a {type(net).__name__}, not a tolclip CLIP")
    # Read from the built net: configs that spell the same architecture differently give one form.
    arch = NetConfig.of(net)
    return LoadedModel(
        net, arch.to_dict(), Preprocess(arch.vision.image_size), name=path.stem, source=str(path)
    )


_SPEC_KEYS = {"kind", "path", "name", "quick_gelu", "net_config"}


def load_model(spec: Mapping[str, Any]) -> LoadedModel:
    """Load a model from ``{"kind": "tolclip"|"open_clip", "path": ..., "quick_gelu"?, "net_config"?, "name"?}``."""
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"model spec has unknown keys {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    if "path" not in spec:
        raise ValueError(f"model spec {dict(spec)} has no 'path'")
    kind = spec.get("kind")
    if kind == "open_clip":
        if spec.get("net_config") is not None:
            raise ValueError(
                "net_config applies to kind 'tolclip'; open_clip architectures come from the weights"
            )
        loaded = load_open_clip(spec["path"], spec.get("quick_gelu"))
    elif kind == "tolclip":
        if spec.get("quick_gelu") is not None:
            raise ValueError(
                "quick_gelu applies to kind 'open_clip'; tolclip checkpoints take it from their config"
            )
        loaded = load_tolclip(spec["path"], spec.get("net_config"))
    else:
        raise ValueError(f"unknown model kind {kind!r}: expected 'tolclip' or 'open_clip'")
    if spec.get("name"):
        loaded.name = str(spec["name"])
    return loaded


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a training run folder offers for inference: ``checkpoints/last.ckpt``, else its newest."""
    folder = Path(run_dir)
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    found = sorted((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise FileNotFoundError(f"{folder}: a tolclip run folder with no checkpoints/*.ckpt yet")
    return found[-1]


def load_path(path: str | os.PathLike, quick_gelu: bool | None = None) -> LoadedModel:
    """Load whatever a user points at: an open_clip/BioCLIP release folder, a bare open_clip state dict
    (``quick_gelu`` needed), a tolclip ``.ckpt``, or a tolclip training run folder (its last checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model {p} does not exist")
    if p.is_dir() and (p / ".hydra").is_dir():
        p = run_checkpoint(p)
    if p.suffix == ".ckpt":
        if quick_gelu is not None:
            raise ValueError(f"{p}: --quick-gelu applies to open_clip state dicts, not tolclip checkpoints")
        return load_tolclip(p)
    return load_open_clip(p, quick_gelu)


def pick_device(name: str = "auto") -> str:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        return name
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"
