"""The shard writer's own tar encoding: headers equal tarfile's, archives readable by tarfile and GNU tar."""

from __future__ import annotations

import shutil
import subprocess
import tarfile

import pytest

from tolclip.data.shards import tar_header, to_record, ustar_member_names, write_shards

from helpers import make_samples


@pytest.mark.parametrize(
    ("name", "size"),
    [("a.jpg", 0), ("k" * 100, 12345), ("key.taxon.json", 10**9), ("é.txt", 5), ("a" * 150 + ".jpg", 7)],
)
def test_header_equals_tarfile(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o444, 0, "", ""
    fmt = tarfile.USTAR_FORMAT if len(name.encode()) <= 100 and name.isascii() else tarfile.PAX_FORMAT
    assert tar_header(name, size) == info.tobuf(fmt, "utf-8", "surrogateescape")


def test_members_round_trip_through_tarfile(tmp_path) -> None:
    samples = make_samples(7)
    paths = write_shards(samples, tmp_path, max_count=3)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    got: dict[str, bytes] = {}
    for p in paths:
        assert p.stat().st_size % (20 * 512) == 0  # padded to tar's record size
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                assert m.isfile() and m.mtime == 0 and m.mode == 0o444
                got[m.name] = tar.extractfile(m).read()
    want = {
        f"{r['__key__']}.{ext}": v
        for r in map(to_record, samples)
        for ext, v in r.items()
        if ext != "__key__"
    }
    assert got == want


def test_max_bytes_starts_a_new_shard(tmp_path) -> None:
    samples = make_samples(6)
    one = sum(len(v) for k, v in to_record(samples[0]).items() if k != "__key__")
    paths = write_shards(samples, tmp_path, max_bytes=3 * one)
    assert len(paths) > 1
    with tarfile.open(paths[0]) as tar:
        assert 1 <= len({m.name.split(".")[0] for m in tar.getmembers()}) < 6


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_lists_the_shard(tmp_path) -> None:
    (path,) = write_shards(make_samples(2), tmp_path)
    listing = subprocess.run(
        ["tar", "-tf", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(listing) == 2 * len(to_record(make_samples(1)[0])) - 2


def test_fast_member_listing_equals_tarfile_and_refuses_other_tars(tmp_path) -> None:
    (path,) = write_shards(make_samples(5), tmp_path)
    with tarfile.open(path) as tar:
        assert ustar_member_names(path) == tar.getnames()
    # A pax header (a long name), a cut file and a damaged header are left to tarfile.
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a" * 150 + ".jpg")
        tar.addfile(info)
    data = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1024])
    (tmp_path / "bad.tar").write_bytes(data[:257] + b"XXXXX" + data[262:])  # no ustar magic
    for name in ("pax.tar", "cut.tar", "bad.tar"):
        with pytest.raises(ValueError):
            ustar_member_names(tmp_path / name)
