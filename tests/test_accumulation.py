"""Accumulation that keeps every negative (training/feature_cache.py and CLIPLitModule's accum_freq):
K micro-batches give the loss and gradients of the one big batch, alone and under 2-process DDP."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn

from tolclip.models.loss import ClipLoss
from tolclip.models.towers import CLIP
from tolclip.training.feature_cache import feature_cache_step, split_batch
from tolclip.training.run import train

from accumulation_ddp import WORLD, B, K, TwoTower, batch, ddp_worker, grads
from helpers import MICRO, free_port, make_cfg, shard_overrides, spawn_ranks

TINY = dict(
    embed_dim=8,
    vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=2),
    text=dict(context_length=12, vocab_size=64, width=16, layers=1, heads=2),
)
DDP_TIMEOUT_S = 90.0


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return CLIP(**TINY).double()


def big_batch_step(net: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict:
    loss = ClipLoss()(*net(images, tokens))
    loss.backward()
    return {"loss": loss.detach(), "grads": grads(net)}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_four_micro_batches_give_the_big_batch_loss_and_gradients():
    images, tokens = batch(K * B)
    ref = big_batch_step(tiny_net(), images, tokens)
    net = tiny_net()
    out = feature_cache_step(net, ClipLoss(), list(split_batch(images, tokens, K)))
    assert out.samples == K * B
    assert abs(out.loss.item() - ref["loss"].item()) <= 1e-8
    got = grads(net)
    assert "logit_scale" in got and got.keys() == ref["grads"].keys()
    assert max_diff(got, ref["grads"]) <= 1e-8
    # the logit scale's gradient is taken once, not once per micro-batch
    assert abs(got["logit_scale"] - ref["grads"]["logit_scale"]).item() <= 1e-8


def test_plain_accumulation_would_change_the_objective():
    # What Lightning's accumulate_grad_batches computes: the mean of K micro-batch losses, each with
    # only its own negatives. It is measurably not the big-batch gradient the feature cache gives.
    images, tokens = batch(K * B)
    ref = big_batch_step(tiny_net(), images, tokens)
    net = tiny_net()
    for part in split_batch(images, tokens, K):
        (ClipLoss()(*net(*part)) / K).backward()
    assert max_diff(grads(net), ref["grads"]) > 1e-3


def test_a_stochastic_forward_sees_the_same_randomness_in_both_passes():
    net = tiny_net()
    net.set_patch_dropout(0.5)  # random patches dropped in training: different on every forward
    images, tokens = batch(K * B)
    losses: list[float] = []

    def recording_loss(*args: torch.Tensor) -> torch.Tensor:
        loss = ClipLoss()(*args)
        losses.append(loss.item())
        return loss

    torch.manual_seed(5)
    feature_cache_step(net, recording_loss, list(split_batch(images, tokens, K)))
    after = torch.rand(1)
    # Every pass re-creates the cached features of its micro-batch exactly, so all K losses agree.
    assert len(losses) == K and max(losses) - min(losses) <= 1e-12
    # and the generator ends where K plain forwards leave it
    torch.manual_seed(5)
    with torch.no_grad():
        for part in split_batch(images, tokens, K):
            net(*part)
    assert torch.equal(torch.rand(1), after)


def test_micro_batches_of_different_sizes_still_give_the_big_batch():
    images, tokens = batch(12)
    ref = big_batch_step(tiny_net(), images, tokens)
    net = tiny_net()
    out = feature_cache_step(net, ClipLoss(), [(images[:5], tokens[:5]), (images[5:], tokens[5:])])
    assert out.samples == 12 and abs(out.loss.item() - ref["loss"].item()) <= 1e-8
    assert max_diff(grads(net), ref["grads"]) <= 1e-8
    with pytest.raises(ValueError, match="does not split into 5"):
        list(split_batch(images, tokens, 5))


# --- 2-process gloo DDP (accumulation_ddp.py): K micro-batches per rank = one batch of WORLD*K*B ---


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp_accum")
    spawn_ranks(ddp_worker, (free_port(), str(out_dir)), WORLD, DDP_TIMEOUT_S)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("local_loss", [True, False])
def test_ddp_accumulation_matches_the_global_big_batch(ddp_results: list[dict], local_loss: bool):
    ref = big_batch_step(TwoTower(), *batch(WORLD * K * B))
    losses = torch.stack([r[local_loss]["loss"] for r in ddp_results])
    # local_loss: each rank's loss covers its own K*B rows, equal shares, so the global loss is the mean
    assert abs(losses.mean().item() - ref["loss"].item()) <= 1e-8
    for rank_results in ddp_results:
        # DDP averaged once, after the last pass: the same big-batch gradient on every rank
        assert max_diff(rank_results[local_loss]["grads"], ref["grads"]) <= 1e-8


# --- through Lightning: tolclip.training.run.train with model.accum_freq ----------------------------


def run_overrides(shards: Path, *extra: str) -> list[str]:
    """Micro model on small shards (16 samples an epoch, same order at any batch size), no eval sets."""
    return [
        *(o for o in shard_overrides(shards) if not o.startswith("+data.eval_sets")),
        "data.text_type=mixed",  # one caption type drawn per optimiser step, whatever the accumulation
        "trainer.precision=64-true",  # float64: the two runs may differ only by rounding
        *extra,
    ]


def final_weights(out: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in out["model"].net.state_dict().items()}


def test_lightning_run_with_accum_freq_ends_with_the_big_batch_weights(small_shards, tmp_path):
    big = train(
        make_cfg(tmp_path / "big", run_overrides(small_shards, "data.batch_size=8", "trainer.max_epochs=2"))
    )
    acc = train(
        make_cfg(
            tmp_path / "acc",
            run_overrides(small_shards, "data.batch_size=2", "model.accum_freq=4", "trainer.max_epochs=2"),
        )
    )
    # 16 samples an epoch: 2 optimiser steps of 8 samples in both runs, for 2 epochs
    assert big["trainer"].global_step == acc["trainer"].global_step == 4
    assert not acc["model"].automatic_optimization
    a, b = final_weights(acc), final_weights(big)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-9
    start = final_weights({"model": hydra.utils.instantiate(make_cfg(tmp_path / "init", MICRO).model)})
    assert any(not torch.equal(a[k], start[k].to(a[k].dtype)) for k in a)  # and training moved them
    # the same schedule: the learning rate reached after 4 steps is the same
    lrs = [r["trainer"].optimizers[0].param_groups[0]["lr"] for r in (acc, big)]
    assert lrs[0] == pytest.approx(lrs[1], rel=1e-12)
    assert acc["metrics"]["train/loss"] == pytest.approx(big["metrics"]["train/loss"], rel=1e-9)


def test_leftover_batches_are_dropped_with_a_warning_and_grad_clip_applies(
    small_shards, tmp_path, monkeypatch
):
    clipped: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = real_clip(parameters, max_norm, *args, **kwargs)
        clipped.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])).item())
        assert total > max_norm  # the test's clip value is small enough to bite
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    # 8 batches an epoch, 3 per optimiser step: 2 steps, and the last 2 batches are dropped
    cfg = make_cfg(
        tmp_path,
        run_overrides(
            small_shards,
            "data.batch_size=2",
            "model.accum_freq=3",
            "model.grad_clip=0.01",
            "trainer.max_epochs=1",
        ),
    )
    with pytest.warns(UserWarning, match=r"dropped the last 2 batch\(es\).*model.accum_freq=3"):
        out = train(cfg)
    assert out["trainer"].global_step == 2
    assert len(clipped) == 2 and max(clipped) <= 0.01 * (1 + 1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.accumulate_grad_batches=2"], "use model.accum_freq instead"),
        (["trainer.accumulate_grad_batches=2", "model.accum_freq=2"], "use model.accum_freq instead"),
        (["trainer.gradient_clip_val=1.0", "model.accum_freq=2"], "set model.grad_clip only"),
        (["model.accum_freq=0"], "model.accum_freq must be a whole number >= 1"),
        (["model.grad_clip=-1"], "model.grad_clip must be a positive number or null"),
    ],
)
def test_misconfigured_accumulation_is_a_clear_error(small_shards, tmp_path, overrides, message):
    cfg = make_cfg(tmp_path, run_overrides(small_shards, "trainer.max_epochs=1", *overrides))
    # (a bad model key fails in the module's constructor, which Hydra wraps; the CLI unwraps it)
    with pytest.raises((ValueError, InstantiationException), match=message):
        train(cfg)


@pytest.mark.heavy
def test_lightning_ddp_run_with_accum_freq_ends_with_the_big_batch_weights(small_shards, tmp_path):
    # Two CPU ranks (gloo, spawned), each reading its own shards in the same order at any batch size:
    # accum_freq=2 with batch 2 must train exactly as batch 4, through manual_backward and the skipped
    # all-reduce (block_backward_sync) of every pass but the last. Rank 0's weights come back.
    ddp = ["trainer.devices=2", "+trainer.strategy=ddp_spawn", "+trainer.use_distributed_sampler=false"]
    runs = {}
    configs = {"big": ["data.batch_size=4"], "acc": ["data.batch_size=2", "model.accum_freq=2"]}
    for name, extra in configs.items():
        cfg = make_cfg(tmp_path / name, run_overrides(small_shards, "trainer.max_epochs=1", *ddp, *extra))
        runs[name] = train(cfg)
    a, b = final_weights(runs["acc"]), final_weights(runs["big"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-9
    start = final_weights({"model": hydra.utils.instantiate(make_cfg(tmp_path / "init", MICRO).model)})
    assert any(not torch.equal(a[k], start[k].to(a[k].dtype)) for k in a)  # trained weights came back
