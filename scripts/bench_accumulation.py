"""Peak memory and samples/s of one big contrastive batch vs the same batch as K accumulated micro-batches.

Three ways to train on a batch of B pairs with the same tiny CLIP, AdamW and `ClipLoss`:

* ``big``: one forward/backward over all B (the reference objective);
* ``cache``: K micro-batches of B/K through tolclip's feature cache (``model.accum_freq=K``): the same
  loss and gradients as ``big`` (tests/test_accumulation.py), at the cost of one extra no-grad forward;
* ``plain``: K separate micro-batch losses, as Lightning's ``accumulate_grad_batches`` does; shown for
  its cost only: every sample sees only its micro-batch's B/K - 1 negatives, a different objective.

Memory is measured honestly per configuration: each runs in its own fresh subprocess, and the figure is
the growth of the process's peak resident set (``ru_maxrss``) over the full-size steps, measured from
after a one-sample-per-micro-batch step that has already created the model, gradients, AdamW state and
batch; so it is what the step itself adds (activations, logits, the feature cache). The absolute peak RSS
(which includes Python, torch and the model) is printed too. Speed: the median of timed optimiser steps after a warmup step.

    python scripts/bench_accumulation.py --model tiny --batch 256 --accum 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from tolclip.models.config import net_config
from tolclip.models.loss import ClipLoss
from tolclip.models.towers import CLIP
from tolclip.training.feature_cache import feature_cache_step, split_batch

SOT, EOT = 49406, 49407
MODES = ("big", "cache", "plain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="an architecture in configs/model/net/")
    p.add_argument("--batch", type=int, default=256, help="the contrastive batch B of one optimiser step")
    p.add_argument("--accum", type=int, default=4, help="micro-batches K per step (B must divide by K)")
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps per configuration")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)  # one configuration, in a subprocess
    args = p.parse_args(argv)
    if args.batch % args.accum:
        p.error(f"--batch {args.batch} does not split into --accum {args.accum} equal micro-batches")
    return args


def make_batch(cfg: dict, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and caption-length token rows (SOT, 10-40 word ids, EOT, padding)."""
    g = torch.Generator().manual_seed(0)
    size, ctx = cfg["vision"]["image_size"], cfg["text"].get("context_length", 77)
    tokens = torch.zeros(batch, ctx, dtype=torch.long)
    for i, n in enumerate(torch.randint(10, min(40, ctx - 2) + 1, (batch,), generator=g).tolist()):
        tokens[i, 0], tokens[i, n + 1] = SOT, EOT
        tokens[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
    return torch.randn(batch, 3, size, size, generator=g), tokens


def train_step(
    mode: str, net: CLIP, loss_fn: ClipLoss, batch: tuple[torch.Tensor, torch.Tensor], k: int
) -> None:
    if mode == "big":
        loss_fn(*net(*batch)).backward()
    elif mode == "cache":
        feature_cache_step(net, loss_fn, list(split_batch(*batch, k)))
    else:
        for part in split_batch(*batch, k):
            (loss_fn(*net(*part)) / k).backward()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_child(args: argparse.Namespace) -> dict:
    cfg = net_config(args.model)
    torch.manual_seed(0)
    net = CLIP(**cfg)
    optimizer = torch.optim.AdamW(net.param_groups(0.2), lr=1e-4)
    loss_fn, batch = ClipLoss(), make_batch(cfg, args.batch)
    # A first step on one sample per micro-batch creates the gradients and AdamW's state (the same in
    # every mode) with next to no activations; what the full-size steps add on top is the step memory.
    small = make_batch(cfg, args.accum)
    train_step(args.child, net, loss_fn, small, args.accum)
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    before = peak_rss_mb()
    times = []
    for i in range(args.steps + 1):  # the first full step warms up the allocator and is not timed
        start = time.perf_counter()
        train_step(args.child, net, loss_fn, batch, args.accum)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: no re-allocation per step
        if i:
            times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    return {"samples/s": args.batch / statistics.median(times), "step MB": peak - before, "peak MB": peak}


def run_mode(mode: str, argv: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"[{mode}] failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(args)))
        return
    argv = sys.argv[1:]
    print(
        f"machine: {platform.machine()} cpus={os.cpu_count()} torch={torch.__version__} "
        f"threads={args.threads or torch.get_num_threads()}; model={args.model} batch B={args.batch} "
        f"as K={args.accum} micro-batches of {args.batch // args.accum}; {args.steps} timed steps each"
    )
    rows = {mode: run_mode(mode, argv) for mode in MODES}
    print(f"\n{'configuration':<34} {'samples/s':>10} {'step MB':>9} {'peak RSS MB':>12} {'negatives':>10}")
    labels = {
        "big": f"one batch of {args.batch}",
        "cache": f"{args.accum} x {args.batch // args.accum}, feature cache",
        "plain": f"{args.accum} x {args.batch // args.accum}, plain accumulation",
    }
    negatives = {"big": args.batch - 1, "cache": args.batch - 1, "plain": args.batch // args.accum - 1}
    for mode, r in rows.items():
        print(
            f"{labels[mode]:<34} {r['samples/s']:>10.1f} {r['step MB']:>9.0f} {r['peak MB']:>12.0f} "
            f"{negatives[mode]:>10}"
        )
    big, cache = rows["big"], rows["cache"]
    print(
        f"\nfeature cache vs one batch: {cache['samples/s'] / big['samples/s']:.2f}x the speed, "
        f"{cache['step MB'] / max(big['step MB'], 1e-9):.2f}x the step memory (growth of peak RSS)"
    )


if __name__ == "__main__":
    main()
