"""Freezing towers as open_clip's ``--lock-image`` / ``--lock-text`` do (LiT-style training).

A locked tower's parameters get ``requires_grad=False``: they leave the optimiser (``param_groups`` keeps
only trainable ones) and stay bit-identical through training. The last N *groups* may stay trainable,
grouped as open_clip groups them:

* image (``VisionTransformer.lock``): [patch embedding, class token, positional embedding, ln_pre], each
  block but the last, [last block, ln_post], projection;
* text (``lock_text_tower``): [token and positional embeddings], each layer but the last,
  [last layer, final LayerNorm], projection.

``logit_scale`` belongs to neither tower and stays trainable.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from tolclip.models.towers import CLIP

__all__ = ["image_groups", "lock_image_tower", "lock_text_tower", "lock_towers", "text_groups"]

Group = list[nn.Module | nn.Parameter]


def image_groups(net: CLIP) -> list[Group]:
    """The image tower's parameter groups, first to last, as open_clip's VisionTransformer.lock."""
    trunk = net.visual.trunk
    blocks = list(trunk.blocks)
    return [
        [trunk.patch_embed, trunk.cls_token, trunk.pos_embed, trunk.norm_pre],
        *([b] for b in blocks[:-1]),
        [blocks[-1], trunk.norm],
        [net.visual.proj],
    ]


def text_groups(net: CLIP) -> list[Group]:
    """The text tower's parameter groups, first to last, as open_clip's lock_text_tower."""
    hf = net.text.transformer
    hf = getattr(hf, "text_model", hf)  # transformers < 5 nests the modules one level deeper
    layers = list(hf.encoder.layers)
    return [
        [hf.embeddings],
        *([layer] for layer in layers[:-1]),
        [layers[-1], hf.final_layer_norm],
        [net.text.proj],
    ]


def _params(group: Group) -> Iterable[nn.Parameter]:
    for item in group:
        yield from [item] if isinstance(item, nn.Parameter) else item.parameters()


def _lock(tower: nn.Module, groups: list[Group], unlocked: int) -> None:
    for p in tower.parameters():  # everything first, so a parameter no group names stays frozen too
        p.requires_grad = False
    for group in groups[len(groups) - min(unlocked, len(groups)) :]:
        for p in _params(group):
            p.requires_grad = True


def _count(value: int, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a whole number >= 0, got {value!r}")
    return value


def lock_image_tower(net: CLIP, unlocked_groups: int = 0) -> None:
    """Freeze the image tower but its last ``unlocked_groups`` groups (:func:`image_groups`)."""
    _lock(net.visual, image_groups(net), _count(unlocked_groups, "unlocked_groups"))


def lock_text_tower(net: CLIP, unlocked_layers: int = 0) -> None:
    """Freeze the text tower but its last ``unlocked_layers`` groups (:func:`text_groups`)."""
    _lock(net.text, text_groups(net), _count(unlocked_layers, "unlocked_layers"))


def lock_towers(
    net: CLIP,
    lock_image: bool = False,
    lock_image_unlocked_groups: int = 0,
    lock_text: bool = False,
    lock_text_unlocked_layers: int = 0,
) -> None:
    """The ``model.lock_*`` settings applied to ``net``; a group count without its lock is an error."""
    for locked, count, key in (
        (lock_image, lock_image_unlocked_groups, "lock_image"),
        (lock_text, lock_text_unlocked_layers, "lock_text"),
    ):
        if not locked and count:
            unit = "groups" if key == "lock_image" else "layers"
            raise ValueError(f"{key}_unlocked_{unit}={count} has no effect without {key}=true")
    if lock_image:
        _count(lock_image_unlocked_groups, "lock_image_unlocked_groups")
        lock_image_tower(net, lock_image_unlocked_groups)
    if lock_text:
        _count(lock_text_unlocked_layers, "lock_text_unlocked_layers")
        lock_text_tower(net, lock_text_unlocked_layers)
