"""The 2-rank gloo DDP half of tests/test_accumulation.py. Its own module because spawned ranks import
the module of the function they run: this one needs only torch and two small tolclip modules, where the
test module also pulls in Lightning, Hydra and the towers (tens of seconds on a loaded 2-core machine)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tolclip.models.loss import ClipLoss
from tolclip.training.feature_cache import feature_cache_step, split_batch

from ddp_rank import gloo_rank

K, B, WORLD = 4, 3, 2  # micro-batches per step, samples per micro-batch, DDP ranks


class TwoTower(nn.Module):
    """The DDP test's net: what it checks is the gather, the label offsets and the one all-reduce, for
    which a linear encoder per modality is enough (the real towers are checked in one process)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights in every process
        self.image = nn.Linear(3 * 16 * 16, 8).double()
        self.text = nn.Embedding(64, 8).double()
        self.log_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            F.normalize(self.image(images.flatten(1)), dim=-1),
            F.normalize(self.text(tokens).mean(1), dim=-1),
            self.log_scale.exp(),
        )


def batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 63, (n, 12), generator=g)
    tokens[:, -1] = 63  # the end-of-text token (highest id) is where the text tower reads out
    return images, tokens


def grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def ddp_worker(rank: int, port: int, out_dir: str) -> None:
    with gloo_rank(rank, WORLD, port, out_dir):
        images, tokens = batch(WORLD * K * B)
        mine = slice(rank * K * B, (rank + 1) * K * B)
        results = {}
        for local_loss in (True, False):
            model = DistributedDataParallel(TwoTower())
            loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=True)
            micro = list(split_batch(images[mine], tokens[mine], K))
            out = feature_cache_step(model, loss_fn, micro, no_sync=model.no_sync)
            results[local_loss] = {"loss": out.loss.clone(), "grads": grads(model.module)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
