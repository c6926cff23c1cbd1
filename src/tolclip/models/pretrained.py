"""Released weights as the start of training (``model.init_from``): what a source is, which architecture it
holds, how it agrees with a configured net, and loading it into that net.

A source is an open_clip / BioCLIP release folder (``open_clip_config.json`` + weights), a bare open_clip
state dict (``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth``, read weights-only) or one of our Lightning
checkpoints (``.ckpt``, architecture from its run folder). Everything is read by the safe loaders of
``weights`` / ``checkpoints``; nothing runs code, nothing downloads.

A configured net agrees with the weights when every size it gives equals the weights' size; sizes it leaves
null are taken from the weights (``configs/model/net/from_weights.yaml``). Only ``vision.image_size`` may
differ: the image positional embedding is then resized as open_clip's ``resize_pos_embed`` does.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
import torch.nn.functional as F

from tolclip.models.checkpoints import load_net, run_net_config
from tolclip.models.config import NetConfig, as_plain_dict
from tolclip.models.open_clip_config import QUICK_GELU_HELP, infer_net_config, reject_unsupported
from tolclip.models.towers import CLIP
from tolclip.models.weights import net_from_open_clip, read_release, read_state_dict

__all__ = [
    "FOLDER",
    "STATE_DICT",
    "STATE_DICT_SUFFIXES",
    "TOLCLIP_CKPT",
    "WeightsSource",
    "describe_source",
    "load_into",
    "reconcile",
    "resize_pos_embed",
]

FOLDER, STATE_DICT, TOLCLIP_CKPT = "open_clip_folder", "open_clip_state_dict", "tolclip_checkpoint"
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_NET_KEYS = ("embed_dim", "vision", "text")
_POS_EMBED = "visual.trunk.pos_embed"  # [1, 1 + grid^2, width]: the class token's position first
_ABSENT = object()


@dataclass(frozen=True)
class WeightsSource:
    """A weights source: what it is, the file holding its weights, the architecture they have."""

    path: Path  # as given, made absolute
    kind: str  # FOLDER, STATE_DICT or TOLCLIP_CKPT
    weights: Path  # the file whose bytes are the weights (a folder's weights file; else `path`)
    net_config: NetConfig
    quick_gelu: bool | None  # the activation choice it was read with (None for our checkpoints)


def _shapes(path: Path) -> Mapping[str, torch.Tensor]:
    """An open_clip state dict's tensors, as shapes only when the format allows (safetensors header)."""
    if path.suffix == ".safetensors":
        try:
            with safetensors.safe_open(path, framework="pt") as fh:
                sd = {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()}
        except Exception:  # noqa: BLE001 - read_state_dict below names what is wrong with the file
            return read_state_dict(path)
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
        return sd
    return read_state_dict(path)  # torch zip files are memory-mapped: tensors are not read here


def _heads(hint: Mapping[str, Any] | None, tower: str) -> int | None:
    value = ((hint or {}).get(tower) or {}).get("heads")
    return value if isinstance(value, int) else None


def _checkpoint_net_config(path: Path, hint: Mapping[str, Any] | None) -> NetConfig:
    saved = run_net_config(path, None)
    where = f"{path.parents[1] / '.hydra' / 'config.yaml'}" if saved is not None else "the configured net"
    cfg = saved if saved is not None else hint
    if cfg is None:
        raise ValueError(
            f"{path}: no net config (the run's .hydra/config.yaml is not next to it); give every "
            "model.net size, as the run that wrote it had them"
        )
    try:
        plain = as_plain_dict(cfg)
        return NetConfig.from_dict({k: plain.get(k) for k in _NET_KEYS})
    except (ValueError, TypeError) as exn:
        raise ValueError(f"{path}: the net config of {where} is not complete: {exn}") from None


def describe_source(
    path: str | os.PathLike, quick_gelu: bool | None = None, hint: Mapping[str, Any] | None = None
) -> WeightsSource:
    """What ``path`` is and the architecture of its weights, without loading them where the format allows.

    ``quick_gelu`` is needed for a bare state dict (:data:`QUICK_GELU_HELP`); a folder's config decides it.
    ``hint``, a net config (plain or Hydra), gives head counts (invisible in bare weights) and the net of a
    checkpoint whose run folder has no config.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        release = read_release(path, quick_gelu)
        act = release.net_config.vision.act
        return WeightsSource(path, FOLDER, release.weights, release.net_config, act == "quick_gelu")
    if path.suffix == ".ckpt":
        return WeightsSource(path, TOLCLIP_CKPT, path, _checkpoint_net_config(path, hint), None)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(
            f"{path}: not a weights source: expected an open_clip model folder, a state dict "
            f"({', '.join(STATE_DICT_SUFFIXES)}) or a tolclip checkpoint (.ckpt)"
        )
    sd = _shapes(path)  # first: a file that cannot be read at all is the more useful error
    if quick_gelu is None:
        raise ValueError(f"{path}: {QUICK_GELU_HELP} (model.init_quick_gelu)")
    try:
        cfg = infer_net_config(
            sd, bool(quick_gelu), vision_heads=_heads(hint, "vision"), text_heads=_heads(hint, "text")
        )
    except ValueError as exn:
        raise ValueError(f"{path}: {exn}") from None
    return WeightsSource(path, STATE_DICT, path, NetConfig.from_dict(cfg), bool(quick_gelu))


# --------------------------------------------------------------------------------------------------
# The weights' architecture against a configured one


def _fields(cfg: NetConfig) -> dict[str, Any]:
    """Every size as a flat ``{"vision.width": 768, ...}``, defaults included."""
    out: dict[str, Any] = {"embed_dim": cfg.embed_dim}
    for tower in ("vision", "text"):
        out |= {f"{tower}.{k}": v for k, v in dataclasses.asdict(getattr(cfg, tower)).items()}
    return out


def reconcile(
    weights: NetConfig, config: Mapping[str, Any], where: str = "model.net", what: str = "the config"
) -> dict[str, Any]:
    """The sizes ``config`` leaves null, taken from ``weights`` (``{"vision.width": 768, ...}``).

    Every size the config gives must equal the weights' (an absent key means the towers' default), except
    ``vision.image_size`` (positional embeddings are resized). Otherwise one ``ValueError`` names every
    differing field with both values.
    """
    plain = as_plain_dict(config)
    theirs = _fields(weights)
    nulls = {k: theirs[k] for k in theirs if _get(plain, k) is None}
    filled = {k: plain.get(k) for k in _NET_KEYS}
    filled = {**filled, "vision": dict(filled["vision"] or {}), "text": dict(filled["text"] or {})}
    for key, value in nulls.items():
        _set(filled, key, value)
    try:
        ours = _fields(NetConfig.from_dict(filled))
    except ValueError as exn:
        raise ValueError(f"{where}: {exn}") from None
    differ = [
        f"{where}.{k}: {theirs[k]} in the weights, {ours[k]} in {what}"
        for k in theirs
        if k != "vision.image_size" and theirs[k] != ours[k]
    ]
    if differ:
        raise ValueError(
            "the weights' architecture differs from " + what + ": " + "; ".join(differ) + " (leave a size "
            "null, e.g. with model/net=from_weights, to take it from the weights)"
        )
    return nulls


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key; ``_ABSENT`` (not None: null means "from the weights") when not there."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = cfg[part]
    cfg[last] = value


# --------------------------------------------------------------------------------------------------
# Loading


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1, 1 + g^2, width]`` positions for a ``grid`` x ``grid`` patch grid: open_clip's
    ``resize_pos_embed`` (bicubic with antialiasing over the patch grid; the class token's kept)."""
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    patches = patches.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)  # bicubic needs float on CPU
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


def _our_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """The source's weights in our names, through the existing checked loaders."""
    if source.kind == TOLCLIP_CKPT:
        net = load_net(source.weights, source.net_config.to_dict())
    else:
        sd = read_state_dict(source.weights)
        try:
            reject_unsupported(sd)
            net = net_from_open_clip(sd, source.net_config)
        except ValueError as exn:
            raise ValueError(f"{source.weights}: {exn}") from None
    return net.state_dict()


def load_into(net: CLIP, path: str | os.PathLike, quick_gelu: bool | None = None) -> WeightsSource:
    """Load a weights source into ``net`` in place; the architectures must agree (:func:`reconcile`,
    ``vision.image_size`` apart: the positional embedding is resized to the net's patch grid)."""
    target = NetConfig.of(net)
    source = describe_source(path, quick_gelu, hint=target.to_dict())
    reconcile(source.net_config, target.to_dict(), where="net", what="the net")
    sd = _our_state_dict(source)
    grid = target.vision.image_size // target.vision.patch_size
    sd[_POS_EMBED] = resize_pos_embed(sd[_POS_EMBED], grid)
    net.load_state_dict(sd, strict=True)
    return source
