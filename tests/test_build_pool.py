"""`tolclip build-shards` with a worker pool ends cleanly: leaving the pool terminates its workers with
SIGTERM, which must not run the CLI's SIGTERM handler that forked workers inherit (it raised inside the
pool's queue lock: tracebacks on every build, and sometimes a build that never returned)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import colour_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_build_with_two_workers_ends_without_worker_tracebacks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for label in ("corvus", "pica"):
        (src / label).mkdir(parents=True)
        for n in range(6):
            colour_image(n + (10 if label == "pica" else 0), size=48).save(src / label / f"{n}.png")
    names = tmp_path / "names.csv"
    names.write_text("label,scientific_name\ncorvus,Corvus corax\npica,Pica pica\n")
    cmd = [
        sys.executable,
        "-m",
        "tolclip",
        "build-shards",
        f"build.out_dir={tmp_path / 'out'}",
        f"build.sources=[{{kind: image_folder, source: mini, root: '{src}', names_table: '{names}'}}]",
        "build.workers=2",
        "build.chunk_size=1",
        "build.progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=180,
            env={**os.environ, "TOLCLIP_ROOT": str(ROOT)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("build-shards with 2 workers did not return within 180 s (the pool did not shut down)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Terminated" not in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "out" / "catalog.parquet").is_file()
