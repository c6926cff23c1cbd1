"""End-to-end training throughput: real shards through the DataModule vs the same model on in-memory batches.

Both sides are the configured LightningModule trained by the configured Lightning trainer, in one
process, in alternating rounds (so that noise from other processes on shared cores hits both alike):

* end to end: `trainer.fit(model, datamodule)`: tar reading, JPEG decode, augmentation, tokenisation
  in the configured loader workers, collation, then the training step;
* model only: the same model fed real batches already in memory (taken from the same DataModule).

Each round times `--steps` optimiser steps after `--warmup` steps (loader start-up excluded). The
median samples/s per side and the ratio end-to-end / model-only are printed (issue 10's target for
the tiny config with its default workers: >= 0.9). So that a low ratio can be explained, the script
also measures the loader alone and the per-sample cost of each stage in one process.

    python scripts/bench_train_e2e.py                               # tiny CLIP, synthetic shards
    python scripts/bench_train_e2e.py data.num_workers=2            # any Hydra override
    python scripts/bench_train_e2e.py data=shared_sources           # after `make build-shards`
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import islice

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from tolclip.core.resources import config_dir
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.stream import SkipLog, decode_image, sample_texts

TARGET = 0.9


class Clock(Callback):
    """The time at the start of each training batch, and at the end of the last one."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, *args: object) -> None:
        self.times.append(time.perf_counter())


class InMemory:
    """Batches already in memory, as one train loader (a plain list would be read as many loaders)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def make_cfg(overrides: list[str], out_dir: str) -> DictConfig:
    """The train config as `tolclip train` composes it, run folder in `out_dir` (nothing is logged)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=["logger=none", "callbacks=none", *overrides],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = out_dir
        cfg.hydra.runtime.output_dir = out_dir
    HydraConfig().set_config(cfg)
    return cfg


def fit_rate(cfg: DictConfig, model: L.LightningModule, data: object, args: argparse.Namespace) -> float:
    """Samples/s of `args.steps` training steps after `args.warmup`, fed by a DataModule or a list."""
    clock = Clock()
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=args.warmup + args.steps,
        _convert_="all",
    )
    if isinstance(data, L.LightningDataModule):
        trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, train_dataloaders=data)
    times = clock.times
    if len(times) < args.warmup + args.steps + 1:
        raise RuntimeError(f"only {len(times) - 1} steps ran (the epoch is too short for --warmup + --steps)")
    return args.steps * cfg.data.batch_size / (times[-1] - times[args.warmup])


def loader_rate(dm: L.LightningDataModule, batches: int) -> float:
    """Samples/s of the train loader alone (its workers, no model), after its first batch."""
    it = iter(dm.train_dataloader())
    first = next(it)
    t = time.perf_counter()
    n = sum(1 for _ in islice(it, batches))
    return n * first["image"].shape[0] / (time.perf_counter() - t)


def stage_costs(dm: L.LightningDataModule, samples: int) -> dict[str, float]:
    """Microseconds per sample of each stage, in this process: tar read, decode, augment, tokenise."""
    stream = dm.train_stream()
    stream._log = SkipLog(10**9)
    raw = stream._raw_samples()
    t = time.perf_counter()
    taken = list(islice(raw, samples))
    costs = {"tar read": time.perf_counter() - t}
    t = time.perf_counter()
    images = [decode_image(next(s[k] for k in ("jpg", "jpeg", "png", "webp") if k in s)) for s in taken]
    costs["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    for image in images:
        stream.cfg.image_transform(image)
    costs["augment"] = time.perf_counter() - t
    tokenizer = get_tokenizer(stream.cfg.context_length)
    t = time.perf_counter()
    for s in taken:
        if stream.cfg.text_types:
            tokenizer(sample_texts(s, stream.cfg.text_types))
    costs["tokenise"] = time.perf_counter() - t
    return {k: 1e6 * v / len(taken) for k, v in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    parser.add_argument("--warmup", type=int, default=4, help="steps per round before timing")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cached", type=int, default=8, help="real batches kept in memory for model-only")
    args = parser.parse_args()

    out_dir = tempfile.mkdtemp(prefix="bench_e2e_")
    cfg = make_cfg(args.overrides, out_dir)
    L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()  # writes the synthetic shards on first use
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    cached = list(islice(iter(dm.train_dataloader()), args.cached))
    in_memory = InMemory([cached[i % len(cached)] for i in range(args.warmup + args.steps)])

    e2e, alone = [], []
    for _ in range(args.rounds):
        e2e.append(fit_rate(cfg, model, dm, args))
        alone.append(fit_rate(cfg, model, in_memory, args))
    loader = loader_rate(dm, args.steps)
    costs = stage_costs(dm, 256)
    report(cfg, statistics.median(e2e), statistics.median(alone), loader, costs)


def report(cfg: DictConfig, e2e: float, alone: float, loader: float, costs: dict[str, float]) -> None:
    workers = cfg.data.num_workers
    ratio = e2e / alone
    print(
        f"\nend-to-end training, {cfg.model.net.vision.image_size}px, batch {cfg.data.batch_size}, "
        f"{workers} loader worker(s), {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPU(s)"
    )
    print(f"  shards: {cfg.data.train_shards}")
    print(f"  {'end to end (DataModule)':28s} {e2e:9.1f} samples/s")
    print(f"  {'model only (in memory)':28s} {alone:9.1f} samples/s")
    print(f"  {'ratio':28s} {ratio:9.2f}   (target >= {TARGET})")
    print(f"  {'loader alone (no model)':28s} {loader:9.1f} samples/s")
    per_sample = sum(costs.values())
    parts = ", ".join(f"{k} {v:.0f}" for k, v in costs.items())
    print(
        f"  per sample, one process: {per_sample:.0f} us ({parts}) = {1e6 / per_sample:.0f} samples/s per worker"
    )
    if ratio >= TARGET:
        return
    stage = max(costs, key=costs.get)
    if loader < alone:
        print(
            f"  where the time goes: the loader alone gives {loader:.0f} samples/s, less than the model "
            f"takes ({alone:.0f}); its largest stage is {stage} ({costs[stage]:.0f} us/sample). "
            "More workers (data.num_workers) lift it if cores are free."
        )
    else:
        print(
            f"  where the time goes: the loader alone keeps up ({loader:.0f} samples/s) but its "
            f"{max(1, workers)} worker(s) share {os.cpu_count()} core(s) with the training step; "
            f"its largest stage is {stage} ({costs[stage]:.0f} us/sample)."
        )


if __name__ == "__main__":
    main()
