"""Peak memory of the shard builder against the number of inputs: does `build()` run in bounded memory?

For each image count N this script

1. generates (once per N and seed, then reused from the cache folder) N distinct 24×24 JPEGs, a manifest
   CSV (``path``, ``scientific_name``) and a taxonomy table (the ``table`` backend: fast and offline).
   Each image is a sum of the 64 low-frequency cosines the builder's pHash reads, with signs drawn at
   random (32 positive, 32 negative), so its pHash is exactly that sign pattern: the images differ by
   about 32 bits and the dedup stage keeps them all. Images are spread over N / ``--per-species``
   species (genera, families, ... above them), so the taxa grow with N as well;
2. runs `tolclip.curate.build.build()` on it in a fresh Python process (bounded by ``--timeout``), which
   reports its own peak RSS (``VmHWM`` in /proc/self/status), the largest private memory among its
   child processes (the workers and the scan stage, sampled every 0.2 s: forked, they share most of
   the build's heap, which their RSS would count again), the build's wall time and its statistics.
   ``ru_maxrss`` (RUSAGE_SELF and RUSAGE_CHILDREN) is in the JSON for reference but is not used: on
   Linux a process started by (v)fork + exec keeps its parent's peak as its own ru_maxrss (run from
   pytest, every build "peaked" at pytest's ~950 MB), and the children figure is that of an import-time
   ``ldconfig -p`` helper (~460 MB, vforked by ctypes while torch is imported) rather than the workers'.

A builder in bounded memory has (nearly) the same peak RSS at 5,000 and 50,000 images; one that keeps
per-image state grows with N. Figures are in MB (10^6 bytes).

    python scripts/measure_build_memory.py                       # N = 5000 and 50000, workers=1
    python scripts/measure_build_memory.py --counts 5000 20000 50000 --workers 0 1
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve()
DEFAULT_CACHE = SCRIPT.parents[1] / ".cache" / "build-memory"
IMAGE_SIZE = 24
FILES_PER_FOLDER = 1000  # keeps directories small; 50k files in one folder slows listing and lookups
BATCH = 2000  # images whose pixels are computed together (numpy), bounding the generator's own memory
DONE_FILE = "complete.json"
DATA_VERSION = 2  # part of the cache folder name: a changed generator never reuses an old set
RESULT_MARK = "BUILD-MEMORY-RESULT "
_SPECIES_PER_GENUS, _GENERA_PER_FAMILY, _FAMILIES_PER_ORDER, _ORDERS_PER_CLASS = 4, 4, 4, 4


# ------------------------------------------------------------------------------------------ data set


def _word(i: int, prefix: str) -> str:
    """A lowercase alphabetic name from an index (taxon names must be words, not digits)."""
    letters = ""
    while True:
        i, r = divmod(i, 26)
        letters = chr(ord("a") + r) + letters
        if i == 0:
            return prefix + letters


def taxonomy_rows(n_species: int) -> list[dict[str, str]]:
    """One backbone row per species; every rank above species branches, so all ranks gain taxa with N."""
    rows = []
    for s in range(n_species):
        g = s // _SPECIES_PER_GENUS
        f = g // _GENERA_PER_FAMILY
        o = f // _FAMILIES_PER_ORDER
        c = o // _ORDERS_PER_CLASS
        rows.append(
            {
                "kingdom": "Animalia" if c % 2 == 0 else "Plantae",
                "phylum": _word(c // 4, "Phyl"),
                "class": _word(c, "Clas"),
                "order": _word(o, "Ordo"),
                "family": _word(f, "Fami"),
                "genus": _word(g, "Gen"),
                "species": _word(s, "ep"),  # not "sp": "spp" would read as "species unknown"
                "common_name": _word(s, "common "),
            }
        )
    return rows


def _cosine_basis(n: int) -> np.ndarray:
    # The DCT-II frequencies 1..8 (those the pHash reads) sampled at n pixel centres: an image built
    # from them has the same low-frequency content at the hash's 32×32 scale.
    k = np.arange(1, 9)[:, None]
    j = np.arange(n)[None, :]
    return np.cos(np.pi * k * (j + 0.5) / n)


def image_pixels(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` RGB images (count, 24, 24, 3) uint8 whose pHashes are random 32-of-64-bit patterns."""
    signs = rng.permuted(np.tile(np.repeat([1.0, -1.0], 32), (count, 1)), axis=1).reshape(count, 8, 8)
    basis = _cosine_basis(IMAGE_SIZE)
    grey = basis.T @ signs @ basis
    grey /= np.abs(grey).max(axis=(1, 2), keepdims=True)
    tint = rng.uniform(-25, 25, (count, 1, 1, 3))  # colour shifts only the DC term, which the hash ignores
    return np.clip(128 + 85 * grey[..., None] + tint, 0, 255).astype(np.uint8)


def _write_images(folder: Path, n: int, rng: np.random.Generator) -> list[str]:
    """Write the N JPEGs under folder/images/; returns their paths relative to `folder`."""
    paths = []
    for start in range(0, n, BATCH):
        for i, pixels in enumerate(image_pixels(rng, min(BATCH, n - start)), start=start):
            rel = f"images/{i // FILES_PER_FOLDER:03d}/{i:06d}.jpg"
            if i % FILES_PER_FOLDER == 0:
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            (folder / rel).write_bytes(buf.getvalue())
            paths.append(rel)
    return paths


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def ensure_dataset(cache: Path, n: int, seed: int = 0, per_species: int = 100) -> Path:
    """The folder holding N generated images, manifest.csv and taxonomy.csv; made once, then reused.

    It is written under a temporary name and renamed when complete, so an interrupted generation is
    never mistaken for a finished one.
    """
    if n <= 0 or per_species <= 0:
        raise ValueError(f"image count and --per-species must be positive, not {n} and {per_species}")
    folder = cache / f"v{DATA_VERSION}-n{n}-seed{seed}-per{per_species}"
    if (folder / DONE_FILE).is_file():
        return folder
    tmp = cache / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    species = taxonomy_rows(-(-n // per_species))
    _write_csv(tmp / "taxonomy.csv", species)
    paths = _write_images(tmp, n, rng)
    names = [f"{species[i % len(species)]['genus']} {species[i % len(species)]['species']}" for i in range(n)]
    _write_csv(
        tmp / "manifest.csv", [{"path": p, "scientific_name": s} for p, s in zip(paths, names, strict=True)]
    )
    info = {"images": n, "species": len(species), "seed": seed, "seconds": time.perf_counter() - started}
    (tmp / DONE_FILE).write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder of an older layout
    os.replace(tmp, folder)
    return folder


# ------------------------------------------------------------------------------------------- the build


def build_config(data: Path, out_dir: Path, workers: int, chunk_size: int | None = None) -> dict[str, Any]:
    """The build's config for a generated data set (small shards so the 50k build writes several)."""
    cfg: dict[str, Any] = {
        "out_dir": str(out_dir),
        "sources": [{"kind": "manifest", "source": "synthetic", "table_path": str(data / "manifest.csv")}],
        "taxonomy": {"backend": "table", "path": str(data / "taxonomy.csv")},
        "resize": {"mode": "squash", "size": IMAGE_SIZE},
        "splits": {"train": 90, "val": 10},
        "max_count": 5000,
        "workers": workers,
        "progress": False,
    }
    if chunk_size is not None:
        cfg["chunk_size"] = chunk_size
    return cfg


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss * 1024 / 1e6  # Linux reports ru_maxrss in KiB


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set of a process's current program (VmHWM), or None when it is gone.

    Unlike ru_maxrss it is not inherited: a process started by (v)fork + exec from a big parent (pytest
    with torch loaded) reports the parent's peak as its own ru_maxrss, which would hide the build's.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in text.splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 / 1e6 if line else None


def private_mb(pid: int | str = "self") -> float | None:
    """A process's private memory (Private_Clean + Private_Dirty), or None when it is gone.

    The build's children (pool workers, the scan stage) are forked from it and share most of its heap
    copy-on-write; their RSS and VmHWM count those shared pages again. Private memory is what a child
    adds: where state that grows with the inputs would show. (A worker's includes the file pages of
    the shard it maps while listing the shards at the end of a build: bounded by `max_bytes`.)
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )
    return kb * 1024 / 1e6


class WorkerPeak(threading.Thread):
    """Samples the private memory (`private_mb`) of this process's children (the build's workers and its
    scan stage) every `interval_s` until stopped; `peak_mb` is the largest sample."""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.peak_mb, self._stop_event = interval_s, 0.0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            for task in Path(f"/proc/{os.getpid()}/task").iterdir():
                with contextlib.suppress(OSError):
                    for pid in (task / "children").read_text().split():
                        self.peak_mb = max(self.peak_mb, private_mb(pid) or 0.0)

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=10)
        return self.peak_mb


def _child(config_json: str) -> None:
    """In the fresh process: run the build, then print the measurements as one marked JSON line."""
    from tolclip.curate.build import build

    workers = WorkerPeak()
    workers.start()
    started = time.perf_counter()
    stats = build(json.loads(config_json))
    wall = time.perf_counter() - started
    keep = ("inputs", "images", "skipped", "not_selected", "excluded")
    result = {
        "wall_s": wall,
        "peak_rss_mb": vm_hwm_mb(),
        "workers_peak_private_mb": workers.stop(),
        # For reference only: ru_maxrss includes the peak of whatever process started this one, and
        # RUSAGE_CHILDREN that of an import-time helper (ctypes runs `ldconfig -p` via vfork).
        "ru_maxrss_mb": _maxrss_mb(resource.RUSAGE_SELF),
        "ru_maxrss_children_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
        "stats": {k: stats[k] for k in keep if k in stats},
        "taxa": stats.get("taxa"),
    }
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_build(config: dict[str, Any], timeout_s: float, src: Path | None = None) -> dict[str, Any]:
    """Run `build(config)` in a fresh Python process; its peak RSS, workers' peak RSS, wall time, stats.

    `src` runs another checkout's `tolclip` (its `src` folder, first on PYTHONPATH), e.g. the builder
    before a change.

    Raises RuntimeError (with the child's output tail) when the build fails or exceeds `timeout_s`.
    """
    out_dir = Path(config["out_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh build refuses a non-empty out_dir
    cmd = [sys.executable, str(SCRIPT), "--child-config", json.dumps(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    # Its own session, so a timeout (or Ctrl-C) ends the build's workers too, not only the build process.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(
            f"build of {config['sources'][0]['table_path']} exceeded {timeout_s:.0f}s"
        ) from err
    finally:
        if proc.poll() is None or proc.returncode != 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        shutil.rmtree(out_dir, ignore_errors=True)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (stdout + stderr)[-3000:]
        raise RuntimeError(f"build exited with {proc.returncode} and no result:\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARK) :])


def measure(
    cache: Path,
    n: int,
    workers: int,
    timeout_s: float,
    *,
    seed: int = 0,
    per_species: int = 100,
    src: Path | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the N-image set and measure one build of it (see `run_build`); adds `n`,
    `workers` and `generate_s` (seconds spent on the data set now: near 0 when it was cached)."""
    started = time.perf_counter()
    data = ensure_dataset(cache, n, seed, per_species)
    generated = time.perf_counter() - started
    result = run_build(build_config(data, cache / f"out-n{n}-w{workers}", workers), timeout_s, src)
    return {"n": n, "workers": workers, "generate_s": generated, **result}


# ------------------------------------------------------------------------------------------------ main


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'N':>7} {'workers':>7} {'inputs':>7} {'images':>7} {'skipped':>7} {'excluded':>8} "
        f"{'species':>7} {'peak MB':>8} {'workers MB':>10} {'build s':>8} {'gen s':>6}"
    )
    print(head)
    for r in rows:
        s, taxa = r["stats"], r.get("taxa") or {}
        print(
            f"{r['n']:>7} {r['workers']:>7} {s['inputs']:>7} {s['images']:>7} {s['skipped']:>7} "
            f"{s['excluded']:>8} {taxa.get('species', '-'):>7} {r['peak_rss_mb']:>8.1f} "
            f"{r['workers_peak_private_mb']:>10.1f} {r['wall_s']:>8.1f} {r['generate_s']:>6.1f}"
        )
    for w in sorted({r["workers"] for r in rows}):
        sel = [r for r in rows if r["workers"] == w]
        if len(sel) > 1:
            growth = sel[-1]["peak_rss_mb"] - sel[0]["peak_rss_mb"]
            print(f"workers={w}: peak RSS N={sel[-1]['n']} minus N={sel[0]['n']}: {growth:+.1f} MB")
    print(
        "peak MB: VmHWM of the build process; workers MB: the largest private memory of its child processes (workers, scan stage)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[5000, 50000], help="image counts N")
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="build `workers` values")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated sets are kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-species", type=int, default=100, help="images per species")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per build")
    ap.add_argument("--src", type=Path, help="run the tolclip of another checkout's src/ folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child-config", help=argparse.SUPPRESS)  # internal: run one build (JSON config)
    args = ap.parse_args()
    if args.child_config:
        _child(args.child_config)
        return
    rows = []
    for w in args.workers:
        for n in sorted(args.counts):
            rows.append(
                measure(
                    args.cache, n, w, args.timeout, seed=args.seed, per_species=args.per_species, src=args.src
                )
            )
            print(f"  N={n} workers={w}: peak {rows[-1]['peak_rss_mb']:.1f} MB, {rows[-1]['wall_s']:.1f}s")
    print()
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
