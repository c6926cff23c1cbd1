"""The train loader resumes mid-epoch exactly: the batches after a resume are the ones the
uninterrupted run saw (same samples, same augmentation), and training ends with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tolclip.data.shards import write_shards
from tolclip.training.run import train

from ddp_rank import gloo_rank
from helpers import (
    add_raw_member,
    free_port,
    make_cfg,
    make_samples,
    shard_datamodule,
    shard_overrides,
    spawn_ranks,
)


class RecordBatches(Callback):
    """Appends each training batch's keys and image sum to a JSON-lines file (one line per step)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        row = {"epoch": trainer.current_epoch, "keys": list(batch["key"]), "sum": float(batch["image"].sum())}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    write_shards(make_samples(60), tmp_path / "train", max_count=10)
    write_shards(make_samples(12, prefix="v"), tmp_path / "val", max_count=100)
    # A bad sample: the resumed stream must count raw samples, not usable ones.
    add_raw_member(sorted((tmp_path / "train").glob("*.tar"))[1], "bad00001.jpg", b"not a jpeg")
    return tmp_path


def _dm(root: Path, **kw: object):
    args: dict = dict(batch_size=4, shuffle_buffer=8, resampled=True, epoch_samples=96, crop_scale=(0.3, 1.0))
    return shard_datamodule(f"{root}/train/shard-*.tar", **{**args, **kw})


def _batches(loader, n: int | None = None) -> list[tuple[list[str], float]]:
    out = []
    for batch in loader:
        out.append((list(batch["key"]), float(batch["image"].sum())))
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize(("workers", "stop"), [(0, 5), (2, 5), (2, 8), (3, 7)])
def test_loader_resumes_after_the_batches_it_gave(shards, workers, stop):
    full = _batches(_dm(shards, num_workers=workers).train_dataloader())
    assert len(full) == 24 and len({k for keys, _ in full for k in keys}) > 4

    first = _dm(shards, num_workers=workers).train_dataloader()
    assert _batches(first, stop) == full[:stop]
    state = first.state_dict()
    assert state["ranks"][0]["batches"] == stop

    again = _dm(shards, num_workers=workers).train_dataloader()  # a new process would build this
    again.load_state_dict(json.loads(json.dumps(state)))  # survives a round trip through plain types
    rest = _batches(again)
    assert rest == full[stop:]  # same samples, same crops, same order
    # The next pass (the next epoch, or this one run again) starts from its beginning.
    assert _batches(again) == full


def test_resume_is_chained_and_ignores_another_epoch(shards):
    full = _batches(_dm(shards, num_workers=2).train_dataloader())
    a = _dm(shards, num_workers=2).train_dataloader()
    _batches(a, 3)
    b = _dm(shards, num_workers=2).train_dataloader()
    b.load_state_dict(a.state_dict())
    assert _batches(b, 6) == full[3:9]
    c = _dm(shards, num_workers=2).train_dataloader()
    c.load_state_dict(b.state_dict())
    assert _batches(c) == full[9:]

    other = _dm(shards, num_workers=2)
    loader = other.train_dataloader()
    loader.load_state_dict(b.state_dict())
    other.set_epoch(1)  # the saved epoch is over: the new one is whole
    assert len(_batches(loader)) == 24


def test_changed_layout_restarts_the_epoch_with_a_warning(shards, caplog):
    a = _dm(shards, num_workers=1).train_dataloader()
    _batches(a, 3)
    b = _dm(shards, num_workers=1, batch_size=8).train_dataloader()
    b.load_state_dict(a.state_dict())
    assert len(_batches(b)) == 12
    assert "cannot resume where the checkpoint stopped" in caplog.text


def test_mixed_sources_resume_exactly(shards):
    write_shards(make_samples(30, prefix="x"), shards / "other", max_count=7)
    spec = {
        "a": {"shards": f"{shards}/train/shard-*.tar", "weight": 0.7},
        "b": {"shards": f"{shards}/other/shard-*.tar", "weight": 0.3},
    }
    full = _batches(shard_datamodule(spec, **_ARGS).train_dataloader())
    first = shard_datamodule(spec, **_ARGS).train_dataloader()
    _batches(first, 7)
    again = shard_datamodule(spec, **_ARGS).train_dataloader()
    again.load_state_dict(first.state_dict())
    assert _batches(again) == full[7:]


_ARGS: dict = dict(batch_size=4, shuffle_buffer=8, resampled=True, epoch_samples=64, num_workers=2)


def _train_overrides(root: Path, record: Path, workers: int) -> list[str]:
    return [
        *shard_overrides(root),
        "data.epoch_samples=48",  # 6 steps of 8 per epoch
        f"data.num_workers={workers}",
        "data.crop_scale=[0.3,1.0]",
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.every_n_epochs=null",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_top_k=-1",
        "~callbacks.zero_shot",
        "+callbacks.record._target_=test_resume_data.RecordBatches",
        f"+callbacks.record.path={record}",
    ]


def _train_resumed(shards: Path, tmp_path: Path, workers: int, stop: int) -> None:
    """Train uninterrupted; train again stopped after step `stop`; resume from its checkpoint in a
    new trainer; the resumed run sees the same batches and ends with the same weights."""
    full = train(make_cfg(tmp_path / "full", _train_overrides(shards, tmp_path / "full.jsonl", workers)))
    part = [*_train_overrides(shards, tmp_path / "part.jsonl", workers)]
    stopped = train(
        make_cfg(
            tmp_path / "part",
            [*part, "+callbacks.stop._target_=helpers.StopAfterSteps", f"+callbacks.stop.steps={stop}"],
        )
    )
    assert stopped["trainer"].global_step == stop
    ckpt = tmp_path / "part" / "run" / "checkpoints" / f"step_{stop:06d}.ckpt"
    resumed = train(
        make_cfg(
            tmp_path / "resume",
            [*_train_overrides(shards, tmp_path / "resume.jsonl", workers), f"ckpt_path={ckpt}"],
        )
    )
    assert resumed["trainer"].global_step == full["trainer"].global_step == 12

    seen = _rows(tmp_path / "full.jsonl")
    assert len(seen) == 12
    assert _rows(tmp_path / "part.jsonl") == seen[:stop]
    assert _rows(tmp_path / "resume.jsonl") == seen[stop:]
    for (n, p), (_, q) in zip(
        full["model"].net.named_parameters(), resumed["model"].net.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("stop", [3, 6])  # mid-epoch, and on the epoch's last batch
def test_training_resumed_mid_epoch_ends_with_the_same_weights(shards, tmp_path, single_thread, stop):
    _train_resumed(shards, tmp_path, workers=0, stop=stop)


@pytest.mark.heavy
@pytest.mark.parametrize("stop", [3, 8])
def test_training_resumed_mid_epoch_with_loader_workers(shards, tmp_path, single_thread, stop):
    _train_resumed(shards, tmp_path, workers=2, stop=stop)


# --- 2 gloo ranks: each rank's place is gathered into the one checkpoint and given back to it ------


def _rank_worker(rank: int, port: int, root: str, out_dir: str) -> None:
    with gloo_rank(rank, 2, port, out_dir):
        # A finite stream: each rank reads its own shards (resampled ones draw from all of them).
        kw: dict = dict(num_workers=0, resampled=False, epoch_samples=None, shuffle_buffer=0)
        full = _batches(_dm(Path(root), **kw).train_dataloader())
        first = _dm(Path(root), **kw).train_dataloader()
        _batches(first, 5)
        state = first.state_dict()  # a collective: every rank saves
        again = _dm(Path(root), **kw).train_dataloader()
        again.load_state_dict(state)  # rank 0 writes the file; every rank reads it
        out = {"state": state, "full": full, "rest": _batches(again)}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))


@pytest.mark.heavy  # two spawned processes: about a minute on a busy 2-core machine
def test_each_rank_resumes_at_its_own_place(shards, tmp_path):
    # Rank 0's first shard holds only bad samples: its raw counts run ahead of rank 1's.
    bad = shards / "train" / "shard-000000-bad.tar"  # sorts first
    for i in range(3):
        add_raw_member(bad, f"bad{i:05d}.jpg", b"not a jpeg")
    spawn_ranks(_rank_worker, (free_port(), str(shards), str(tmp_path)), 2, 120)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert out[0]["state"] == out[1]["state"] and len(out[0]["state"]["ranks"]) == 2
    places = [r["positions"] for r in out[0]["state"]["ranks"]]
    assert places[0] != places[1]
    for r in out:
        assert [tuple(b) for b in r["rest"]] == [tuple(b) for b in r["full"][5:]]
    assert out[0]["full"] != out[1]["full"]  # the ranks read different shards
