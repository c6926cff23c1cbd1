"""Fault injection for the shard stream: every fault is a counted skip naming shard and key, or one
clear `DataError` naming the shards; none may hang (each test runs under an alarm)."""

from __future__ import annotations

import io
import logging
import struct
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tolclip.data.datamodule import DataError, ShardDataModule
from tolclip.data.images import encode_jpeg
from tolclip.data.shards import decode_taxon, write_shards
from tolclip.data.stream import WARNINGS_PER_REASON
from tolclip.training.run import train

from helpers import MICRO, add_raw_member, colour_image, make_cfg, make_samples, shard_datamodule, time_limit

LIMIT_S = 25  # far above what any case needs; a regression to hanging fails here instead


@pytest.fixture(autouse=True)
def bounded():
    with time_limit(LIMIT_S):
        yield


def _keys(dm: ShardDataModule) -> list[str]:
    return [k for b in dm.train_dataloader() for k in b["key"]]


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = bytes(raw[12:16]) + struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(raw)


def _lab_tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("LAB", (8, 8)).save(buf, format="TIFF")
    return buf.getvalue()


def _empty_tar(path: Path) -> Path:
    with tarfile.open(path, "w"):
        pass
    return path


def _all_bad_shard(path: Path, n: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for name, data in ((f"x{i:04d}.jpg", b"not an image"), (f"x{i:04d}.sci.txt", b"a photo.")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]


# ------------------------------------------------------------------------------ skip, don't die


def test_bad_samples_are_counted_skips_naming_shard_and_key(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    [shard] = write_shards(make_samples(6), tmp_path / "train", max_count=100)
    good = encode_jpeg(colour_image(99))
    caption = b"a photo of Corvus corax."
    # key: (members, the reason its warning must give); a sample's members must be adjacent.
    planted = {
        "bomb": ({"png": _bomb_png(), "sci.txt": caption}, "image too large"),
        "junk": ({"jpg": b"\x00garbage", "sci.txt": caption}, "image not an image"),
        "latin1": ({"jpg": good, "sci.txt": "Pica pica, \xe9.".encode("latin-1")}, "caption is not UTF-8"),
        "listtaxon": ({"jpg": good, "taxon.json": b'["Animalia", "Chordata"]'}, "bad taxon.json"),
    }
    for key, (members, _) in planted.items():
        for ext, data in members.items():
            add_raw_member(shard, f"{key}.{ext}", data)
    # An odd mode is no fault: every mode Pillow reads (here LAB) becomes RGB, as in curation.
    add_raw_member(shard, "lab.jpg", _lab_tiff())
    add_raw_member(shard, "lab.sci.txt", caption)
    dm = shard_datamodule(str(shard))
    assert sorted(_keys(dm)) == ["lab", *(f"s{i:05d}" for i in range(6))]
    assert dm.skipped_samples == len(planted)
    lines = _skip_lines(caplog)
    for key, (_, reason) in planted.items():
        assert any(f"sample {key} in {shard}" in line and reason in line for line in lines), (key, lines)
    assert not any("object at 0x" in r.getMessage() for r in caplog.records)


def test_taxon_json_that_is_not_an_object_is_a_value_error_and_an_eval_skip(tmp_path):
    with pytest.raises(ValueError, match="must hold a JSON object, not list"):
        decode_taxon(b"[1, 2]")
    with pytest.raises(ValueError, match="not NoneType"):
        decode_taxon("null")
    [shard] = write_shards(make_samples(3), tmp_path / "val", max_count=100)
    add_raw_member(shard, "odd.jpg", encode_jpeg(colour_image(1)))
    add_raw_member(shard, "odd.taxon.json", b'"Corvus corax"')
    dm = shard_datamodule(None, eval_sets={"val": str(shard)})
    taxa = [t for b in dm.eval_dataloader("val") for t in b["taxon"]]
    assert len(taxa) == 3


def test_shard_errors_name_the_url_not_the_stream_object(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    paths = write_shards(make_samples(20), tmp_path / "train", max_count=10)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:3000])  # cut inside the second member
    keys = _keys(shard_datamodule([str(p) for p in paths]))
    assert len(keys) == 11
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(paths[1]) in m and "unreadable shard data" in m for m in messages), messages
    assert not any("object at 0x" in m for m in messages)


def test_repeated_skips_are_rate_limited_and_summarised(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    bad = _all_bad_shard(tmp_path / "bad" / "bad.tar", n=200)
    [good] = write_shards(make_samples(4), tmp_path / "good", max_count=100)
    keys = _keys(shard_datamodule([str(bad), str(good)], max_consecutive_skips=1000))
    assert len(keys) == 4
    assert len(_skip_lines(caplog)) == WARNINGS_PER_REASON
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped 200")]
    assert summary and f"{bad}: image not an image x200" in summary[0]


# ------------------------------------------------------------------------------ bounded failure


def _dead_shards(tmp_path: Path) -> dict[str, str]:
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    return {
        "empty tar": str(_empty_tar(tmp_path / "empty.tar")),
        "zero-byte": str(zero),
        "all unreadable": str(_all_bad_shard(tmp_path / "bad" / "bad.tar")),
        "pipe:false": "pipe:false",
        "pipe:cat missing": f"pipe:cat {tmp_path}/nonexistent.tar 2>/dev/null",
    }


EXPECTED = {
    "empty tar": "no sample read",
    "zero-byte": "empty file (0 bytes)",
    "all unreadable": "image not an image",
    "pipe:false": "pipe command",  # failed (exit status 1), or gave no tar data before it exited
    "pipe:cat missing": "pipe command",
}


@pytest.mark.parametrize("resampled", [False, True], ids=["finite", "resampled"])
@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_stream_with_no_usable_sample_stops_with_one_clear_error(tmp_path, case, resampled):
    url = _dead_shards(tmp_path)[case]
    kw = dict(resampled=True, epoch_samples=64) if resampled else {}
    dm = shard_datamodule(url, max_consecutive_skips=100, **kw)
    with pytest.raises(DataError) as err:
        _keys(dm)
    message = str(err.value)
    assert "\n" not in message and url in message and EXPECTED[case] in message, message
    assert message.startswith("no ")


def test_a_silent_pipe_shard_is_cut_after_pipe_timeout(tmp_path):
    """A `pipe:` command that never writes (a stalled download) is stopped after data.pipe_timeout
    seconds of silence and counted as unreadable; a slow but steady one is read in full."""
    start = time.monotonic()
    with pytest.raises(DataError, match="no data for 1 s"):
        _keys(shard_datamodule("pipe:exec sleep 300", pipe_timeout=1))
    assert time.monotonic() - start < 20
    [good] = write_shards(make_samples(5), tmp_path / "good", max_count=100)
    slow = f"pipe:head -c 4096 {good}; sleep 0.5; tail -c +4097 {good}"  # pauses, but under the bound
    assert len(_keys(shard_datamodule(slow, pipe_timeout=5))) == 5
    with pytest.raises(ValueError, match="data.pipe_timeout must be a positive number"):
        shard_datamodule(str(good), pipe_timeout=0)


@pytest.mark.parametrize("resampled", [False, True], ids=["finite", "resampled"])
def test_dead_shards_across_loader_workers_give_one_line(tmp_path, resampled):
    urls = [str(_empty_tar(tmp_path / f"e{i}.tar")) for i in range(3)]
    kw = dict(resampled=True, epoch_samples=64) if resampled else {}
    with pytest.raises(DataError) as err:
        _keys(shard_datamodule(urls, num_workers=2, **kw))
    message = str(err.value)
    assert "\n" not in message and "3 shard(s)" in message and urls[0] in message, message


def test_good_shards_beside_dead_ones_still_train(tmp_path):
    dead = _dead_shards(tmp_path)
    [good] = write_shards(make_samples(5), tmp_path / "good", max_count=100)
    dm = shard_datamodule([*dead.values(), str(good)], max_consecutive_skips=1000)
    assert len(_keys(dm)) == 5
    assert dm.skipped_samples >= 30 + 3  # the unreadable samples, and the zero-byte and pipe shards


def test_an_epoch_too_small_for_one_batch_is_a_clear_error(tmp_path):
    [shard] = write_shards(make_samples(3), tmp_path / "train", max_count=100)
    with pytest.raises(DataError, match="3 usable sample.*fewer than one batch of 4"):
        _keys(shard_datamodule(str(shard), batch_size=4))


def test_training_on_an_empty_tar_fails_instead_of_exiting_0(tmp_path):
    # An empty tar may be refused before the first step (training's path checks); samples that
    # are all unreadable are found only by reading them.
    bad = _all_bad_shard(tmp_path / "bad" / "bad.tar")
    cfg = make_cfg(
        tmp_path,
        [
            "data=shards",
            f"data.train_shards={bad}",
            "data.resampled=false",
            "data.epoch_samples=null",
            "data.batch_size=2",
            "data.num_workers=0",
            "logger=csv",
            "~callbacks.progress_bar",
            "~callbacks.zero_shot",
            "trainer.max_steps=2",
            *MICRO,
        ],
    )
    with pytest.raises(DataError, match=f"no usable sample in 1 shard.*{bad}.*image not an image"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


# ------------------------------------------------------------------------------ sizes and counts


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("batch_size", -8, "a positive integer"),
        ("batch_size", 0, "a positive integer"),
        ("batch_size", True, "a positive integer"),
        ("eval_batch_size", 0, "a positive integer"),
        ("epoch_samples", -1, "a positive integer"),
        ("num_workers", -1, "a non-negative integer"),
        ("shuffle_buffer", -5, "a non-negative integer"),
        ("image_size", 0, "a positive integer"),
        ("context_length", 0, "a positive integer"),
        ("max_consecutive_skips", 0, "a positive integer"),
    ],
)
def test_bad_sizes_are_rejected_when_the_datamodule_is_built(tmp_path, key, value, kind):
    with pytest.raises(ValueError, match=f"data.{key} must be {kind}, got {value!r}"):
        shard_datamodule(str(tmp_path / "x.tar"), **{key: value})


def test_negative_batch_size_from_the_config_fails_at_once(tmp_path):
    [shard] = write_shards(make_samples(4), tmp_path / "train", max_count=100)
    overrides = ["data=shards", f"data.train_shards={shard}", "data.epoch_samples=16", *MICRO]
    cfg = make_cfg(tmp_path, [*overrides, "data.batch_size=-8", "logger=csv"])
    with pytest.raises(Exception, match="data.batch_size must be a positive integer, got -8"):
        train(cfg)
