"""Export our models as open_clip release folders, which ``open_clip`` (and so pybioclip) read:
``open_clip.create_model_and_transforms("local-dir:PATH")``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tolclip.data.transforms import Preprocess
from tolclip.models.config import NetConfig, as_plain_dict
from tolclip.models.loading import LoadedModel
from tolclip.models.open_clip_config import CONFIG_FILE, open_clip_kwargs
from tolclip.models.open_clip_state_dict import ours_state_dict_to_open_clip
from tolclip.models.towers import CLIP
from tolclip.models.weights import (
    BIN_FILE,
    FOLDER_WEIGHTS,  # the names open_clip reads
    SAFETENSORS_FILE,
)

__all__ = ["EXPORT_FILES", "export_open_clip"]

# What an export may have written (and open_clip reads from a folder): the only files `force` removes.
EXPORT_FILES = (CONFIG_FILE, *FOLDER_WEIGHTS)


def export_open_clip(
    loaded_or_net: LoadedModel | CLIP,
    out_dir: str | os.PathLike,
    net_config: Mapping[str, Any] | None = None,
    preprocess: Preprocess | None = None,
    *,
    write_bin: bool = False,
    force: bool = False,
) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (+ ``.bin`` with ``write_bin``).

    The folder loads with ``open_clip.create_model_and_transforms("local-dir:" + out_dir)``. The architecture
    is read from the net itself; a given ``net_config`` must describe the same one. A non-empty ``out_dir``
    is refused (FileExistsError) unless ``force``, which removes only the files of ``EXPORT_FILES`` there
    (an earlier export's), so no stale weights of another architecture stay beside the new ones.
    """
    if isinstance(loaded_or_net, LoadedModel):
        net = loaded_or_net.net
        preprocess = preprocess or loaded_or_net.preprocess
    elif isinstance(loaded_or_net, CLIP):
        net = loaded_or_net
    else:
        raise TypeError(
            f"expected a LoadedModel or tolclip.models.towers.CLIP, got {type(loaded_or_net).__name__}"
        )
    cfg = NetConfig.of(net)
    if net_config is not None and NetConfig.from_dict(net_config) != cfg:
        raise ValueError(
            f"net_config {as_plain_dict(net_config)} does not describe the net ({cfg.to_dict()})"
        )
    image_size = cfg.vision.image_size
    preprocess = preprocess or Preprocess(image_size)
    if preprocess.image_size != image_size:
        raise ValueError(f"preprocess image_size {preprocess.image_size} != model's {image_size}")
    model_cfg = open_clip_kwargs(cfg)  # raises if the towers' activations differ (open_clip has one flag)

    out = _prepare_out_dir(Path(out_dir), force)
    state = {
        k: v.detach().cpu().contiguous() for k, v in ours_state_dict_to_open_clip(net.state_dict()).items()
    }
    safetensors.torch.save_file(state, out / SAFETENSORS_FILE, metadata={"format": "pt"})
    if write_bin:
        torch.save(state, out / BIN_FILE)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess.open_clip_cfg()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def _prepare_out_dir(out: Path, force: bool) -> Path:
    """Create ``out``, or check that an existing one may be written (see ``export_open_clip``)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder to export into")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} is not empty; use --force (force=True) to replace an earlier export there "
                f"(only {', '.join(EXPORT_FILES)} are removed)"
            )
        for name in EXPORT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out
