"""The same build on every executor: in-process, a local process pool and Ray (2 workers) give identical
catalogs, reports and shards, byte for byte, and an interrupted build resumes to the same output.

The Ray cases are marked `ray` (`make test-ray`); they share one local Ray instance (`ray_local`).
"""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import pytest

from test_build import _config, _snapshot, make_sources
from test_faults_build import _cli_build
from tolclip.curate import build as build_module
from tolclip.curate.build import build
from tolclip.curate.check import check
from tolclip.curate.splits import make_key

EXECUTORS = [
    pytest.param(("local", 2, 0), id="local-2"),
    # The near-duplicate index in 3 partitions (in the driver on a local executor, as a Ray build's actors).
    pytest.param(("local", 2, 3), id="local-2-dedup3"),
    pytest.param(("ray", 2, 0), id="ray-2", marks=pytest.mark.ray),
    pytest.param(("ray", 2, 2), id="ray-2-dedup2", marks=pytest.mark.ray),
]


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return make_sources(tmp_path)


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> dict[str, object]:
    kind, workers, partitions = request.param
    if kind == "ray":
        request.getfixturevalue("ray_local")
    # chunk_size 2: several tasks in flight, so results come back out of order and must be reordered.
    return {"executor": kind, "workers": workers, "chunk_size": 2, "dedup_partitions": partitions}


def _members(out: Path) -> dict[str, list[str]]:
    """Shard -> its member names in order (shard membership and order)."""
    found = {}
    for shard in sorted(out.glob("*/shard-*.tar")):
        with tarfile.open(shard) as tar:
            found[shard.relative_to(out).as_posix()] = tar.getnames()
    return found


def test_every_executor_writes_the_same_build(
    sources: dict[str, Path], tmp_path: Path, executor: dict[str, object]
) -> None:
    reference = tmp_path / "inline"
    build(_config(sources, reference, workers=0))
    out = tmp_path / "other"
    stats = build(_config(sources, out, **executor))

    assert _members(out) == _members(reference)
    assert _snapshot(out) == _snapshot(reference)  # catalog, reports, stats and shard bytes
    # Accounting, leakage and dedup hold on this executor too.
    rows = {}
    for name in ("catalog.csv", "skipped.csv", "excluded.csv"):
        with (out / name).open(newline="", encoding="utf-8") as fh:
            rows[name] = list(csv.DictReader(fh))
    assert sum(map(len, rows.values())) == stats["inputs"] == 19
    reasons = {r["source_id"]: (r["stage"], r["reason"]) for r in rows["excluded.csv"]}
    assert reasons["amanita/1.png"][0] == "eval"
    assert reasons["corvus/copy_of_0.png"] == (
        "duplicate",
        f"duplicate of {make_key('mini', 'corvus/0.png')}",
    )
    assert check(out) == []


def test_an_interrupted_build_resumes_to_the_same_output(
    sources: dict[str, Path], tmp_path: Path, executor: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "inline"
    build(_config(sources, reference, workers=0))
    real = build_module.BuildRun.decide
    decided: list[str] = []

    def interrupt(run, entry, result):  # on the driver, so it works whatever runs the image stage
        if len(decided) == 12:
            raise KeyboardInterrupt
        decided.append(entry.key)
        real(run, entry, result)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(build_module.BuildRun, "decide", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(_config(sources, out, **executor))
    assert (out / "cache" / "processed.jsonl").stat().st_size > 0
    if executor["executor"] == "local":  # a local pool's chunks in flight left their spill files
        assert list((out / "cache" / "spill").iterdir())
    assert list(out.glob("*/shard-*.tar")), "some shards were finished before the interrupt"
    monkeypatch.setattr(build_module.BuildRun, "decide", real)
    build(_config(sources, out, resume=True, **executor))
    assert _snapshot(out) == _snapshot(reference)
    assert not list(out.glob("*/.tmp-*")) and not (out / "cache").exists()


@pytest.mark.ray
def test_an_unreachable_cluster_is_one_line_before_anything_is_written(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (make test-ray does)")
    out = tmp_path / "out"
    proc = _cli_build(
        sources["root"], out, tmp_path, "ray", "build.executor=ray", "build.ray_address=127.0.0.1:1"
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("tolclip build-shards: error: cannot reach the Ray cluster at 127.0.0.1:1")
    assert [p.name for p in out.iterdir()] == [".lock"]
