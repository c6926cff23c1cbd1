"""Helpers for tests: small shards written through the real writer, planted bad members, Hydra configs."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

from tolclip.core.resources import config_dir
from tolclip.core.taxonomy import Taxon
from tolclip.data.datamodule import ShardDataModule
from tolclip.data.images import encode_jpeg
from tolclip.data.shards import Sample

CONFIG_DIR = str(config_dir())

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TAXA = [
    Taxon.clean(
        kingdom="Animalia",
        phylum="Chordata",
        **{"class": "Aves"},
        order="Passeriformes",
        family="Corvidae",
        genus="Corvus",
        species="corax",
        common="common raven",
    ),
    Taxon.clean(
        kingdom="Animalia",
        phylum="Chordata",
        **{"class": "Aves"},
        order="Passeriformes",
        family="Corvidae",
        genus="Pica",
        species="pica",
    ),
    Taxon.clean(
        kingdom="Plantae",
        phylum="Tracheophyta",
        **{"class": "Magnoliopsida"},
        order="Rosales",
        family="Rosaceae",
        genus="Rosa",
        species="canina",
        common="dog rose",
    ),
    Taxon.clean(
        kingdom="Fungi",
        phylum="Basidiomycota",
        **{"class": "Agaricomycetes"},
        order="Agaricales",
        family="Amanitaceae",
        genus="Amanita",
        species="muscaria",
        common="fly agaric",
    ),
]


def colour_image(i: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(i)
    base = np.array([(i * 67) % 256, (i * 131) % 256, (i * 29) % 256], dtype=np.uint8)
    arr = np.clip(base + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def jpeg_bytes(image: Image.Image, quality: int = 90, orientation: int = 1) -> bytes:
    """`image` as a JPEG file's bytes, with an EXIF orientation tag unless it is 1."""
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def make_samples(n: int, prefix: str = "s") -> list[Sample]:
    return [
        Sample(
            key=f"{prefix}{i:05d}",
            image=encode_jpeg(colour_image(i)),
            taxon=TAXA[i % len(TAXA)],
            source="test",
            source_id=str(i),
        )
        for i in range(n)
    ]


def shard_datamodule(train_shards: object, **kw: object) -> ShardDataModule:
    """A ShardDataModule for tests: `sci` captions, 32 px, one sample per batch, no loader workers,
    no shuffling, a finite stream; keyword arguments override."""
    args: dict[str, object] = dict(
        train_shards=train_shards,
        text_type="sci",
        image_size=32,
        batch_size=1,
        num_workers=0,
        shuffle_buffer=0,
        resampled=False,
    )
    return ShardDataModule(**{**args, **kw})


def add_raw_member(tar_path: Path, name: str, data: bytes) -> None:
    """Append a member to an existing shard (to plant broken samples)."""
    with tarfile.open(tar_path, "a") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


class StopAfterSteps:
    """A Lightning callback that ends fit after N optimiser steps, like a killed job."""

    def __new__(cls, steps: int):
        from lightning.pytorch.callbacks import Callback

        class _Stop(Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step >= steps:
                    trainer.should_stop = True

        return _Stop()


# A model small enough that a few steps take about a second (configs/model/micro.yaml).
MICRO = ["model=micro"]
# The micro model on a very small synthetic tree of life, evaluated with one template and text type:
# what the end-to-end runs of the installed `tolclip train` start from.
SYNTHETIC_MICRO = [
    *MICRO,
    "data.num_workers=0",
    "~callbacks.progress_bar",
    "callbacks.zero_shot.templates=single",
    "callbacks.zero_shot.text_types=[taxon]",
    "+data.generate.train_per_species=2",
    "+data.generate.val_per_species=1",
    "+data.generate.unseen_per_species=1",
]


# Two batches of 8 an epoch, in-process loading, one prompt template, a CSV log: shard-trained test runs.
SMALL_RUN = [
    "data.epoch_samples=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.shuffle_buffer=8",
    "logger=csv",
    "callbacks.zero_shot.templates=single",
    "~callbacks.progress_bar",
]


def shard_overrides(root: Path) -> list[str]:
    """Train the micro model on small shards at root/train, evaluating on root/val with one template."""
    return [
        "data=shards",
        f"data.train_shards={root}/train/shard-*.tar",
        f"+data.eval_sets.val={root}/val/shard-*.tar",
        *SMALL_RUN,
        *MICRO,
    ]


def make_cfg(tmp_path: Path, overrides: list[str], config_name: str = "train"):
    """A composed config with its run directory under tmp_path, as `@hydra.main` would give."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig().set_config(cfg)
    return cfg


@contextlib.contextmanager
def time_limit(seconds: int, what: str = "test") -> Iterator[None]:
    """Fail with TimeoutError after `seconds` (SIGALRM) instead of hanging: fault tests must end."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"{what} ran over {seconds}s: something waits without a bound")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    """A TCP port free on localhost now (for a test's own process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable[..., None], args: tuple, world: int, timeout_s: float) -> None:
    """Run `worker(rank, *args)` in `world` spawned processes, bounded: a rank that fails re-raises
    here, one still running after `timeout_s` fails the test, and none is left behind."""
    ctx = mp.spawn(worker, args=args, nprocs=world, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        # join() re-raises a child's exception (ProcessRaisedException / ProcessExitedException).
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} spawned ranks did not finish within {timeout_s:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


# A small open_clip-shaped CLIP (GELU, 32 px): fast on 2 cores, exported as a release folder that open_clip
# and pybioclip load with `local-dir:`.
SMALL_NET = {
    "embed_dim": 64,
    "vision": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2, "heads": 2, "act": "gelu"},
    "text": {"context_length": 32, "width": 128, "layers": 2, "heads": 2, "act": "gelu"},
}


def small_release(out_dir: Path, seed: int = 0, logit_scale: float = 100.0) -> Path:
    """Export a randomly initialised small CLIP as an open_clip release folder (weights perturbed away from
    the init, so that LayerNorms and biases are not trivial; `logit_scale` as a trained model's)."""
    import math

    import torch

    from tolclip.models.export import export_open_clip
    from tolclip.models.towers import CLIP

    torch.manual_seed(seed)
    net = CLIP(**SMALL_NET)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        net.logit_scale.fill_(math.log(logit_scale))
    return export_open_clip(net.eval(), out_dir)


# Six species across three kingdoms; the genus Morus is a bird (Sulidae) and a plant (Moraceae).
RANK_CSV = """kingdom,phylum,class,order,family,genus,species,common_name
Animalia,Chordata,Aves,Passeriformes,Corvidae,Corvus,corax,common raven
Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,pica,
Animalia,Chordata,Aves,Suliformes,Sulidae,Morus,bassanus,northern gannet
Plantae,Tracheophyta,Magnoliopsida,Rosales,Moraceae,Morus,alba,white mulberry
Plantae,Tracheophyta,Magnoliopsida,Rosales,Rosaceae,Rosa,canina,dog rose
Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,muscaria,fly agaric
"""


def prediction_files(root: Path) -> dict[str, Path]:
    """A small release folder, RANK_CSV as taxa.csv and three photos: what the predict tests run on."""
    (root / "taxa.csv").write_text(RANK_CSV)
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        colour_image(i).save(photos / f"p{i}.png")
    return {"model": small_release(root / "release"), "taxa": root / "taxa.csv", "photos": photos}


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """`tolclip ARGS` in this process: (exit code, stdout, stderr), bounded so that a hang fails."""
    from tolclip.cli.main import main

    with time_limit(120, f"tolclip {args[0]}"):
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_catalog(folder: Path, rows: list[dict]) -> None:
    """`catalog.csv`/`.parquet` (and empty reports) in `folder` as a build writes them, from catalog rows."""
    from tolclip.curate.stats import Reports

    reports = Reports(folder, folder, ["train", "val"])
    for row in rows:
        reports.catalog(row)
    reports.finish({}, {})
