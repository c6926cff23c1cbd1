"""Training throughput of tolclip's CLIP vs open_clip's CLIP at identical sizes, side by side.

Both models get the same batch (random images + token sequences with realistic caption lengths), the
same optimizer (AdamW, same param-group rule) and the same loss (``tolclip.models.loss.ClipLoss``). After warmup steps the two are timed in interleaved rounds so that
machine noise (other processes on shared cores) hits both alike; the median samples/s per side and
the ratio ours / open_clip are printed.

    python scripts/bench_train.py --model tiny --batch 128 --steps 5 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import open_clip
import torch
from torch import nn

from tolclip.models.config import net_config
from tolclip.models.loss import ClipLoss
from tolclip.models.open_clip_config import open_clip_kwargs
from tolclip.models.towers import CLIP

LOSS_SRC = "tolclip.models.loss.ClipLoss"

SOT, EOT = 49406, 49407


def make_batch(
    cfg: dict, batch: int, device: torch.device, seed: int = 0, words: tuple[int, int] = (10, 40)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ~ N(0, 1) and [B, context] tokens: SOT, `words` random word ids, EOT, zero padding."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["vision"]["image_size"]
    ctx = cfg["text"].get("context_length", 77)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.zeros(batch, ctx, dtype=torch.long)
    lo, hi = min(words[0], ctx - 2), min(words[1], ctx - 2)
    lengths = torch.randint(lo, hi + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = SOT
        tokens[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
        tokens[i, n + 1] = EOT
    return images.to(device), tokens.to(device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Same rule for both models: no decay for ndim < 2 params and embeddings / class tokens."""
    keys = ("embedding", "pos_embed", "cls_token", "logit_scale")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or any(k in name for k in keys) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_step(
    model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, ours: bool
) -> Callable[[], float]:
    """One full training step (forward, loss, backward, AdamW step, logit-scale clamp)."""
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    model.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if ours:
            img, txt, scale = model(images, tokens)
        else:
            img, txt, scale = model(images, tokens)[:3]
        loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return loss.item()  # also synchronises the device

    return step


def timed(step: Callable[[], float], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="a configs/model/*.yaml name")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per side")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
    ap.add_argument("--device", default="cpu")
    # Taxonomic captions use 10-40 of the 77 positions; 75..75 fills the context, so tolclip's
    # skipping of padding after the last EOT has nothing to skip (pure architecture parity).
    ap.add_argument("--min-words", type=int, default=10)
    ap.add_argument("--max-words", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = net_config(args.model)
    torch.manual_seed(0)
    ours = CLIP(**cfg).to(device)
    theirs = open_clip.model.CLIP(**open_clip_kwargs(cfg)).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    images, tokens = make_batch(cfg, args.batch, device, words=(args.min_words, args.max_words))
    steps = {
        "tolclip": make_step(ours, images, tokens, True),
        "open_clip": make_step(theirs, images, tokens, False),
    }

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"torch={torch.__version__} threads={torch.get_num_threads()} device={device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(
        f"model={args.model} params tolclip={n_ours:,} open_clip={n_theirs:,} batch={args.batch} "
        f"image={cfg['vision']['image_size']}px tokens={tuple(tokens.shape)} loss={LOSS_SRC}"
    )

    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        # alternate which side goes first so neither systematically gets the warmer caches
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            rates[name].append(args.batch * args.steps / timed(steps[name], args.steps, device))

    med = {name: statistics.median(v) for name, v in rates.items()}
    print(
        f"{'side':<10} {'median samples/s':>17} {'min':>9} {'max':>9}   ({args.rounds} rounds x {args.steps} steps)"
    )
    for name, v in rates.items():
        print(f"{name:<10} {med[name]:>17.1f} {min(v):>9.1f} {max(v):>9.1f}")
    per_round = [a / b for a, b in zip(rates["tolclip"], rates["open_clip"], strict=True)]
    print(
        f"ratio tolclip/open_clip: {med['tolclip'] / med['open_clip']:.3f} "
        f"(median of per-round ratios {statistics.median(per_round):.3f})"
    )


if __name__ == "__main__":
    main()
