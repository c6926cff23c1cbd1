"""Tests for tolclip.models.loss: single-process correctness and 2-rank DDP equivalence to one big batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tolclip.models.loss import ClipLoss

from ddp_rank import gloo_rank
from helpers import free_port, spawn_ranks

# ---------------------------------------------------------------------------------------------------
# Single process
# ---------------------------------------------------------------------------------------------------


def _unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def test_matches_reference_and_is_symmetric() -> None:
    img, txt = _unit(6, 8, seed=0), _unit(6, 8, seed=1)
    scale = torch.tensor(7.5, dtype=torch.float64)
    loss = ClipLoss()(img, txt, scale)

    # Independent reference: the two cross-entropies written out directly.
    logits = scale * img @ txt.T
    target = torch.arange(6)
    ref = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert loss.shape == ()
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    # Swapping the modalities swaps the two directions, which the mean does not see.
    torch.testing.assert_close(ClipLoss()(txt, img, scale), loss, rtol=0, atol=1e-12)


def test_perfect_alignment_gives_near_zero_loss() -> None:
    # Orthonormal features (rows of the identity) matched with themselves: the positive logit beats
    # every negative by the full scale, so the loss is ~ (B - 1) * exp(-scale).
    feats = torch.eye(4, 16, dtype=torch.float64)
    loss = ClipLoss()(feats, feats.clone(), torch.tensor(100.0, dtype=torch.float64))
    assert loss.item() < 1e-30
    # A random pairing at a moderate scale is nowhere near zero.
    assert ClipLoss()(_unit(4, 16, seed=0), _unit(4, 16, seed=1), torch.tensor(10.0)).item() > 0.1


def test_grad_flows_to_logit_scale_and_features() -> None:
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    img = _unit(5, 8, seed=2, dtype=torch.float32).requires_grad_()
    txt = _unit(5, 8, seed=3, dtype=torch.float32).requires_grad_()
    ClipLoss()(img, txt, log_scale.exp()).backward()
    for t in (log_scale, img, txt):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_label_cache_follows_batch_size() -> None:
    loss_fn = ClipLoss(cache_labels=True)
    scale = torch.tensor(5.0)
    for n in (4, 3, 4):  # a shrunken batch in between must not reuse the size-4 labels
        img, txt = _unit(n, 8, seed=n, dtype=torch.float32), _unit(n, 8, seed=10 + n, dtype=torch.float32)
        logits = scale * img @ txt.T
        ref = (F.cross_entropy(logits, torch.arange(n)) + F.cross_entropy(logits.T, torch.arange(n))) / 2
        torch.testing.assert_close(loss_fn(img, txt, scale), ref)
    assert set(loss_fn._labels) == {(torch.device("cpu"), 4), (torch.device("cpu"), 3)}
    # With a local loss the targets are the rank's rows of the global batch.
    local = ClipLoss(local_loss=True, rank=1, world_size=2)
    assert local.get_ground_truth(torch.device("cpu"), 3).tolist() == [3, 4, 5]
    assert ClipLoss(local_loss=False, rank=1, world_size=2).get_ground_truth("cpu", 6).tolist() == list(
        range(6)
    )


# ---------------------------------------------------------------------------------------------------
# Two ranks, DDP on CPU with gloo
# ---------------------------------------------------------------------------------------------------

WORLD = 2
GLOBAL_BATCH = 8
# (local_loss, gather_with_grad); all run in one spawn so the process start-up is paid once.
CONFIGS = [(True, True), (False, True), (False, False), (True, False)]
DDP_TIMEOUT_S = 60.0


class TwoTower(nn.Module):
    """Minimal CLIP: a linear 'encoder' per modality, L2-normalised, plus a learnable log scale."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # identical initial weights in every process
        self.image = nn.Linear(6, 5).double()
        self.text = nn.Linear(7, 5).double()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            F.normalize(self.image(x_img), dim=-1),
            F.normalize(self.text(x_txt), dim=-1),
            self.log_scale.exp(),
        )


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return (
        torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64),
        torch.randn(GLOBAL_BATCH, 7, generator=g, dtype=torch.float64),
    )


def _reference_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * img @ txt.T
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: run every config on its shard, save losses and gradients for the parent to check."""
    with gloo_rank(rank, WORLD, port, out_dir):
        x_img, x_txt = _global_batch()
        b = GLOBAL_BATCH // WORLD
        shard = slice(rank * b, (rank + 1) * b)
        results = {}
        for local_loss, with_grad in CONFIGS:
            model = DistributedDataParallel(TwoTower())
            loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=with_grad)
            assert (loss_fn.rank, loss_fn.world_size) == (rank, WORLD)  # picked up from torch.distributed
            loss = loss_fn(*model(x_img[shard], x_txt[shard]))
            loss.backward()  # DDP all-reduces (averages) the parameter gradients here
            results[(local_loss, with_grad)] = {
                "loss": loss.detach().clone(),
                "grads": {n: p.grad.clone() for n, p in model.module.named_parameters()},
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    spawn_ranks(_ddp_worker, (free_port(), str(out_dir)), WORLD, DDP_TIMEOUT_S)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_process() -> dict:
    """Loss and gradients of the same model on the whole global batch in one process."""
    model = TwoTower()
    loss = _reference_loss(*model(*_global_batch()))
    loss.backward()
    torch.testing.assert_close(loss, ClipLoss()(*model(*_global_batch())), rtol=0, atol=1e-12)
    return {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


def _distributed_loss(results: list[dict], config: tuple[bool, bool]) -> torch.Tensor:
    losses = torch.stack([r[config]["loss"] for r in results])
    local_loss, _ = config
    if local_loss:
        # Each rank's share covers its own B rows; equal shards make the global loss their mean.
        return losses.mean()
    # Without local loss every rank computes the full global loss.
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-12)
    return losses[0]


@pytest.mark.parametrize("local_loss", [True, False])
def test_ddp_gather_with_grad_matches_single_process(
    ddp_results: list[dict], single_process: dict, local_loss: bool
) -> None:
    config = (local_loss, True)
    torch.testing.assert_close(
        _distributed_loss(ddp_results, config), single_process["loss"], rtol=0, atol=1e-10
    )
    for rank_results in ddp_results:
        grads = rank_results[config]["grads"]
        # DDP leaves the same averaged gradient on every rank; it must be the big-batch gradient.
        assert _max_diff(grads, single_process["grads"]) < 1e-10


def test_ddp_gather_without_grad(ddp_results: list[dict], single_process: dict) -> None:
    ref = single_process["grads"]
    encoder = [n for n in ref if n != "log_scale"]

    # local_loss=False: the loss is still exact ...
    config = (False, False)
    torch.testing.assert_close(
        _distributed_loss(ddp_results, config), single_process["loss"], rtol=0, atol=1e-10
    )
    for rank_results in ddp_results:
        grads = rank_results[config]["grads"]
        # ... but each rank back-propagates only through its own samples of the same full loss, so
        # after DDP's averaging the encoder gradients are exactly 1/world_size of the true ones.
        assert _max_diff(grads, ref) > 1e-3
        assert _max_diff({n: WORLD * grads[n] for n in encoder}, {n: ref[n] for n in encoder}) < 1e-10
        # logit_scale is not gathered: every rank has the full dL/dscale, so its gradient is right.
        torch.testing.assert_close(grads["log_scale"], ref["log_scale"], rtol=0, atol=1e-10)

    # local_loss=True: the loss (mean of the ranks' shares) is exact, but the cross-rank gradient terms
    # are lost and the encoder gradients are not merely rescaled.
    config = (True, False)
    torch.testing.assert_close(
        _distributed_loss(ddp_results, config), single_process["loss"], rtol=0, atol=1e-10
    )
    for rank_results in ddp_results:
        grads = rank_results[config]["grads"]
        for scale in (1, WORLD):
            assert _max_diff({n: scale * grads[n] for n in encoder}, {n: ref[n] for n in encoder}) > 1e-3
        # Averaging the ranks' dL_r/dscale gives dL/dscale, so logit_scale is still right here too.
        torch.testing.assert_close(grads["log_scale"], ref["log_scale"], rtol=0, atol=1e-10)
