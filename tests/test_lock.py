"""Freezing towers (`model.lock_image`, `model.lock_text`) as open_clip's `--lock-image` / `--lock-text`:
the same parameters freeze as in open_clip, frozen ones leave the optimiser and stay bit-identical through
training, and the ones left unlocked train."""

from __future__ import annotations

from typing import Any

import open_clip
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tolclip.models.freeze import lock_towers
from tolclip.models.open_clip_config import open_clip_kwargs
from tolclip.models.open_clip_state_dict import ours_state_dict_to_open_clip
from tolclip.models.towers import CLIP
from tolclip.training.run import train

from helpers import make_cfg, shard_overrides

pytestmark = pytest.mark.usefixtures("single_thread")

# Three blocks per tower: a first, a middle and a last group of blocks.
NET = {
    "embed_dim": 16,
    "vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 3, "heads": 1},
    "text": {"context_length": 16, "width": 32, "layers": 3, "heads": 1},
}


def trainable_in_open_clip_names(net: CLIP) -> dict[str, bool]:
    """Our requires_grad flags under open_clip's parameter names (q/k/v share their in_proj's flag)."""
    flags = {n: torch.full(p.shape, float(p.requires_grad)) for n, p in net.named_parameters()}
    out = {}
    for name, value in ours_state_dict_to_open_clip(flags).items():
        assert value.min() == value.max(), f"{name} is half frozen"
        out[name] = bool(value.max())
    return out


@pytest.mark.parametrize(
    "groups,layers", [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (9, 9), (2, 0), (0, 3)]
)
def test_the_same_parameters_freeze_as_in_open_clip(groups: int, layers: int) -> None:
    theirs = open_clip.model.CLIP(**open_clip_kwargs(NET))
    theirs.lock_image_tower(unlocked_groups=groups)
    theirs.lock_text_tower(unlocked_layers=layers)
    ours = CLIP(**NET)
    lock_towers(ours, True, groups, True, layers)
    assert trainable_in_open_clip_names(ours) == {n: p.requires_grad for n, p in theirs.named_parameters()}
    assert ours.logit_scale.requires_grad


def test_bad_lock_settings_are_clear_errors() -> None:
    net = CLIP(**NET)
    with pytest.raises(
        ValueError, match="lock_image_unlocked_groups=2 has no effect without lock_image=true"
    ):
        lock_towers(net, lock_image_unlocked_groups=2)
    with pytest.raises(ValueError, match="lock_text_unlocked_layers=1 has no effect without lock_text=true"):
        lock_towers(net, lock_text_unlocked_layers=1)
    with pytest.raises(ValueError, match="lock_text_unlocked_layers must be a whole number >= 0, got -1"):
        lock_towers(net, lock_text=True, lock_text_unlocked_layers=-1)
    assert all(p.requires_grad for p in net.parameters())


class Snapshot(Callback):
    """The net's parameters when training starts."""

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.start = {n: p.detach().clone() for n, p in module.net.named_parameters()}


@pytest.mark.parametrize(
    "locks",
    [
        ["model.lock_image=true", "model.lock_image_unlocked_groups=2"],  # last block + ln_post, proj
        ["model.lock_text=true", "model.lock_text_unlocked_layers=3"],  # last two layers, final LN, proj
        ["model.lock_image=true", "model.lock_text=true"],  # only the temperature trains
    ],
    ids=["image", "text", "both"],
)
def test_frozen_weights_stay_identical_through_training(small_shards, tmp_path, locks: list[str]) -> None:
    sizes = ["model.net.vision.layers=3", "model.net.text.layers=3"]
    cfg = make_cfg(
        tmp_path,
        [
            *shard_overrides(small_shards),
            *sizes,
            *locks,
            "trainer.max_epochs=2",
            f"+callbacks.snap._target_={__name__}.Snapshot",
        ],
    )
    out = train(cfg)
    assert out["trainer"].global_step == 4
    net = out["model"].net
    start = next(c for c in out["trainer"].callbacks if isinstance(c, Snapshot)).start
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and "logit_scale" not in frozen
    for name, p in net.named_parameters():
        if name in frozen:
            assert torch.equal(p, start[name]), f"{name} is frozen but changed"
        else:
            assert not torch.equal(p, start[name]), f"{name} is trainable but did not change"
    in_optimiser = {id(p) for g in out["trainer"].optimizers[0].param_groups for p in g["params"]}
    assert in_optimiser == {id(p) for n, p in net.named_parameters() if n not in frozen}
    # the first locked groups are frozen, the last unlocked ones train
    assert (
        "visual.trunk.pos_embed" in frozen or "text.transformer.embeddings.token_embedding.weight" in frozen
    )
    if "model.lock_image_unlocked_groups=2" in locks:
        assert "visual.trunk.blocks.1.mlp.fc1.weight" in frozen and "visual.trunk.norm.weight" not in frozen
    if "model.lock_text_unlocked_layers=3" in locks:
        assert "text.transformer.encoder.layers.0.mlp.fc1.weight" in frozen
        assert "text.transformer.encoder.layers.1.mlp.fc1.weight" not in frozen
