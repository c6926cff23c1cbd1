"""Checkpoint interop: load open_clip / BioCLIP weights into our towers, load our training checkpoints,
and export our models in the folder format that ``open_clip`` (and so pybioclip) reads.

Formats understood (all local, nothing downloads, nothing executes code when loaded):

* a bare open_clip state dict: ``.safetensors``, or ``.pt`` / ``.bin`` / ``.pth`` read with
  ``torch.load(weights_only=True)``, possibly nested under ``"state_dict"`` and with a DDP ``"module."``
  prefix (open_clip training checkpoints). Its architecture is inferred from tensor shapes; the activation
  cannot be, so ``quick_gelu`` must be given;
* a Hugging Face-style folder as BioCLIP is published: ``open_clip_config.json`` (``model_cfg``,
  ``preprocess_cfg``) + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``. This is also what
  :func:`export_open_clip` writes, readable by ``open_clip.create_model_and_transforms("local-dir:PATH")``;
* our Lightning ``.ckpt`` files (:func:`load_tolclip`), with the net config of their run.

Every model comes back as a :class:`LoadedModel` whose :class:`Preprocess` travels with it.
Bad input raises ``ValueError`` / ``FileNotFoundError`` naming the file and what is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import safetensors.torch
import torch
from omegaconf import DictConfig, OmegaConf

from tolclip.core.constants import CLIP_MEAN, CLIP_STD
from tolclip.core.taxonomy import SpeciesKey
from tolclip.data.transforms import Preprocess
from tolclip.models.classifier import SpeciesClassifier
from tolclip.models.io import load_weights_only
from tolclip.models.open_clip_keys import (
    open_clip_kwargs,
    open_clip_state_dict_to_ours,
    ours_state_dict_to_open_clip,
)
from tolclip.models.towers import CLIP

__all__ = [
    "CONFIG_FILE",
    "LoadedModel",
    "Preprocess",
    "export_open_clip",
    "infer_net_config",
    "load_model",
    "load_net",
    "load_open_clip",
    "load_tolclip",
    "main",
    "run_net_config",
]

CONFIG_FILE = "open_clip_config.json"
SAFETENSORS_FILE = "open_clip_model.safetensors"
BIN_FILE = "open_clip_pytorch_model.bin"
# Weight files of a model folder, in open_clip's order of preference (factory._find_checkpoint_in_dir).
_FOLDER_WEIGHTS = (
    SAFETENSORS_FILE,
    "open_clip_pytorch_model.safetensors",
    BIN_FILE,
    "open_clip_pytorch_model.pth",
)
# Entries of OpenAI's JIT state dict and old open_clip buffers that are not weights.
_NOT_WEIGHTS = ("attn_mask", "input_resolution", "context_length", "vocab_size")
_HEAD_WIDTH = 64  # open_clip's (and OpenAI's) attention head width: heads = width / 64
_VOCAB_SIZE, _MLP_RATIO = 49408, 4.0  # our towers' defaults; net configs omit them when equal

QUICK_GELU_HELP = (
    "the activation cannot be read from weights: pass quick_gelu=True for OpenAI-initialised models "
    "(OpenAI CLIP, BioCLIP; open_clip names ending in '-quickgelu') or quick_gelu=False for models trained "
    "from scratch with open_clip's default GELU (e.g. LAION open_clip weights)"
)


@dataclass
class LoadedModel:
    net: CLIP  # in eval mode, on CPU
    net_config: dict  # kwargs for tolclip.models.towers.CLIP (embed_dim, vision, text)
    preprocess: Preprocess
    name: str  # short display name (file/folder stem)
    source: str  # the path it came from


# --------------------------------------------------------------------------------------------------
# Architecture: from weights, from open_clip's model_cfg, from a built net


def _net_config_of(net: CLIP) -> dict[str, Any]:
    """The net config that rebuilds ``net`` (canonical form: defaults for mlp_ratio / vocab_size omitted)."""
    trunk, text = net.visual.trunk, net.text
    width = trunk.embed_dim
    vision: dict[str, Any] = {
        "image_size": net.visual.image_size,
        "patch_size": trunk.patch_embed.patch_size[0],
        "width": width,
        "layers": len(trunk.blocks),
        "heads": trunk.blocks[0].attn.num_heads,
        "act": net.visual.act,
    }
    mlp = trunk.blocks[0].mlp.fc1.out_features
    if mlp != int(width * _MLP_RATIO):
        vision["mlp_ratio"] = mlp / width
    tc = text.config
    txt: dict[str, Any] = {
        "context_length": text.context_length,
        "width": tc.hidden_size,
        "layers": tc.num_hidden_layers,
        "heads": tc.num_attention_heads,
        "act": text.act,
    }
    if text.vocab_size != _VOCAB_SIZE:
        txt["vocab_size"] = text.vocab_size
    if tc.intermediate_size != int(tc.hidden_size * _MLP_RATIO):
        txt["mlp_ratio"] = tc.intermediate_size / tc.hidden_size
    return {"embed_dim": net.embed_dim, "vision": vision, "text": txt}


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict copy of a net config (OmegaConf resolved), without Hydra's ``_target_``."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    out = OmegaConf.to_container(node, resolve=True)
    out.pop("_target_", None)
    return out


def _canonical(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical form of a net config, through the module it builds (meta device: shapes only, no cost)."""
    kwargs = _plain(cfg)
    try:
        with torch.device("meta"):
            return _net_config_of(CLIP(kwargs["embed_dim"], kwargs["vision"], kwargs["text"]))
    except (AssertionError, KeyError, TypeError, ValueError) as exn:  # timm asserts on bad head counts
        raise ValueError(f"not a valid tolclip net config: {exn!r}") from None


def _reject_unsupported(sd: Mapping[str, torch.Tensor]) -> None:
    """Name the open_clip features our towers cannot represent, before a generic key mismatch would."""
    checks = [
        (lambda k: k == "logit_bias", "a logit_bias (SigLIP-style sigmoid loss)"),
        (lambda k: k.startswith("visual.attn_pool"), "attentional pooling in the image tower"),
        (lambda k: k.startswith(("visual.trunk.", "visual.head.")), "a timm image tower"),
        (
            lambda k: k.startswith(("visual.layer1.", "visual.attnpool.")),
            "a ModifiedResNet (non-ViT) image tower",
        ),
        (lambda k: k.startswith("text."), "a custom (e.g. Hugging Face) text tower"),
        (lambda k: k.startswith("text_projection."), "a text projection with a bias (proj_bias)"),
        (
            lambda k: k.startswith(("text_decoder.", "text_pool")) or k == "cls_emb",
            "a CoCa / embed_cls text tower",
        ),
        (lambda k: ".ls_1." in k or ".ls_2." in k, "layer scale (ls_init_value)"),
    ]
    for matches, what in checks:
        hits = [k for k in sd if matches(k)]
        if hits:
            raise ValueError(f"the model has {what} (key {hits[0]!r}), which tolclip's CLIP cannot represent")
    if sd and all(k.startswith("net.") for k in sd):
        raise ValueError(
            "this looks like a tolclip training checkpoint ('net.' keys): load it as kind 'tolclip'"
        )


def _need(sd: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"missing key {key!r}: not an open_clip ViT CLIP state dict")
    if sd[key].ndim != ndim:
        raise ValueError(f"{key!r} has shape {tuple(sd[key].shape)}, expected {ndim} dimensions")
    return sd[key]


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if not found or found != set(range(len(found))):
        raise ValueError(
            f"transformer blocks {prefix}N. are missing or not numbered 0..N-1 (found {sorted(found)})"
        )
    return len(found)


def _heads(width: int, tower: str) -> int:
    if width % _HEAD_WIDTH:
        raise ValueError(
            f"{tower} width {width} is not a multiple of {_HEAD_WIDTH}: the number of attention heads cannot be "
            f"inferred from a bare state dict; load a folder whose {CONFIG_FILE} gives it"
        )
    return width // _HEAD_WIDTH


def _mlp_ratio(hidden: int, width: int, key: str) -> dict[str, float]:
    ratio = hidden / width
    if int(width * ratio) != hidden:  # how timm / HF size the MLP from the ratio
        raise ValueError(f"{key!r}: MLP width {hidden} is not representable as width {width} x mlp_ratio")
    return {} if hidden == int(width * _MLP_RATIO) else {"mlp_ratio": ratio}


def infer_net_config(
    open_clip_sd: Mapping[str, torch.Tensor],
    quick_gelu: bool,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> dict[str, Any]:
    """Net config (``tolclip.models.towers.CLIP`` kwargs) of an open_clip ViT CLIP state dict, from tensor shapes.

    Heads are not visible in weights: they default to width / 64 as in every open_clip ViT config (pass them
    when known). Works on meta tensors. Raises ``ValueError`` for anything our towers cannot represent.
    """
    if quick_gelu is None:
        raise ValueError(QUICK_GELU_HELP)
    sd = open_clip_sd
    _reject_unsupported(sd)
    conv = _need(sd, "visual.conv1.weight", 4)  # [width, 3, patch, patch]
    width, channels, patch, patch_w = conv.shape
    if channels != 3 or patch != patch_w:
        raise ValueError(f"'visual.conv1.weight' has shape {tuple(conv.shape)}: expected [width, 3, p, p]")
    tokens = _need(sd, "visual.positional_embedding", 2).shape[0]  # class token + grid^2 patches
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"'visual.positional_embedding' has {tokens} positions: not 1 + a square patch grid")
    vis_proj = _need(sd, "visual.proj", 2)  # [width, embed_dim]
    txt_vocab, txt_width = _need(sd, "token_embedding.weight", 2).shape
    txt_proj = _need(sd, "text_projection", 2)  # [text width, embed_dim]
    if vis_proj.shape[1] != txt_proj.shape[1]:
        raise ValueError(f"image and text embeddings differ: {vis_proj.shape[1]} vs {txt_proj.shape[1]}")
    act = "quick_gelu" if quick_gelu else "gelu"
    vision = {
        "image_size": grid * patch,
        "patch_size": patch,
        "width": width,
        "layers": _layers(sd, "visual.transformer.resblocks."),
        "heads": vision_heads or _heads(width, "vision"),
        "act": act,
    }
    key = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    vision.update(_mlp_ratio(_need(sd, key, 2).shape[0], width, key))
    text: dict[str, Any] = {
        "context_length": _need(sd, "positional_embedding", 2).shape[0],
        "width": txt_width,
        "layers": _layers(sd, "transformer.resblocks."),
        "heads": text_heads or _heads(txt_width, "text"),
        "act": act,
    }
    if txt_vocab != _VOCAB_SIZE:
        text["vocab_size"] = txt_vocab
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    text.update(_mlp_ratio(_need(sd, key, 2).shape[0], txt_width, key))
    return {"embed_dim": vis_proj.shape[1], "vision": vision, "text": text}


# open_clip model_cfg settings (CLIPVisionCfg / CLIPTextCfg) that change the computation in ways our towers
# do not follow: accepted only at these values (open_clip's defaults).
_NO_FEATURE = {
    "ls_init_value": (None,),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
    "block_type": (None, "default"),
    "qk_norm": (False,),
    "scaled_cosine_attn": (False,),
    "scale_heads": (False,),
    "scale_attn_inner": (False,),
    "scale_attn": (False,),
    "scale_fc": (False,),
    "final_ln_after_pool": (False,),
}
_VISION_FIXED = {
    **_NO_FEATURE,
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable",),
    "pool_type": ("tok",),
    "timm_model_name": (None,),
}
_TEXT_FIXED = {
    **_NO_FEATURE,
    "hf_model_name": (None,),
    "hf_tokenizer_name": (None, ""),
    "tokenizer_mode": (None,),
    "tokenizer_kwargs": (None, {}),
    "embed_cls": (False,),
    "no_causal_mask": (False,),
    "pool_type": ("argmax",),
    "proj_bias": (False,),
    "proj_type": ("linear",),
}
# Settings without effect on inference (training-only, or read only together with a rejected option).
_VISION_IGNORED = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads"} | {
    f"timm_{k}" for k in ("model_pretrained", "pool", "proj", "proj_bias", "drop", "drop_path")
}
_TEXT_IGNORED = {"output_tokens", "pad_id", "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_VISION_DEFAULTS = {
    "layers": 12,
    "width": 768,
    "head_width": 64,
    "mlp_ratio": 4.0,
    "patch_size": 16,
    "image_size": 224,
}
_TEXT_DEFAULTS = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
}
_TOP_FIXED = {"custom_text": (False,), "init_logit_bias": (None,)}
_TOP_KNOWN = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "init_logit_scale",
    "nonscalar_logit_scale",
}
_TOP_KNOWN |= {"cast_dtype", "output_dict"}


def _check_settings(cfg: Mapping[str, Any], fixed: Mapping, known: set[str], where: str) -> None:
    for key, value in cfg.items():
        if key in fixed:
            if value not in fixed[key]:
                raise ValueError(f"{where}.{key}={value!r} is not supported by tolclip's CLIP")
        elif key not in known:
            raise ValueError(f"{where}.{key} is an open_clip setting tolclip does not know")


def _net_config_from_model_cfg(model_cfg: Mapping[str, Any], quick_gelu: bool) -> dict[str, Any]:
    """Net config for an open_clip ``model_cfg`` (as in open_clip_config.json), if our towers can represent it."""
    _check_settings(model_cfg, _TOP_FIXED, _TOP_KNOWN, "model_cfg")
    if "embed_dim" not in model_cfg:
        raise ValueError("model_cfg has no embed_dim")
    vcfg, tcfg = dict(model_cfg.get("vision_cfg") or {}), dict(model_cfg.get("text_cfg") or {})
    _check_settings(vcfg, _VISION_FIXED, _VISION_IGNORED | set(_VISION_DEFAULTS), "model_cfg.vision_cfg")
    _check_settings(tcfg, _TEXT_FIXED, _TEXT_IGNORED | set(_TEXT_DEFAULTS), "model_cfg.text_cfg")
    v, t = {**_VISION_DEFAULTS, **vcfg}, {**_TEXT_DEFAULTS, **tcfg}
    if not isinstance(v["layers"], int):
        raise ValueError(
            f"model_cfg.vision_cfg.layers={v['layers']!r}: a ModifiedResNet (non-ViT) image tower"
        )
    size = v["image_size"]
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"model_cfg.vision_cfg.image_size={size!r}: only square images are supported")
        size = size[0]
    if v["width"] % v["head_width"]:
        raise ValueError(f"vision width {v['width']} is not a multiple of head_width {v['head_width']}")
    if t["width"] % t["heads"]:
        raise ValueError(f"text width {t['width']} is not a multiple of heads {t['heads']}")
    act = "quick_gelu" if quick_gelu else "gelu"
    vision = {"image_size": size, "patch_size": v["patch_size"], "width": v["width"], "layers": v["layers"]}
    vision.update(heads=v["width"] // v["head_width"], act=act, mlp_ratio=v["mlp_ratio"])
    text = {k: t[k] for k in ("context_length", "vocab_size", "width", "layers", "heads", "mlp_ratio")}
    text["act"] = act
    return _canonical({"embed_dim": model_cfg["embed_dim"], "vision": vision, "text": text})


# --------------------------------------------------------------------------------------------------
# Reading files


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with code/ and constants.pkl; torch.save zips have neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch.save file, unwrapped from 'state_dict' / 'module.'."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        try:
            obj: Any = safetensors.torch.load_file(path, device="cpu")
        except Exception as exn:  # safetensors raises its own error type, or OSError
            raise ValueError(f"{path} is not a readable safetensors file: {exn}") from None
    else:
        if _is_torchscript(path):
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


def _folder_weights(folder: Path) -> Path:
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder} has {CONFIG_FILE} but no weights file (expected one of {list(_FOLDER_WEIGHTS)})"
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


def _check_keys(sd: Mapping[str, torch.Tensor], net_config: Mapping[str, Any]) -> None:
    """Compare an open_clip state dict with the one the architecture expects (names in open_clip's terms)."""
    with torch.device("meta"):
        expected = {
            k: v.shape for k, v in ours_state_dict_to_open_clip(CLIP(**net_config).state_dict()).items()
        }
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
            "weights do not match the architecture " + _describe(net_config) + ": " + ", ".join(problems)
        )


def _describe(cfg: Mapping[str, Any]) -> str:
    v, t = cfg["vision"], cfg["text"]
    return (
        f"[ViT {v['width']}w x {v['layers']}, patch {v['patch_size']}, {v['image_size']} px; "
        f"text {t['width']}w x {t['layers']}, context {t['context_length']}; embed {cfg['embed_dim']}; {v['act']}]"
    )


def _net_from_open_clip(sd: dict[str, torch.Tensor], net_config: dict[str, Any]) -> CLIP:
    sd = {k: v for k, v in sd.items() if k not in _NOT_WEIGHTS}
    if "logit_scale" in sd and sd["logit_scale"].numel() == 1:  # nonscalar_logit_scale stores shape [1]
        sd["logit_scale"] = sd["logit_scale"].reshape(())
    _check_keys(sd, net_config)
    net = CLIP(**net_config)
    net.load_state_dict(open_clip_state_dict_to_ours(sd), strict=True)
    return net.eval()


def load_open_clip(path: str | os.PathLike, quick_gelu: bool | None = None) -> LoadedModel:
    """Load open_clip weights (a state dict file, or a folder with open_clip_config.json) into our towers.

    ``quick_gelu`` is needed for a bare state dict (see :data:`QUICK_GELU_HELP`); a folder's config decides it
    (an explicit value that disagrees is an error).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    preprocess_cfg: Mapping[str, Any] = {}
    if path.is_dir():
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{path} is a folder without {CONFIG_FILE}: not an open_clip model folder"
            )
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
            net_config = _net_config_from_model_cfg(model_cfg, quick_gelu)
        except ValueError as exn:
            raise ValueError(f"{config_path}: {exn}") from None
        preprocess_cfg = cfg.get("preprocess_cfg") or {}
        weights = _folder_weights(path)
    else:
        weights, net_config = path, None
    sd = _read_tensors(weights)  # first: a file that cannot be read at all is the more useful error
    if net_config is None and quick_gelu is None:
        raise ValueError(f"{path}: {QUICK_GELU_HELP}")
    try:
        _reject_unsupported(sd)
        if net_config is None:
            net_config = infer_net_config(sd, bool(quick_gelu))
        net = _net_from_open_clip(sd, net_config)
        preprocess = Preprocess.from_open_clip_cfg(preprocess_cfg, net_config["vision"]["image_size"])
    except ValueError as exn:
        raise ValueError(f"{weights}: {exn}") from None
    return LoadedModel(
        net, net_config, preprocess, name=path.stem if path.is_file() else path.name, source=str(path)
    )


# --------------------------------------------------------------------------------------------------
# Our Lightning checkpoints


def run_net_config(ckpt_path: Path, fallback: DictConfig | None) -> DictConfig | None:
    """The `model.net` config the checkpoint was trained with, when its run directory has one."""
    parents = Path(ckpt_path).resolve().parents
    saved = parents[1] / ".hydra" / "config.yaml" if len(parents) > 1 else None
    if saved is not None and saved.exists():
        return OmegaConf.load(saved).model.net
    return fallback


def _build(net_cfg: Mapping[str, Any]) -> torch.nn.Module:
    if "_target_" in net_cfg:  # a Hydra model config, as training writes it
        return hydra.utils.instantiate(net_cfg, _convert_="all")
    return CLIP(**_plain(net_cfg))


def load_net(ckpt_path: str | Path, net_cfg: Mapping[str, Any]) -> torch.nn.Module:
    """Build the net from config and load the weights of a Lightning checkpoint into it."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if _is_torchscript(path):
        raise ValueError(f"{path} is a TorchScript archive, not a Lightning checkpoint")
    ckpt = load_weights_only(path, "checkpoint")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
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
    plain = _plain(cfg)
    preprocess = Preprocess(image_size=net.visual.image_size, mean=CLIP_MEAN, std=CLIP_STD)
    return LoadedModel(net, plain, preprocess, name=path.stem, source=str(path))


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


# --------------------------------------------------------------------------------------------------
# Export


def export_open_clip(
    loaded_or_net: LoadedModel | CLIP,
    out_dir: str | os.PathLike,
    net_config: Mapping[str, Any] | None = None,
    preprocess: Preprocess | None = None,
    *,
    write_bin: bool = False,
) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (+ ``.bin`` with ``write_bin``).

    The folder loads with ``open_clip.create_model_and_transforms("local-dir:" + out_dir)``. The architecture
    is read from the net itself; a given ``net_config`` must describe the same one.
    """
    if isinstance(loaded_or_net, LoadedModel):
        net = loaded_or_net.net
        preprocess = preprocess or loaded_or_net.preprocess
    elif isinstance(loaded_or_net, CLIP):
        net = loaded_or_net
    else:
        raise TypeError(f"expected a LoadedModel or tolclip.models.towers.CLIP, got {type(loaded_or_net).__name__}")
    cfg = _net_config_of(net)
    if net_config is not None and _canonical(net_config) != cfg:
        raise ValueError(f"net_config {_plain(net_config)} does not describe the net ({cfg})")
    preprocess = preprocess or Preprocess(
        image_size=cfg["vision"]["image_size"], mean=CLIP_MEAN, std=CLIP_STD
    )
    if preprocess.image_size != cfg["vision"]["image_size"]:
        raise ValueError(
            f"preprocess image_size {preprocess.image_size} != model's {cfg['vision']['image_size']}"
        )
    model_cfg = open_clip_kwargs(cfg)  # raises if the towers' activations differ (open_clip has one flag)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().contiguous() for k, v in ours_state_dict_to_open_clip(net.state_dict()).items()
    }
    safetensors.torch.save_file(state, out / SAFETENSORS_FILE, metadata={"format": "pt"})
    if write_bin:
        torch.save(state, out / BIN_FILE)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess.open_clip_cfg()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------
# CLI


def _guess_kind(path: Path) -> str:
    return "tolclip" if path.suffix == ".ckpt" else "open_clip"


def _read_net_config(path: str) -> dict[str, Any]:
    """A net config from a YAML file: a model config (``net:``), a run config (``model.net``) or the net itself."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"net config {p} does not exist")
    cfg = OmegaConf.load(p)
    if "model" in cfg and "net" in cfg.model:
        cfg = cfg.model.net
    elif "net" in cfg:
        cfg = cfg.net
    return _plain(cfg)


def _load_for_cli(args: argparse.Namespace) -> LoadedModel:
    spec: dict[str, Any] = {"kind": args.kind or _guess_kind(Path(args.source)), "path": args.source}
    if args.quick_gelu is not None:
        spec["quick_gelu"] = args.quick_gelu
    if args.net_config:
        spec["net_config"] = _read_net_config(args.net_config)
    return load_model(spec)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tolclip-convert", description="Convert between tolclip checkpoints and open_clip model folders."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write an open_clip model folder (local-dir:) from a checkpoint")
    export.add_argument("source", help="our Lightning .ckpt, or any open_clip checkpoint / folder")
    export.add_argument("out_dir")
    export.add_argument("--bin", action="store_true", help=f"also write {BIN_FILE}")
    check = sub.add_parser("check", help="load a checkpoint and print its architecture")
    check.add_argument("source")
    for p in (export, check):
        p.add_argument(
            "--kind", choices=("tolclip", "open_clip"), help="default: tolclip for .ckpt, else open_clip"
        )
        p.add_argument(
            "--net-config", help="YAML with the net config (tolclip checkpoints outside their run)"
        )
        p.add_argument(
            "--quick-gelu",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="activation of a bare state dict",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exn:  # argparse has printed its message
        return int(exn.code or 0)
    try:
        loaded = _load_for_cli(args)
        if args.command == "export":
            out = export_open_clip(loaded, args.out_dir, write_bin=args.bin)
            print(f"wrote {out} (load with open_clip.create_model_and_transforms('local-dir:{out}'))")
        else:
            report = {
                "name": loaded.name,
                "source": loaded.source,
                "net_config": loaded.net_config,
                "parameters": sum(p.numel() for p in loaded.net.parameters()),
                "preprocess": asdict(loaded.preprocess),
            }
            print(json.dumps(report, indent=2))
    except (ValueError, FileNotFoundError, OSError) as exn:
        print(f"tolclip-convert: error: {exn}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


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
            "CLIP checkpoints load with tolclip.models.interop.load_net"
        )
    classes = [tuple(c) for c in hparams["species_classes"]]
    net = SpeciesClassifier(hparams["net"]["embed_dim"], hparams["net"]["vision"], len(classes))
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.eval(), classes
