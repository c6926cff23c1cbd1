"""Training sources mixed by weight: proportions drawn, determinism, config shape and bad input."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from tolclip.data.datamodule import ShardDataModule
from tolclip.data.mixing import train_sources
from tolclip.data.shards import write_shards
from tolclip.data.stream import SkipLog
from tolclip.training.run import check_data

from helpers import make_cfg, make_samples, shard_datamodule

WEIGHTS = {"inat21": 0.6, "bioscan": 0.3, "eol": 0.1}
# Shards of very different sizes: a per-shard draw would give bioscan far more than its weight.
SHARD_SIZES = {"inat21": 10, "bioscan": 100, "eol": 25}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    for name, size in SHARD_SIZES.items():
        write_shards(make_samples(2 * size, prefix=name), root / name, max_count=size)
    return root


@pytest.fixture(scope="module")
def key_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of one tiny member per sample: counting 20k keys reads only tar headers."""
    root = tmp_path_factory.mktemp("keys")
    for name, size in SHARD_SIZES.items():
        (root / name).mkdir()
        for shard in range(3):
            with tarfile.open(root / name / f"shard-{shard:06d}.tar", "w") as tar:
                for i in range(size):
                    info = tarfile.TarInfo(f"{name}{shard:02d}{i:04d}.cls")
                    info.size = 1
                    tar.addfile(info, io.BytesIO(b"0"))
    return root


def _spec(root: Path, weights: dict[str, float] = WEIGHTS) -> dict:
    return {n: {"shards": f"{root}/{n}/shard-*.tar", "weight": w} for n, w in weights.items()}


def _dm(root: Path, **kw: object) -> ShardDataModule:
    args: dict = dict(resampled=True, epoch_samples=64, batch_size=4, shuffle_buffer=16)
    return shard_datamodule(_spec(root), **{**args, **kw})


def _source(key: str) -> str:
    return next(n for n in WEIGHTS if key.startswith(n))


def test_drawn_proportions_follow_the_weights(key_only):
    # The real stream's mixed samples, counted by key before any decode.
    stream = _dm(key_only).train_stream()
    stream._log = SkipLog(10**9)  # raw samples are never "used" here: no streak limit
    samples = stream._raw_samples()
    counts = Counter(_source(next(samples)["__key__"]) for _ in range(20_000))
    for name, weight in WEIGHTS.items():
        assert abs(counts[name] / 20_000 - weight) < 0.02, counts


def test_batches_through_the_loader_mix_by_weight(sources):
    dm = _dm(sources, epoch_samples=1600, batch_size=16, num_workers=2)
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 1600
    counts = Counter(_source(k) for k in keys)
    for name, weight in WEIGHTS.items():
        assert abs(counts[name] / len(keys) - weight) < 0.05, counts


def test_mixing_is_deterministic_per_seed_epoch_and_worker(sources, monkeypatch):
    import tolclip.data.stream as smod

    def draw(seed: int = 0, epoch: int = 0, worker: int = 0, rank: int = 0) -> list[str]:
        monkeypatch.setattr(smod, "_worker_info", lambda: (rank, 2, worker, 2))
        stream = _dm(sources, seed=seed).train_stream()
        stream.epoch = epoch
        samples = stream._raw_samples()
        return [next(samples)["__key__"] for _ in range(200)]

    assert draw() == draw()
    assert draw() != draw(seed=1)
    assert draw() != draw(epoch=1)
    assert draw() != draw(worker=1)
    assert draw() != draw(rank=1)


def test_zero_weight_source_is_never_drawn(sources):
    stream = _dm(sources).train_stream()
    stream.cfg.sources = tuple((n, u, 0.0 if n == "eol" else w) for n, u, w in stream.cfg.sources)
    samples = stream._raw_samples()
    assert not any(next(samples)["__key__"].startswith("eol") for _ in range(2000))


def test_plain_string_source_has_weight_one(sources):
    spec = {"inat21": f"{sources}/inat21/shard-*.tar", "eol": {"shards": f"{sources}/eol/shard-*.tar"}}
    assert [(s.name, s.weight) for s in train_sources(spec)] == [("inat21", 1.0), ("eol", 1.0)]
    assert train_sources("a/*.tar")[0].key == "data.train_shards"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"inat21": {"shards": "x.tar", "weight": -1}}, r"data\.train_shards\.inat21\.weight"),
        ({"a": {"shards": "x.tar", "weight": 0}, "b": {"shards": "y.tar", "weight": 0}}, "sum to 0"),
        ({"inat21": {"shards": "x.tar", "wieght": 1}}, r"data\.train_shards\.inat21: unknown key.*wieght"),
        ({"eol": {"shards": "", "weight": 1}}, r"data\.train_shards\.eol\.shards is empty"),
        ({"eol": {"shards": [], "weight": 1}}, r"data\.train_shards\.eol\.shards is an empty list"),
        ({"eol": {"weight": 1}}, r"data\.train_shards\.eol: no shards"),
        ({"eol": {"shards": "x.tar", "weight": True}}, r"data\.train_shards\.eol\.weight"),
        ({}, "empty mapping"),
    ],
)
def test_bad_sources_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        shard_datamodule(spec, resampled=True, epoch_samples=8)


def test_weights_need_a_resampled_stream(sources):
    with pytest.raises(ValueError, match="resampled=true"):
        shard_datamodule(_spec(sources), resampled=False)


def test_check_data_names_the_source(sources, tmp_path):
    spec = _spec(sources)
    spec["bioscan"]["shards"] = f"{sources}/bioscan/typo-*.tar"
    with pytest.raises(FileNotFoundError, match=r"^data\.train_shards\.bioscan: no shards match"):
        check_data(shard_datamodule(spec, resampled=True, epoch_samples=8))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    spec = _spec(sources)
    spec["eol"]["shards"] = str(empty)
    with pytest.raises(ValueError, match=r"^data\.train_shards\.eol: all 1 shard\(s\) are empty"):
        check_data(shard_datamodule(spec, resampled=True, epoch_samples=8))


def test_sources_compose_from_the_command_line(sources, tmp_path):
    # One override names every source; another changes one weight.
    inat, eol = f"{sources}/inat21/shard-*.tar", f"{sources}/eol/shard-*.tar"
    cfg = make_cfg(
        tmp_path,
        [
            "data=shards",
            "data.epoch_samples=64",
            f"data.train_shards={{inat21: {{shards: '{inat}', weight: 0.6}}, eol: {{shards: '{eol}', weight: 0.4}}}}",
            "data.train_shards.eol.weight=0.25",
            "model=micro",
        ],
    )
    from tolclip.training.run import instantiate_datamodule

    dm = instantiate_datamodule(cfg)
    assert [(s.name, s.weight) for s in train_sources(dm.train_shards)] == [("inat21", 0.6), ("eol", 0.25)]
    assert dm.train_stream().cfg.sources[1][2] == 0.25
