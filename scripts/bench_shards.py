"""Shard builder images/s vs the same decode → resize → encode done with Pillow alone, per worker count.

Three sides run over the same fixed image set, in interleaved rounds (the order rotates each round so
machine noise hits all alike); medians are printed:

* ``limit``: Pillow alone, the practical limit: read the file, ``Image.open``, ``convert("RGB")``,
  resize to size×size (BICUBIC, reducing_gap 3 as the builder's squash mode), JPEG encode at the
  builder's quality, bytes returned to the parent.
* ``stage``: the builder's image stage as `build()` runs it: `tolclip.curate.image_worker.process_chunk`
  (decode with all checks, resize, encode, SHA-256, pHash, tar members) through the builder's
  executor and ordered window, results back in the parent (tar members through spill files, as the
  builder's local pool hands them over).

`--reencode always` makes the builder re-encode every image as the limit does; the default, ``auto``,
stores a JPEG already at the stored size as it is (`tolclip.data.images.original_fits`), which on the
default 224-px set skips the encode for every image.
* ``build``: the whole `tolclip.curate.build.build()` on a manifest of those images (scan, taxonomy
  resolution, image stage, dedup, split, shard writing, catalog, stats), `progress=false`.

A second table splits each side's CPU per image (`getrusage`) between this process (the builder's
driver) and its child processes (the pool's workers and, for build, the scan stage): on a machine with
fewer cores than processes the driver's share is CPU the workers do not get, and its inverse is the
images/s one driver can place at most.

Parallelism: the limit runs in-process at ``workers=1`` and in a fork ``multiprocessing.Pool(w)`` with
``imap`` above; the builder's sides use ``w`` worker processes (``workers=0`` would be in-process),
while the parent process dedups, splits and writes shards concurrently.

    python scripts/bench_shards.py --images 600 --workers 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import PIL
from PIL import Image

from tolclip.core.taxonomy import Taxon
from tolclip.curate.build import build
from tolclip.curate.config import BuildConfig
from tolclip.curate.executor import open_executor, ordered_map
from tolclip.curate.image_worker import image_settings, init_worker, process_chunk, unspill
from tolclip.curate.sources import IMAGE_EXTENSIONS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT.parent / "shared" / "data" / "sources" / "butterflies-100" / "train"
# Files under --root other than the default are all labelled with this one species (resolution must
# succeed for the builder to process them; the label does not change the image work).
PLACEHOLDER_SPECIES = "Danaus plexippus"

_SETTINGS: dict = {}


# ----------------------------------------------------------------------------------- the limit side


def _limit_init(size: int, quality: int) -> None:
    _SETTINGS.update(size=size, quality=quality)


def _limit_one(path: str) -> bytes:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    size = _SETTINGS["size"]
    out = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=_SETTINGS["quality"])
    return buf.getvalue()


def _ctx() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def run_limit(paths: list[str], workers: int, size: int, quality: int, chunk: int) -> float:
    t = time.perf_counter()
    if workers <= 1:
        _limit_init(size, quality)
        n = sum(1 for _ in map(_limit_one, paths))
    else:
        with _ctx().Pool(workers, initializer=_limit_init, initargs=(size, quality)) as pool:
            n = sum(1 for _ in pool.imap(_limit_one, paths, chunksize=chunk))
    dt = time.perf_counter() - t
    assert n == len(paths)
    return len(paths) / dt


# ---------------------------------------------------------------------------------- builder sides


def run_stage(paths: list[str], workers: int, size: int, quality: int, chunk: int, tmp: Path) -> float:
    """The image stage of `build()` alone: `process_chunk` over chunks of tasks through the same
    executor and ordered window the builder uses (no dedup, journal or shard writes)."""
    cfg = BuildConfig(
        out_dir=tmp,
        sources=[{}],
        quality=quality,
        resize={"mode": "squash", "size": size},
        reencode=REENCODE[0],
        progress=False,
    )
    taxon = Taxon.clean(genus="Danaus", species="plexippus")  # the label does not change the image work
    tasks = [(f"k{i:06d}", p, taxon, "bench", str(i)) for i, p in enumerate(paths)]
    chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
    spill = Path(tempfile.mkdtemp(dir=tmp)) if workers >= 1 else None  # as the builder hands results over
    t = time.perf_counter()
    results = []
    with open_executor("local", workers, init_worker, image_settings(cfg, None, spill)) as ex:
        for rs in ordered_map(ex, process_chunk, iter(chunks), max(2, 2 * workers)):
            if (spilled := unspill(rs)) is not None:
                spilled.unlink()
            results += [{k: v for k, v in r.items() if k != "blob"} for r in rs]
    dt = time.perf_counter() - t
    bad = [r for r in results if not r["ok"]]
    assert len(results) == len(paths) and not bad, bad[:3]
    return len(paths) / dt


# The builder's re-encode policy for both builder sides (--reencode; the builder's default first).
REENCODE = ["auto"]

# Taxonomy backend of the builds: taxoniq (default), or a table (for a machine without taxoniq's
# databases; --write-taxonomy-table makes one for the chosen images where taxoniq is installed).
TAXONOMY: dict = {"backend": "taxoniq"}


def build_config(manifest: Path, out: Path, workers: int, size: int, quality: int, chunk: int) -> dict:
    return {
        "out_dir": str(out),
        "sources": [{"kind": "manifest", "source": "bench", "table_path": str(manifest)}],
        "workers": workers,
        "chunk_size": chunk,
        "resize": {"mode": "squash", "size": size},
        "quality": quality,
        "reencode": REENCODE[0],
        "progress": False,
        "taxonomy": TAXONOMY,
    }


def write_taxonomy_table(images: list[tuple[str, str]], path: Path) -> None:
    """The lineages (resolved with taxoniq) of the images' names, as a `TableBackend` CSV."""
    from tolclip.core.taxonomy import RANKS
    from tolclip.curate.resolve import Resolver, TaxoniqBackend

    resolver = Resolver(TaxoniqBackend())
    taxa = {resolver.resolve({}, name).taxon for _, name in images}
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*RANKS, "common_name"])
        w.writerows([*t.ranks, t.common] for t in sorted(taxa, key=lambda t: t.ranks) if any(t.ranks))
    print(f"wrote {len(taxa)} lineages to {path}")


def run_build(manifest: Path, n: int, workers: int, size: int, quality: int, chunk: int, tmp: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=tmp))
    t = time.perf_counter()
    stats = build(build_config(manifest, out, workers, size, quality, chunk))
    dt = time.perf_counter() - t
    assert stats["inputs"] == n and stats["skipped"] == 0, {k: stats[k] for k in ("inputs", "skipped")}
    shutil.rmtree(out)
    return n / dt


# --------------------------------------------------------------------------------------- image set


def pick_images(root: Path, names: Path | None, n: int) -> list[tuple[str, str]]:
    """The first `n` image files under `root`, sorted by relative path, with a scientific name each."""
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(root).as_posix(),
    )[:n]
    species: dict[str, str] = {}
    if names is not None:
        with names.open(newline="", encoding="utf-8") as fh:
            species = {row["label"]: row["scientific_name"] for row in csv.DictReader(fh)}
    out = []
    for f in files:
        name = species.get(f.parent.name, "") or PLACEHOLDER_SPECIES
        out.append((str(f.resolve()), name))  # the manifest sits in a temp folder
    return out


def write_manifest(images: list[tuple[str, str]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "scientific_name"])
        w.writerows(images)


# -------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="folder of images (searched recursively; default: ../shared/data butterflies-100/train)",
    )
    ap.add_argument(
        "--names",
        type=Path,
        default=None,
        help="label,scientific_name table for the folder names (default: butterflies names.csv "
        f"with the default --root; otherwise every image is {PLACEHOLDER_SPECIES!r})",
    )
    ap.add_argument(
        "--taxonomy-table",
        type=Path,
        default=None,
        help="resolve with this TableBackend CSV instead of taxoniq",
    )
    ap.add_argument(
        "--write-taxonomy-table",
        type=Path,
        default=None,
        help="write the chosen images' lineages (via taxoniq) to this CSV and exit",
    )
    ap.add_argument("--images", type=int, default=600, help="first N image files by sorted path")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side and worker count")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--chunk-size", type=int, default=64, help="imap chunk size (the builder's default)")
    ap.add_argument(
        "--upscale-to",
        type=int,
        default=0,
        help="first write every chosen image upscaled to this longer side (JPEG q90) into a temp folder and "
        "run on those: large photos, where the builder decodes at reduced scale",
    )
    ap.add_argument(
        "--reencode",
        choices=["auto", "always"],
        default="auto",
        help="the builder's build.reencode: auto keeps a JPEG already at the stored size as it is (the "
        "default), always re-encodes every image as the limit does",
    )
    args = ap.parse_args()
    REENCODE[0] = args.reencode

    if not args.root.is_dir():
        sys.exit(
            f"bench_shards: image folder {args.root} not found. It is the read-only dev data in "
            "../shared/data (see its README); pass --root DIR (and --names label,scientific_name CSV) "
            "for a folder of your own."
        )
    names = args.names
    if names is None and args.root.resolve() == DEFAULT_ROOT.resolve():
        names = DEFAULT_ROOT.parent / "names.csv"
    images = pick_images(args.root, names, args.images)
    if args.write_taxonomy_table:
        write_taxonomy_table(images, args.write_taxonomy_table)
        return
    if args.taxonomy_table:
        TAXONOMY.update(backend="table", path=str(args.taxonomy_table.resolve()))
    if not images:
        sys.exit(f"bench_shards: no image files under {args.root}")
    with tempfile.TemporaryDirectory(prefix="bench_shards_big_") as big:
        if args.upscale_to:
            images = _upscale(images, args.upscale_to, Path(big))
        run_all(args, images)


def _upscale(images: list[tuple[str, str]], longer_side: int, folder: Path) -> list[tuple[str, str]]:
    """Copies of the images upscaled to `longer_side` (as `bench_decode --upscale-to` makes them)."""
    from bench_decode import upscaled

    out = []
    for i, (path, name) in enumerate(images):
        (data,) = upscaled([Path(path).read_bytes()], longer_side)
        target = folder / f"{i:06d}.jpg"
        target.write_bytes(data)
        out.append((str(target), name))
    return out


def run_all(args: argparse.Namespace, images: list[tuple[str, str]]) -> None:
    """Time the three sides on the chosen images and print the table."""
    paths = [p for p, _ in images]
    n = len(paths)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    with Image.open(paths[0]) as im0:
        first = f"{im0.format} {im0.width}x{im0.height}"

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"python={platform.python_version()} Pillow={PIL.__version__}"
    )
    print(
        f"images: {n} files ({mb:.1f} MB, first {first}) from {args.root}; "
        f"squash {args.size}x{args.size} BICUBIC, JPEG q{args.quality}, chunk {args.chunk_size}, "
        f"builder reencode={args.reencode}"
    )

    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmpdir:
        tmp = Path(tmpdir)
        manifest = tmp / "manifest.csv"
        write_manifest(images, manifest)
        sides: dict[str, Callable[[int], float]] = {
            "limit": lambda w: run_limit(paths, w, args.size, args.quality, args.chunk_size),
            "stage": lambda w: run_stage(paths, w, args.size, args.quality, args.chunk_size, tmp),
            "build": lambda w: run_build(manifest, n, w, args.size, args.quality, args.chunk_size, tmp),
        }
        # Warm-up (page cache, imports, taxonomy backend), untimed.
        run_limit(paths, 1, args.size, args.quality, args.chunk_size)
        run_build(manifest, n, 1, args.size, args.quality, args.chunk_size, tmp)

        rates: dict[tuple[str, int], list[float]] = {(s, w): [] for s in sides for w in args.workers}
        cpu: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in rates}
        names_ = list(sides)
        for r in range(args.rounds):
            order = names_[r % len(names_) :] + names_[: r % len(names_)]
            for w in args.workers:
                for s in order:
                    before = _cpu_seconds()
                    rates[(s, w)].append(sides[s](w))
                    after = _cpu_seconds()
                    cpu[(s, w)].append(((after[0] - before[0]) / n * 1e3, (after[1] - before[1]) / n * 1e3))
                    print(f"  round {r + 1} workers={w} {s:<5} {rates[(s, w)][-1]:8.1f} img/s", flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    w1 = args.workers[0]
    print(
        f"\nmedian images/s over {args.rounds} rounds ({n} images); stage = builder image stage alone "
        f"(process_chunk through the executor), build = whole build(); scaling = img/s / img/s at "
        f"workers={w1}"
    )
    head = (
        f"{'workers':>7} {'limit':>9} {'stage':>9} {'build':>9} {'stage/limit':>12} {'build/limit':>12} "
        f"{'scale limit':>12} {'scale stage':>12} {'scale build':>12}"
    )
    print(head)
    for w in args.workers:
        lim, stg, bld = med[("limit", w)], med[("stage", w)], med[("build", w)]
        print(
            f"{w:>7} {lim:>9.1f} {stg:>9.1f} {bld:>9.1f} {stg / lim:>12.3f} {bld / lim:>12.3f} "
            f"{lim / med[('limit', w1)]:>12.2f} {stg / med[('stage', w1)]:>12.2f} "
            f"{bld / med[('build', w1)]:>12.2f}"
        )
    print("target (issue): build/limit >= 0.8 per worker count, near-linear scaling")
    print_cpu(cpu, args.workers)


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished child processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def print_cpu(cpu: dict[tuple[str, int], list[tuple[float, float]]], workers: list[int]) -> None:
    """Where each side's CPU went, per image: this process (the builder's driver, or the limit's parent)
    and its child processes. On a machine with fewer cores than processes, the driver's share is
    CPU the workers do not get; on a bigger one, the driver's own CPU per image caps the build."""
    print("\nCPU ms per image (getrusage, medians): parent = this process (for build: the driver, with the")
    print(
        "pool's threads), workers = child processes (the pool's; for build also the scan stage);\n"
        "cap = 1000 / build parent ms (images/s one driver places)"
    )
    columns = [(side, part) for side in ("limit", "stage", "build") for part in ("parent", "workers")]
    print(f"{'workers':>7} " + " ".join(f"{f'{side} {part}':>14}" for side, part in columns) + f" {'cap':>7}")
    for w in workers:
        ms = {
            (side, part): statistics.median(c[part == "workers"] for c in cpu[(side, w)])
            for side, part in columns
        }
        cap = 1e3 / ms[("build", "parent")]
        print(f"{w:>7} " + " ".join(f"{ms[col]:>14.3f}" for col in columns) + f" {cap:>7.0f}")


if __name__ == "__main__":
    main()
