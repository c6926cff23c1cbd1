"""open_clip architectures <-> our net config: what an open_clip ``model_cfg`` or state dict describes in
tolclip's terms (and back), and which open_clip settings our towers cannot represent.

Raises ``ValueError`` naming the setting or key for anything tolclip's CLIP cannot hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from tolclip.models.config import NetConfig, TextConfig, VisionConfig, mlp_ratio_for

__all__ = [
    "CONFIG_FILE",
    "QUICK_GELU_HELP",
    "infer_net_config",
    "net_config_from_model_cfg",
    "open_clip_kwargs",
    "reject_unsupported",
]

CONFIG_FILE = "open_clip_config.json"  # the model_cfg and preprocess_cfg of an open_clip model folder
_HEAD_WIDTH = 64  # open_clip's (and OpenAI's) attention head width: heads = width / 64

QUICK_GELU_HELP = (
    "the activation cannot be read from weights: pass quick_gelu=True for OpenAI-initialised models "
    "(OpenAI CLIP, BioCLIP; open_clip names ending in '-quickgelu') or quick_gelu=False for models trained "
    "from scratch with open_clip's default GELU (e.g. LAION open_clip weights)"
)


def _act(quick_gelu: bool) -> str:
    return "quick_gelu" if quick_gelu else "gelu"


def open_clip_kwargs(cfg: NetConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for ``open_clip.model.CLIP(**kwargs)`` (its ``model_cfg``) describing the same
    architecture as ``CLIP(**cfg)``.

    Needs the same activation in both towers (open_clip has a single ``quick_gelu`` flag).
    """
    cfg = cfg if isinstance(cfg, NetConfig) else NetConfig.from_dict(cfg)
    v, t = cfg.vision, cfg.text
    if v.act != t.act:
        raise ValueError("open_clip needs the same activation in both towers")
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.width,
            "layers": v.layers,
            "head_width": v.width // v.heads,
            "mlp_ratio": v.mlp_ratio,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_ratio,
        },
        "quick_gelu": v.act == "quick_gelu",
    }


# --------------------------------------------------------------------------------------------------
# From a state dict: tensor shapes


def reject_unsupported(sd: Mapping[str, torch.Tensor]) -> None:
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


def _mlp_ratio(sd: Mapping[str, torch.Tensor], prefix: str, width: int) -> float:
    return mlp_ratio_for(_need(sd, prefix + "resblocks.0.mlp.c_fc.weight", 2).shape[0], width)


def _image_geometry(sd: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """(width, patch size, image size) of the image tower, from its patch embedding and positions."""
    conv = _need(sd, "visual.conv1.weight", 4)  # [width, 3, patch, patch]
    width, channels, patch, patch_w = conv.shape
    if channels != 3 or patch != patch_w:
        raise ValueError(f"'visual.conv1.weight' has shape {tuple(conv.shape)}: expected [width, 3, p, p]")
    tokens = _need(sd, "visual.positional_embedding", 2).shape[0]  # class token + grid^2 patches
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"'visual.positional_embedding' has {tokens} positions: not 1 + a square patch grid")
    return width, patch, grid * patch


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
    reject_unsupported(sd)
    width, patch, image_size = _image_geometry(sd)
    vis_proj = _need(sd, "visual.proj", 2)  # [width, embed_dim]
    txt_vocab, txt_width = _need(sd, "token_embedding.weight", 2).shape
    txt_proj = _need(sd, "text_projection", 2)  # [text width, embed_dim]
    if vis_proj.shape[1] != txt_proj.shape[1]:
        raise ValueError(f"image and text embeddings differ: {vis_proj.shape[1]} vs {txt_proj.shape[1]}")
    vision = VisionConfig(
        image_size=image_size,
        patch_size=patch,
        width=width,
        layers=_layers(sd, "visual.transformer.resblocks."),
        heads=vision_heads or _heads(width, "vision"),
        act=_act(quick_gelu),
        mlp_ratio=_mlp_ratio(sd, "visual.transformer.", width),
    )
    text = TextConfig(
        context_length=_need(sd, "positional_embedding", 2).shape[0],
        width=txt_width,
        layers=_layers(sd, "transformer.resblocks."),
        heads=text_heads or _heads(txt_width, "text"),
        act=_act(quick_gelu),
        vocab_size=txt_vocab,
        mlp_ratio=_mlp_ratio(sd, "transformer.", txt_width),
    )
    return NetConfig(vis_proj.shape[1], vision, text).to_dict()


# --------------------------------------------------------------------------------------------------
# From open_clip's model_cfg (open_clip_config.json)

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
# open_clip's defaults (CLIPVisionCfg / CLIPTextCfg), for settings a model_cfg leaves out.
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
    "cast_dtype",
    "output_dict",
}


def _check_settings(cfg: Mapping[str, Any], fixed: Mapping, known: set[str], where: str) -> None:
    for key, value in cfg.items():
        if key in fixed:
            if value not in fixed[key]:
                raise ValueError(f"{where}.{key}={value!r} is not supported by tolclip's CLIP")
        elif key not in known:
            raise ValueError(f"{where}.{key} is an open_clip setting tolclip does not know")


def _square_size(size: Any) -> Any:
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"model_cfg.vision_cfg.image_size={size!r}: only square images are supported")
        return size[0]
    return size


def net_config_from_model_cfg(model_cfg: Mapping[str, Any], quick_gelu: bool) -> NetConfig:
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
    if v["width"] % v["head_width"]:
        raise ValueError(f"vision width {v['width']} is not a multiple of head_width {v['head_width']}")
    vision = VisionConfig(
        image_size=_square_size(v["image_size"]),
        patch_size=v["patch_size"],
        width=v["width"],
        layers=v["layers"],
        heads=v["width"] // v["head_width"],
        act=_act(quick_gelu),
        mlp_ratio=v["mlp_ratio"],
    )
    text = TextConfig(**{k: t[k] for k in _TEXT_DEFAULTS}, act=_act(quick_gelu))
    return NetConfig(model_cfg["embed_dim"], vision, text)
