"""Faults around the build and export outputs: concurrent builds, resume after the source changed, a build
over an existing folder, export into a used folder, and `check` on damaged shards.

Each fault must end in one clear error, a refusal that keeps the user's files, or a reported problem;
never a hang (every test runs under an alarm), never exit 0 with a catalog the shards disagree with.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tolclip.cli.convert import main as convert_main
from tolclip.curate import image_worker, scan, shard_writer
from tolclip.curate.build import build
from tolclip.curate.check import check, check_catalog
from tolclip.curate.config import BuildError
from tolclip.curate.progress import PROGRESS_FILE, out_dir_lock
from tolclip.models.export import export_open_clip
from tolclip.models.loading import load_open_clip
from tolclip.models.towers import CLIP

from helpers import time_limit

ROOT = Path(__file__).resolve().parents[1]
SPECIES = {"corvus": "Corvus corax", "pica": "Pica pica", "amanita": "Amanita muscaria"}
TEST_SECONDS = 120  # far above any of these tests' run time: hitting it means a hang


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test that runs past TEST_SECONDS instead of hanging the suite."""
    with time_limit(TEST_SECONDS):
        yield


def _png(i: int) -> bytes:
    # Smooth random blobs, distinct per i (no two are duplicates by pHash).
    rng = np.random.default_rng(i)
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((48, 48), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """ImageFolder of 3 species x 3 images, with its names table."""
    root = tmp_path / "src"
    for s, label in enumerate(SPECIES):
        (root / label).mkdir(parents=True)
        for n in range(3):
            (root / label / f"{n}.png").write_bytes(_png(10 * s + n))
    (root / "names.csv").write_text(
        "label,scientific_name\n" + "".join(f"{k},{v}\n" for k, v in SPECIES.items())
    )
    return root


def _config(source: Path, out: Path, **over: object) -> dict:
    src = {
        "kind": "image_folder",
        "source": "mini",
        "root": str(source),
        "names_table": str(source / "names.csv"),
    }
    cfg = {
        "out_dir": str(out),
        "sources": [src],
        "resize": {"mode": "squash", "size": 32},
        "splits": {"train": 70, "val": 30},
        "max_count": 2,
        "workers": 0,  # in this process, so tests can patch the image stage
        "progress": False,
    }
    return {**cfg, **over}


def _cli_build(source: Path, out: Path, tmp_path: Path, tag: str, *overrides: str) -> subprocess.Popen:
    src = f"{{kind: image_folder, source: mini, root: {source}, names_table: {source / 'names.csv'}}}"
    cmd = [
        sys.executable,
        "-m",
        "tolclip.cli.build",
        f"build.out_dir={out}",
        f"build.sources=[{src}]",
        "build.resize.size=32",
        "build.workers=1",
        "build.progress=false",
        f"hydra.run.dir={tmp_path / ('hydra_' + tag)}",
        *overrides,
    ]
    env = {**os.environ, "TOLCLIP_ROOT": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------------------ concurrency


def test_second_build_into_a_locked_out_dir_fails_at_once(source: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    real = image_worker.process_one
    errors: list[str] = []

    def start_second_build(task):
        # While the first build is in its image stage, a second one starts on the same folder.
        if not errors:
            with pytest.raises(BuildError) as err:
                build(_config(source, out))
            errors.append(str(err.value))
        return real(task)

    monkeypatch.setattr(image_worker, "process_one", start_second_build)
    build(_config(source, out))
    assert errors == [
        f"another build is writing {out} (lock held by pid {os.getpid()}); "
        "wait for it to end or choose another out_dir"
    ]
    assert check(out) == []  # the first build was not disturbed


def test_cli_build_refuses_a_locked_out_dir(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out_dir_lock(out):
        proc = _cli_build(source, out, tmp_path, "locked")
        _, err = proc.communicate(timeout=TEST_SECONDS - 10)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"tolclip build-shards: error: another build is writing {out} (lock held by pid {os.getpid()}); "
        "wait for it to end or choose another out_dir"
    ]
    assert [p.name for p in out.iterdir()] == [".lock"]  # the refused build wrote nothing


def test_two_cli_builds_at_once(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs = [_cli_build(source, out, tmp_path, str(i)) for i in range(2)]
    results = [(p.wait(timeout=TEST_SECONDS - 10), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    # The loser either met the lock or, when it started after the winner ended, the finished build.
    loser = next(err for rc, err in results if rc == 2)
    assert "another build is writing" in loser or "is not empty (it holds an earlier tolclip build)" in loser
    assert "Traceback" not in loser
    assert check(out) == []


# --------------------------------------------------------------------------------- resume after change


def _interrupt_after(monkeypatch, n: int) -> None:
    real = image_worker.process_one
    calls: list[str] = []

    def flaky(task):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(task[0])
        return real(task)

    monkeypatch.setattr(image_worker, "process_one", flaky)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_refuses_a_changed_source(source: Path, tmp_path: Path, monkeypatch, workers: int) -> None:
    """With workers the scan stage runs in its own process: its refusal arrives as the same one line."""
    out = tmp_path / "out"
    _interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        build(_config(source, out))
    monkeypatch.undo()
    (source / "corvus" / "0.png").unlink()
    (source / "pica" / "9.png").write_bytes(_png(99))
    with pytest.raises(BuildError) as err:
        build(_config(source, out, resume=True, workers=workers))
    assert str(err.value) == (
        f"source changed since the interrupted build in {out}: 1 input(s) missing (corvus/0.png), "
        "1 new (pica/9.png); rebuild without resume (build.overwrite=true) or restore the source"
    )
    assert not (out / "catalog.csv").exists()
    # The refusal keeps the interrupted build's record; starting over gives agreeing output.
    with pytest.raises(BuildError, match="source changed"):
        build(_config(source, out, resume=True))
    build(_config(source, out, overwrite=True))
    assert check(out) == []


def test_resume_refuses_an_edited_image_after_shards_were_written(
    source: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    real_close = shard_writer.ShardStream._close
    closed: list[str] = []

    def crash(stream):
        if len(closed) == 2:
            raise RuntimeError("disk full")
        closed.append(stream.rel)
        real_close(stream)

    monkeypatch.setattr(shard_writer.ShardStream, "_close", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build(_config(source, out))
    monkeypatch.undo()
    (source / "amanita" / "1.png").write_bytes(_png(77))  # same name, other photo
    with pytest.raises(BuildError, match=r"source changed .*: 1 changed \(amanita/1.png\)"):
        build(_config(source, out, resume=True))
    assert not (out / "catalog.csv").exists()


def test_build_fails_when_shards_disagree_with_the_catalog(source: Path, tmp_path: Path, monkeypatch) -> None:
    real = shard_writer.ShardStream.add
    dropped: list[str] = []

    def lossy(stream, length, blob):  # a shard writer that loses a sample: exit 0 would hide it
        if stream.count == 1 and not dropped:  # the second sample of the first shard that gets one
            dropped.append(stream.rel)
            blob = None
        return real(stream, length, blob)

    monkeypatch.setattr(shard_writer.ShardStream, "add", lossy)
    out = tmp_path / "out"
    with pytest.raises(
        BuildError, match=r"the shards in .* disagree with catalog.csv: .*catalog sample\(s\) missing"
    ):
        build(_config(source, out))
    assert json.loads((out / PROGRESS_FILE).read_text())["complete"] is False
    assert check_catalog(out) != []


# ------------------------------------------------------------------------------- existing output folders


def test_fresh_build_over_an_earlier_one_refuses_and_keeps_user_files(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(_config(source, out))
    shards = sorted(p.relative_to(out) for p in out.glob("*/shard-*.tar"))
    (out / "notes.txt").write_text("mine")
    (out / "train" / "keep.me").write_text("mine too")
    with pytest.raises(BuildError, match="is not empty .*an earlier tolclip build.*build.overwrite=true"):
        build(_config(source, out))
    assert sorted(p.relative_to(out) for p in out.glob("*/shard-*.tar")) == shards
    # overwrite=true replaces the build's files only.
    build(_config(source, out, overwrite=True, splits={"train": 100}))
    assert (out / "notes.txt").read_text() == "mine" and (out / "train" / "keep.me").read_text() == "mine too"
    assert not (out / "val").exists()  # the earlier build's val shards are gone, not left stale
    assert check(out) == []


def test_build_into_a_folder_of_user_files_refuses(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    for resume in (False, True):
        with pytest.raises(BuildError, match="holds files no tolclip build wrote, e.g. 'holiday.jpg'"):
            build(_config(source, out, resume=resume))
    build(_config(source, out, overwrite=True))
    assert (out / "holiday.jpg").read_bytes() == b"not ours" and check(out) == []
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BuildError, match="is not a folder"):
        build(_config(source, a_file))


# ------------------------------------------------------------------------------------------------- export

TINY = {
    "embed_dim": 32,
    "vision": {"image_size": 16, "patch_size": 8, "width": 64, "layers": 1, "heads": 1},
    "text": {"context_length": 8, "width": 64, "layers": 1, "heads": 1},
}
WIDER = {**TINY, "embed_dim": 48, "text": {**TINY["text"], "width": 128, "heads": 2}}


def test_export_into_a_used_folder_needs_force(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    out = tmp_path / "release"
    export_open_clip(CLIP(**WIDER), out, write_bin=True)
    (out / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="is not empty; use --force"):
        export_open_clip(CLIP(**TINY), out)
    assert load_open_clip(out).net_config["embed_dim"] == 48  # untouched
    # The CLI: one line, exit 2, nothing written; --force replaces the earlier export only.
    assert convert_main(["export", str(out), str(tmp_path / "fresh")]) == 0
    capsys.readouterr()
    assert convert_main(["export", str(tmp_path / "fresh"), str(out)]) == 2
    assert "is not empty; use --force" in capsys.readouterr().err
    export_open_clip(CLIP(**TINY), tmp_path / "tiny")
    assert convert_main(["export", str(tmp_path / "tiny"), str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]  # the wider model's .bin did not stay beside the new weights
    assert load_open_clip(out).net_config["embed_dim"] == 32
    assert (out / "README.md").read_text() == "my notes"
    with pytest.raises(FileExistsError, match="is a file"):
        export_open_clip(CLIP(**TINY), out / "README.md", force=True)


# -------------------------------------------------------------------------------------------------- check


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "elsewhere"
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_check_reports_damaged_samples_without_crashing(tmp_path: Path) -> None:
    jpg = io.BytesIO()
    Image.open(io.BytesIO(_png(1))).convert("RGB").save(jpg, format="JPEG")
    good = json.dumps({"kingdom": "Animalia", "genus": "Corvus", "species": "corax"}).encode()
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, taxon in (("ok", good), ("list", b"[1, 2]"), ("text", b'"Corvus"'), ("num", b"7")):
            _member(tar, f"{key}.jpg", jpg.getvalue())
            _member(tar, f"{key}.taxon.json", taxon)
        _member(tar, "noextension", b"x")
        _member(tar, "link.jpg", kind=tarfile.SYMTYPE)
    shutil.copy(folder / "shard-000000.tar", folder / "shard-000001.tar")
    whole = (folder / "shard-000001.tar").read_bytes()
    (folder / "shard-000001.tar").write_bytes(whole[:700])  # cut inside the first image

    problems = check(folder)
    first = [p for p in problems if p.startswith("shard-000000.tar")]
    for key in ("list", "text", "num"):
        assert any(p.startswith(f"shard-000000.tar {key}: bad taxon.json") for p in first), problems
    assert not any(p.startswith("shard-000000.tar ok:") for p in first)
    assert "shard-000000.tar: odd member 'noextension' (no key.extension name)" in first
    assert "shard-000000.tar: odd member 'link.jpg' (not a regular file)" in first
    second = [p for p in problems if p.startswith("shard-000001.tar")]
    assert "shard-000001.tar: truncated shard (no end-of-archive marker)" in second
    assert any("unreadable shard" in p for p in second)


def test_file_system_oddities_in_a_source_are_reported_not_fatal(source: Path, tmp_path: Path) -> None:
    """Folder-link loops, a second path to the same photos, dangling links and odd file names: each
    input ends in the catalog or skipped.csv, and the build's shards check clean."""
    (source / "corvus" / "loop").symlink_to(source / "corvus")  # a loop back to its own folder
    (source / "pica" / "again").symlink_to(source / "amanita")  # a second path to photos walked later
    (source / "amanita" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    odd = ["new\nline.png", 'comma, "quote".png', "ünïcode 名前.png", os.fsdecode(b"bad-\xff-bytes.png")]
    for n, name in enumerate(odd):
        (source / "corvus" / name).write_bytes(_png(100 + n))
    out = tmp_path / "out"
    stats = build(_config(source, out))
    skipped = (out / "skipped.csv").read_text(encoding="utf-8")
    assert "folder link to a folder already walked" in skipped and "gone.png" in skipped
    with (out / "catalog.csv").open(newline="", encoding="utf-8") as fh:
        ids = sorted(row["source_id"] for row in csv.DictReader(fh))
    assert stats["images"] == 9 + len(odd) == len(ids)  # the nine photos once each, every odd name
    assert "corvus/bad-\\xff-bytes.png" in ids and "corvus/new\nline.png" in ids  # bytes kept as escapes
    assert check(out) == []


def test_the_scan_stage_runs_in_its_own_process_with_workers(
    source: Path, tmp_path: Path, monkeypatch
) -> None:
    """With workers the scan stage is a process beside the driver (its serial work overlaps the
    driver's); without, it runs in the driver. The output is the same."""
    real_run = scan.ScanStage.run
    pids = tmp_path / "pids"

    def recording(stage):
        with pids.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        return (yield from real_run(stage))

    monkeypatch.setattr(scan.ScanStage, "run", recording)
    for workers in (0, 2):
        build(_config(source, tmp_path / f"w{workers}", workers=workers))
    inline, forked = (int(line) for line in pids.read_text().split())
    assert inline == os.getpid() and forked != os.getpid()
    for name in ("catalog.csv", "skipped.csv", "excluded.csv", "resolution_report.csv"):
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_a_scan_stage_that_dies_fails_in_one_line_and_the_build_resumes(
    source: Path, tmp_path: Path, monkeypatch
) -> None:
    """The scan stage's process killed mid-scan (out of memory, say): the build stops with one line,
    keeps what it wrote consistent, and a resume gives the uninterrupted build's output."""
    reference = tmp_path / "reference"
    build(_config(source, reference, workers=2, chunk_size=2))
    real_plan = scan.ScanStage.plan
    planned: list[str] = []

    def dying(stage, entry):
        if len(planned) == 5:
            os._exit(9)  # in the scan stage's process: the driver sees it end
        planned.append(entry.key)
        return real_plan(stage, entry)

    out = tmp_path / "out"
    monkeypatch.setattr(scan.ScanStage, "plan", dying)
    with pytest.raises(BuildError, match=r"^the scan stage process ended without finishing \(exit code 9"):
        build(_config(source, out, workers=2, chunk_size=2))
    assert not planned, "plan ran in the driver, not in the scan stage's process"
    monkeypatch.undo()
    build(_config(source, out, workers=2, chunk_size=2, resume=True))
    for name in ("catalog.csv", "skipped.csv", "excluded.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    shards = sorted(p.relative_to(reference) for p in reference.rglob("*.tar"))
    assert shards and sorted(p.relative_to(out) for p in out.rglob("*.tar")) == shards
    assert all((out / p).read_bytes() == (reference / p).read_bytes() for p in shards)
    assert check(out) == []


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"workers": "two"}, "build.workers must be an integer >= 0, got 'two'"),
        ({"workers": 2, "task_timeout": 0}, "build.task_timeout must be > 0 seconds, got 0"),
        ({"workers": 2, "executor": "spark"}, "unknown build.executor 'spark'; known: local, ray"),
    ],
)
def test_bad_executor_settings_are_one_line_before_anything_is_written(
    source: Path, tmp_path: Path, over: dict, message: str
) -> None:
    """Checked before the scan stage's process is forked or anything is written into out_dir."""
    out = tmp_path / "out"
    with pytest.raises(BuildError) as err:
        build(_config(source, out, **over))
    assert str(err.value) == message
    assert [p.name for p in out.iterdir()] == [".lock"]
