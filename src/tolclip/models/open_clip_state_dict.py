"""Map open_clip ``CLIP`` state dicts (OpenAI ViT-B/16, BioCLIP layout) to :class:`tolclip.models.towers.CLIP` and back.

Pure renaming/reshaping, no numerical change: open_clip's fused attention ``in_proj`` is split into HF's
q/k/v projections, ``[width, embed]`` projection matrices (used as ``x @ proj``) become ``nn.Linear``
weights (transposed), and timm keeps the class token / positional embedding with leading singleton dims.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["open_clip_state_dict_to_ours", "ours_state_dict_to_open_clip"]

# (open_clip block suffix, ours vision block suffix, ours text layer suffix)
_BLOCK = [
    ("ln_1.weight", "norm1.weight", "layer_norm1.weight"),
    ("ln_1.bias", "norm1.bias", "layer_norm1.bias"),
    ("ln_2.weight", "norm2.weight", "layer_norm2.weight"),
    ("ln_2.bias", "norm2.bias", "layer_norm2.bias"),
    ("attn.out_proj.weight", "attn.proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "attn.proj.bias", "self_attn.out_proj.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight", "mlp.fc1.weight"),
    ("mlp.c_fc.bias", "mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight", "mlp.fc2.weight"),
    ("mlp.c_proj.bias", "mlp.fc2.bias", "mlp.fc2.bias"),
]
_VIS = "visual.trunk."
_TXT = "text.transformer."
_FLAT = [  # open_clip name, our name (identical tensors)
    ("visual.conv1.weight", _VIS + "patch_embed.proj.weight"),
    ("visual.ln_pre.weight", _VIS + "norm_pre.weight"),
    ("visual.ln_pre.bias", _VIS + "norm_pre.bias"),
    ("visual.ln_post.weight", _VIS + "norm.weight"),
    ("visual.ln_post.bias", _VIS + "norm.bias"),
    ("token_embedding.weight", _TXT + "embeddings.token_embedding.weight"),
    ("positional_embedding", _TXT + "embeddings.position_embedding.weight"),
    ("ln_final.weight", _TXT + "final_layer_norm.weight"),
    ("ln_final.bias", _TXT + "final_layer_norm.bias"),
    ("logit_scale", "logit_scale"),
]
_OC_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_OURS_BLOCK = re.compile(r"^(?:visual\.trunk\.blocks|text\.transformer\.encoder\.layers)\.(\d+)\.(.+)$")


def open_clip_state_dict_to_ours(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an open_clip ``CLIP.state_dict()`` to :class:`tolclip.models.towers.CLIP` names and shapes.

    Raises ``KeyError`` on keys it does not know (e.g. ``logit_bias``, attention pooling) rather than
    silently dropping them; the non-persistent ``attn_mask`` buffer is ignored.
    """
    out: dict[str, torch.Tensor] = {}
    flat = dict(_FLAT)
    for k, v in sd.items():
        if k == "attn_mask":
            continue
        if k in flat:
            out[flat[k]] = v
        elif k == "visual.class_embedding":
            out[_VIS + "cls_token"] = v.reshape(1, 1, -1)
        elif k == "visual.positional_embedding":
            out[_VIS + "pos_embed"] = v.unsqueeze(0)
        elif k == "visual.proj":
            out["visual.proj.weight"] = v.t().contiguous()
        elif k == "text_projection":
            out["text.proj.weight"] = v.t().contiguous()
        elif m := _OC_BLOCK.match(k):
            vis, i, rest = m.group(1) is not None, m.group(2), m.group(3)
            prefix = f"{_VIS}blocks.{i}." if vis else f"{_TXT}encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                if vis:
                    out[prefix + f"attn.qkv.{kind}"] = v
                else:
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0), strict=True):
                        out[prefix + f"self_attn.{name}.{kind}"] = part.contiguous()
            else:
                table = {oc: (ov if vis else ot) for oc, ov, ot in _BLOCK}
                out[prefix + table[rest]] = v
        else:
            raise KeyError(f"unexpected open_clip key {k!r}")
    return out


def ours_state_dict_to_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`open_clip_state_dict_to_ours` (our ``CLIP.state_dict()`` -> open_clip names)."""
    out: dict[str, torch.Tensor] = {}
    flat = {ours: oc for oc, ours in _FLAT}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in flat:
            out[flat[k]] = v
        elif k == _VIS + "cls_token":
            out["visual.class_embedding"] = v.reshape(-1)
        elif k == _VIS + "pos_embed":
            out["visual.positional_embedding"] = v.squeeze(0)
        elif k == "visual.proj.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k == "text.proj.weight":
            out["text_projection"] = v.t().contiguous()
        elif m := _OURS_BLOCK.match(k):
            vis, i, rest = k.startswith("visual."), m.group(1), m.group(2)
            prefix = f"visual.transformer.resblocks.{i}." if vis else f"transformer.resblocks.{i}."
            if vis and rest.startswith("attn.qkv."):
                out[prefix + "attn.in_proj_" + rest.rsplit(".", 1)[1]] = v
            elif not vis and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, name, kind = rest.split(".")
                qkv.setdefault((prefix, kind), {})[name] = v
            else:
                table = {(ov if vis else ot): oc for oc, ov, ot in _BLOCK}
                out[prefix + table[rest]] = v
        else:
            raise KeyError(f"unexpected tolclip key {k!r}")
    for (prefix, kind), parts in qkv.items():
        out[prefix + f"attn.in_proj_{kind}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0
        )
    return out
