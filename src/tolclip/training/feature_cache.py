"""Gradient accumulation that keeps every negative: open_clip's ``--accum-freq`` feature cache.

Plain accumulation (Lightning's ``accumulate_grad_batches``) sums the gradients of K separate
contrastive losses, each over one micro-batch: every sample only meets the negatives of its own
micro-batch, so the objective is that of a K times smaller batch. Here the loss of one optimiser step is
the CLIP loss over all K micro-batches together (and, through `ClipLoss`'s gather, over all ranks):

1. forward every micro-batch without grad and keep its (small, [B, D]) features;
2. for each micro-batch j, forward it again with grad, put its live features into the concatenation of
   the cached ones (the others stay constants), compute the loss over the whole [K*B, D] batch and
   backward. Only micro-batch j's activations are alive at a time, so peak memory is that of one
   micro-batch plus the features and the logits of the accumulated batch.

Why the sum of the K backward passes is the big-batch gradient: the loss L(f_1, ..., f_K, s) depends on
the weights through every micro-batch's features f_j and through the logit scale s. Pass j gives
dL/df_j * df_j/dθ, so the K passes together give sum_j dL/df_j * df_j/dθ, the chain rule for one batch.
The logit scale is live in one pass only (the last; detached in the others), otherwise its gradient
would be counted K times (open_clip uses it live in every pass).

Under DDP, `ClipLoss` sees K*B local rows: it gathers them rank by rank (rank r's rows at r*K*B ..) and
offsets the labels by ``rank * K*B``, which is right because every rank passes the same K*B. The
gather's reduce-scatter backward works pass by pass as in one big step (every rank runs the same K
passes in the same order), and DDP's gradient all-reduce, a linear average, only needs to run once,
after the last backward: the earlier ones run inside ``no_sync``.

A stochastic forward (dropout, patch dropout) must draw the same randomness in both forwards of a
micro-batch, or the cached features would not be the ones whose gradient is taken: the RNG state (CPU
and the inputs' CUDA devices) is saved before each cached forward and restored before its second
forward, as `torch.utils.checkpoint` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["AccumulatedStep", "MicroBatch", "RngState", "feature_cache_step", "split_batch"]

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (images [B, 3, H, W], tokens [B, L])
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _cuda_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


@dataclass(frozen=True)
class RngState:
    """The CPU generator's state and that of every CUDA device the inputs live on."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor]

    @classmethod
    def capture(cls, tensors: Sequence[torch.Tensor]) -> RngState:
        devices = sorted({_cuda_index(t.device) for t in tensors if t.is_cuda})
        return cls(torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in devices})

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


@dataclass(frozen=True)
class AccumulatedStep:
    """What one accumulated step reports: the loss over the whole accumulated (and gathered) batch,
    the logit scale it used, and the number of local samples."""

    loss: torch.Tensor
    logit_scale: torch.Tensor
    samples: int


def _cache_features(
    net: nn.Module, micro_batches: Sequence[MicroBatch]
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[RngState]]:
    images, texts, states = [], [], []
    for batch in micro_batches:
        states.append(RngState.capture(batch))
        with torch.no_grad():
            image_features, text_features, _ = net(*batch)
        images.append(image_features)
        texts.append(text_features)
    return images, texts, states


def _with_live(cached: list[torch.Tensor], j: int, live: torch.Tensor) -> torch.Tensor:
    return torch.cat([*cached[:j], live, *cached[j + 1 :]], dim=0)


def feature_cache_step(
    net: nn.Module,
    loss_fn: Loss,
    micro_batches: Sequence[MicroBatch],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> AccumulatedStep:
    """Accumulate into the parameters' ``.grad`` the gradient of the CLIP loss over all micro-batches.

    Args:
        net: returns (image features, text features, logit scale) for (images, tokens).
        loss_fn: the contrastive loss, e.g. `ClipLoss` (which gathers across ranks).
        micro_batches: K (images, tokens) pairs; their sizes may differ, but under DDP every rank
            must hold the same total (`ClipLoss` gathers equal row counts).
        backward: how to backpropagate a loss (Lightning's ``manual_backward`` under a Trainer).
        no_sync: a context manager that holds back DDP's gradient all-reduce (``ddp.no_sync``, or
            Lightning's ``strategy.block_backward_sync``); every pass but the last runs inside it.

    The caller steps the optimiser and zeroes the gradients afterwards.
    """
    if not micro_batches:
        raise ValueError("feature_cache_step needs at least one micro-batch")
    cached_images, cached_texts, states = _cache_features(net, micro_batches)
    after_cache = RngState.capture([t for batch in micro_batches for t in batch])
    last = len(micro_batches) - 1
    for j, batch in enumerate(micro_batches):
        # The forward is inside too: a bare DDP module decides at forward time whether to sync.
        with no_sync() if j < last else contextlib.nullcontext():
            states[j].restore()
            image_features, text_features, logit_scale = net(*batch)
            loss = loss_fn(
                _with_live(cached_images, j, image_features),
                _with_live(cached_texts, j, text_features),
                logit_scale if j == last else logit_scale.detach(),
            )
            backward(loss)
    after_cache.restore()  # the generators move on as after one forward of each micro-batch
    return AccumulatedStep(
        loss.detach(), logit_scale.detach(), sum(len(images) for images, _ in micro_batches)
    )


def split_batch(images: torch.Tensor, tokens: torch.Tensor, parts: int) -> Iterator[MicroBatch]:
    """Split one batch into `parts` equal micro-batches (tests and benchmarks compare against it)."""
    if images.shape[0] % parts:
        raise ValueError(f"a batch of {images.shape[0]} does not split into {parts} equal micro-batches")
    yield from zip(images.chunk(parts), tokens.chunk(parts), strict=True)
