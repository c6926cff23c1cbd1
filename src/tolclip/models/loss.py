"""Symmetric contrastive (CLIP / InfoNCE) loss, with feature gathering for distributed training.

For a batch of N image/text pairs the logits are ``scale * img @ txt.T`` (N x N); pair i is the
positive for row i and column i, every other entry is a negative. The loss is the mean of the
image->text and text->image cross-entropies.

Under data parallelism each rank holds B = N / world_size pairs. The negatives should come from the
whole global batch, so the features of all ranks are gathered before the logits are formed.

Why gathering *with* grad reproduces one big batch exactly
---------------------------------------------------------
The autograd-aware all_gather (``torch.distributed.nn.functional.all_gather``) has a reduce-scatter
(sum) as its backward: rank r's local features receive sum_k dL_k/df_r, i.e. the gradient of *every*
rank's loss with respect to r's samples, not just its own loss's. Then DDP averages parameter
gradients over ranks (divides by world_size W):

* ``local_loss=True``: rank k computes L_k over its own B rows (against all N columns). With equal B
  per rank the global loss is L = (1/W) sum_k L_k, and the DDP average (1/W) sum_r sum_k dL_k/dθ|_r
  is exactly dL/dθ.
* ``local_loss=False``: every rank computes the same full N x N loss L, so the reduce-scatter hands
  rank r W * dL/df_r and DDP's 1/W cancels it: again dL/dθ.

Memory and compute: ``local_loss=True`` builds two B x N logit matrices per rank, so the cost per rank
grows linearly in W; ``local_loss=False`` builds the full N x N matrix on every rank (W^2 times the
local B x B), duplicating the same work on each. Both must hold the N x D gathered features.

Gathering *without* grad treats the other ranks' features as constants; the local tensor is put back
into its slot so that at least the gradient through the rank's own samples flows. That loses the
cross-rank terms dL_k/df_r (k != r): with ``local_loss=False`` the encoder gradients come out exactly
1/W of the big-batch ones after DDP averaging (the loss value is still correct); with
``local_loss=True`` they are biased, not merely rescaled. Gradients of ``logit_scale`` (which is not
gathered) are unaffected.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipLoss", "gather_features"]


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(x: torch.Tensor, with_grad: bool, rank: int, world_size: int) -> torch.Tensor:
    if with_grad:
        return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    # dist.all_gather writes detached copies; restoring the local tensor keeps its autograd history.
    parts[rank] = x
    return torch.cat(parts, dim=0)


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    gather_with_grad: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather [B, D] image and text features from every rank into [world_size * B, D] tensors.

    Rows are ordered by rank, so rank r's samples sit at rows r*B .. (r+1)*B - 1. Every rank must
    pass the same B. What is gathered does not depend on ``local_loss``: only the logits do.
    """
    if world_size == 1:
        return image_features, text_features
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialised")
    return (
        _gather(image_features, gather_with_grad, rank, world_size),
        _gather(text_features, gather_with_grad, rank, world_size),
    )


class ClipLoss(nn.Module):
    """Symmetric CLIP contrastive loss over the (optionally gathered) global batch.

    Args:
        local_loss: compute only this rank's rows of the logits (B x N) instead of the full N x N.
        gather_with_grad: gather with the autograd-aware all_gather, which gives exact big-batch
            gradients (see the module docstring); without it only local gradients flow.
        cache_labels: keep the target index tensor per (device, batch size) between calls.
        rank, world_size: default to torch.distributed's when it is initialised, else 0 and 1.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        cache_labels: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        dist_rank, dist_world = _dist_rank_world()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        # Keyed by (device, rows): the batch size can change (e.g. a short last batch) and the
        # module may be called on several devices; a stale label tensor would silently be wrong.
        self._labels: dict[tuple[torch.device, int], torch.Tensor] = {}

    def get_ground_truth(self, device: torch.device, num_rows: int) -> torch.Tensor:
        """Target column for each logit row: the row's own pair, offset to its global position."""
        key = (torch.device(device), num_rows)
        labels = self._labels.get(key)
        if labels is None:
            labels = torch.arange(num_rows, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                # Local rows r*B.. of the global batch: their positives are the gathered columns r*B..
                labels = labels + num_rows * self.rank
            if self.cache_labels:
                self._labels[key] = labels
        return labels

    def get_logits(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image->text and text->image logits: [B, N] each with local_loss, else [N, N]."""
        if self.world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T
            return logits_per_image, logits_per_image.T
        all_image, all_text = gather_features(
            image_features,
            text_features,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.local_loss:
            return logit_scale * image_features @ all_text.T, logit_scale * text_features @ all_image.T
        logits_per_image = logit_scale * all_image @ all_text.T
        return logits_per_image, logits_per_image.T

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss for L2-normalised [B, D] features and the already exponentiated logit scale."""
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
