"""Images/s of `tolclip predict` vs pybioclip's `bioclip predict`, whole commands, same model/images/labels.

What a biologist waits for: each side runs as its own process (start-up, imports, model load, label
embeddings, images, CSV written), timed from outside, on the CPU:

* ``tolclip cold``: ``tolclip predict --model MODEL --cls LABELS`` with an empty index cache (the label
  embeddings are computed), default batch size (64) and loader workers;
* ``tolclip warm``: the same with the label embeddings already cached (a second run on the same labels);
* ``bioclip b10`` / ``bioclip bN``: ``bioclip predict --model local-dir:MODEL --cls LABELS --batch-size B``
  with pybioclip's default batch size (10) and with ours. pybioclip is started through a small wrapper
  that calls its console entry point (``bioclip.__main__.main``) unchanged and only records when the label
  embedding and the image loop start and end, for the breakdown columns.

Each round runs every side once; the order rotates between rounds and the page cache is warmed with the
images and weights first, so neither side is favoured by cold files. The outputs are compared (top-1
label per image; probabilities within 1e-4), since a speed comparison of different answers means nothing.

The second part times building a Tree-of-Life index for 10,000 synthetic taxa (80 templates each, the
``taxon_com`` text type) per model. When the whole index would take longer than ``--index-budget`` seconds
(a ViT-B text tower on a CPU), a subset that takes about ``--index-sample`` seconds is embedded instead and
the time for 10,000 taxa is *extrapolated* from its prompts/s, and printed as such. Index times are
in-process (``build_index`` + ``save_index``, what ``tolclip index build`` runs), without process start-up.

    python scripts/bench_predict.py --images 500 --labels 10 --rounds 2 --index-budget 900
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT.parent / "shared" / "data" / "sources" / "butterflies-100"
DEFAULT_MODEL = ROOT / "data" / "checkpoints" / "random-openclip-vit-b32"
BIN = Path(sys.executable).parent
SIDES = ("tolclip cold", "tolclip warm", "bioclip b10", "bioclip bN")

# Runs pybioclip's console entry point unchanged; only notes (on stderr) when its two phases start and end.
PYBIOCLIP_WRAPPER = r"""
import json, sys, time
t0 = time.perf_counter()
import bioclip.predict as bp
from bioclip.__main__ import main
marks = {}
def timed(cls, name):
    inner = getattr(cls, name)
    def wrapped(*a, **k):
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - start
    setattr(cls, name, wrapped)
timed(bp.CustomLabelsClassifier, "_get_txt_embeddings")
timed(bp.BaseClassifier, "create_batched_probabilities_for_images")
sys.argv = ["bioclip", *sys.argv[1:]]
try:
    main()
finally:
    print("BENCH " + json.dumps(marks), file=sys.stderr)
"""


# ------------------------------------------------------------------------------------------- inputs


def pick_images(folder: Path, count: int) -> list[str]:
    """`count` images spread evenly over the sorted files (so every class is represented)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {folder}")
    if count >= len(files):
        return [str(p) for p in files]
    step = len(files) / count
    return [str(files[int(i * step)]) for i in range(count)]


def pick_labels(names_csv: Path, count: int) -> list[str]:
    with names_csv.open(newline="", encoding="utf-8") as fh:
        names = [row["scientific_name"].strip() for row in csv.DictReader(fh)]
    names = list(dict.fromkeys(n for n in names if n and "," not in n))
    return names[:count]


def warm_page_cache(paths: list[str], model: Path) -> None:
    """Read every file once so that no side pays for the first read from disk."""
    for p in [*paths, *(str(f) for f in model.iterdir() if f.is_file())]:
        with open(p, "rb") as fh:
            while fh.read(1 << 22):
                pass


# ----------------------------------------------------------------------------------------- commands


def side_command(side: str, args: argparse.Namespace, labels: str, out: Path, cache: Path) -> list[str]:
    common = ["--cls", labels, "--device", "cpu", "--format", "csv", "--output", str(out)]
    if side.startswith("tolclip"):
        return [
            *[str(BIN / "tolclip"), "predict", "--model", str(args.model), *common],
            *["--force", "--cache-dir", str(cache), "--batch-size", str(args.batch_size), "--no-progress"],
            *["--precision", args.precision],
        ]
    batch = 10 if side == "bioclip b10" else args.batch_size
    return [
        *[sys.executable, "-c", PYBIOCLIP_WRAPPER, "predict", "--model", f"local-dir:{args.model}", *common],
        *["--batch-size", str(batch)],
    ]


def run_side(side: str, args: argparse.Namespace, labels: str, images: list[str], work: Path) -> dict:
    """One timed run of a whole command; returns seconds and the phase marks it reported."""
    out = work / f"{side.replace(' ', '_')}.csv"
    cache = work / ("cache-warm" if side == "tolclip warm" else f"cache-cold-{time.monotonic_ns()}")
    cmd = side_command(side, args, labels, out, cache) + images
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"{side} ran over {args.timeout} s; lower --images/--labels or raise --timeout"
        ) from None
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{side} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    row = {"side": side, "seconds": seconds, "output": out}
    row.update(phases(side, done.stderr, cache))
    if side == "tolclip cold":
        shutil.rmtree(cache, ignore_errors=True)  # each cold run starts from an empty cache
    return row


def phases(side: str, stderr: str, cache: Path) -> dict:
    """Label-embedding and image seconds, as each side reported them (for the breakdown columns)."""
    if side.startswith("bioclip"):
        line = next((ln for ln in stderr.splitlines() if ln.startswith("BENCH ")), "BENCH {}")
        marks = json.loads(line[6:])
        return {
            "labels_s": marks.get("_get_txt_embeddings"),
            "images_s": marks.get("create_batched_probabilities_for_images"),
        }
    images_s = None
    for ln in stderr.splitlines():
        if ln.startswith("tolclip predict:") and " images in " in ln:
            images_s = float(ln.split(" images in ")[1].split(" s")[0])
    labels_s = None
    if side == "tolclip cold":
        metas = list(cache.glob("index/*/*/index.json"))
        labels_s = json.loads(metas[0].read_text())["seconds"] if metas else None
    return {"labels_s": labels_s, "images_s": images_s}


def read_predictions(path: Path) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["file_name"], []).append((row["classification"], float(row["score"])))
    return out


def compare_outputs(rows: list[dict], precision: str = "fp32") -> str:
    """Top-1 agreement and the largest probability difference between tolclip's and pybioclip's CSV."""
    ours = read_predictions(next(r["output"] for r in rows if r["side"] == "tolclip warm"))
    theirs = read_predictions(next(r["output"] for r in rows if r["side"] == "bioclip b10"))
    if ours.keys() != theirs.keys():
        raise SystemExit("tolclip and pybioclip name different images; not comparable")
    same_top1 = sum(ours[k][0][0] == theirs[k][0][0] for k in theirs)
    diff = max(abs(a - b) for k in theirs for (_, a), (_, b) in zip(ours[k], theirs[k], strict=True))
    # bf16 image arithmetic is a different computation: its answers are checked to bf16's accuracy.
    if diff > (1e-4 if precision == "fp32" else 2e-2):
        raise SystemExit(f"outputs differ (max |p - p'| = {diff:.2e}); a speed comparison would mean nothing")
    return f"outputs agree: top-1 identical for {same_top1}/{len(theirs)} images, max |p - p'| = {diff:.1e}"


def predict_rounds(args: argparse.Namespace, images: list[str], labels: list[str], work: Path) -> list[dict]:
    joined = ",".join(labels)
    warm_page_cache(images, args.model)
    # Fills the warm side's cache (and brings every import into the page cache) before anything is timed.
    run_side("tolclip warm", args, joined, images[:2], work)
    rows = []
    for r in range(args.rounds):
        order = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
        order = order if r % 2 == 0 else tuple(reversed(order))
        for side in order:
            row = run_side(side, args, joined, images, work)
            row["round"] = r
            rows.append(row)
            print(f"  round {r}: {side:13s} {row['seconds']:8.1f} s", flush=True)
    print(compare_outputs(rows, args.precision))
    return rows


def fmt(value: float | None, spec: str = "8.1f") -> str:
    return format(value, spec) if value is not None else " " * (int(spec.split(".")[0]) - 1) + "-"


def predict_table(rows: list[dict], n_images: int) -> dict[str, float]:
    print(
        f"\n{'command':14s} {'wall s':>8s} {'images/s':>9s} {'labels s':>9s} {'images s':>9s} {'rest s':>8s}"
    )
    medians = {}
    for side in SIDES:
        mine = [r for r in rows if r["side"] == side]
        wall = statistics.median(r["seconds"] for r in mine)
        labels_s = median_of(mine, "labels_s")
        images_s = median_of(mine, "images_s")
        rest = wall - (labels_s or 0) - (images_s or 0)
        medians[side] = wall
        print(
            f"{side:14s} {wall:8.1f} {n_images / wall:9.2f} {fmt(labels_s, '9.1f')} "
            f"{fmt(images_s, '9.1f')} {rest:8.1f}"
        )
    print()
    for ours in ("tolclip cold", "tolclip warm"):
        for theirs in ("bioclip b10", "bioclip bN"):
            print(f"{ours} vs {theirs}: {medians[theirs] / medians[ours]:.2f}x images/s")
    return medians


def median_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------- index


def synthetic_taxa(count: int) -> list:
    """`count` distinct taxa (full lineages, 60 % with a common name) from the synthetic tree generator."""
    from tolclip.data.synthetic.tree import SyntheticConfig, build_tree

    per_family = 7 * 12  # genera x species
    families = -(-count // (3 * 2 * 2 * 2 * per_family))
    config = SyntheticConfig(
        kingdoms=3,
        phyla_per_kingdom=2,
        classes_per_phylum=2,
        orders_per_class=2,
        families_per_order=families,
        genera_per_family=7,
        species_per_genus=12,
    )
    taxa = [s.taxon for s in build_tree(config)][:count]
    if len({t.ranks for t in taxa}) != count:
        raise SystemExit(f"the synthetic tree gave fewer than {count} distinct taxa")
    return taxa


def timed_build(model, taxa: list) -> float:
    from tolclip.prediction.index import build_index

    start = time.perf_counter()
    build_index(model, taxa, text_type="taxon_com", templates="openai", model_fp="bench")
    return time.perf_counter() - start


def bench_index(spec: str, taxa: list, budget: float, sample_s: float) -> dict:
    """Seconds to embed `taxa` with the model at `spec`: measured when the probe says it fits in `budget`,
    else extrapolated from a subset that takes about `sample_s` seconds."""
    import torch

    from tolclip.models.loading import load_path
    from tolclip.prediction.index import build_index, save_index

    templates = 80
    model = load_path(spec)
    model.net.to("cpu").eval()
    probe = min(len(taxa), 8)
    rate = probe * templates / timed_build(model, taxa[:probe])  # prompts/s, to choose the size measured
    if len(taxa) * templates / rate <= budget:
        start = time.perf_counter()
        index = build_index(model, taxa, text_type="taxon_com", templates="openai")
        built = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            save_index(index, Path(tmp) / "index")
            saved = time.perf_counter() - start
        return {
            "model": spec,
            "taxa": len(taxa),
            "measured_taxa": len(taxa),
            "seconds": built + saved,
            "build_s": built,
            "save_s": saved,
            "prompts_per_s": len(taxa) * templates / built,
            "extrapolated": False,
            "threads": torch.get_num_threads(),
        }
    subset = max(probe, min(len(taxa), int(rate * sample_s / templates)))
    seconds = timed_build(model, taxa[:subset])
    prompts_per_s = subset * templates / seconds
    return {
        "model": spec,
        "taxa": len(taxa),
        "measured_taxa": subset,
        "build_s": seconds,
        "prompts_per_s": prompts_per_s,
        "seconds": len(taxa) * templates / prompts_per_s,
        "extrapolated": True,
        "threads": torch.get_num_threads(),
    }


def index_models(args: argparse.Namespace) -> list[str]:
    if args.index_models:
        return args.index_models
    runs = sorted(ROOT.glob("logs/train/runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return [str(p) for p in runs[-1:]] + [str(args.model)]


def index_table(args: argparse.Namespace) -> list[dict]:
    taxa = synthetic_taxa(args.index_taxa)
    results = []
    for spec in index_models(args):
        res = bench_index(spec, taxa, args.index_budget, args.index_sample)
        results.append(res)
        how = (
            f"EXTRAPOLATED from {res['measured_taxa']} taxa"
            if res["extrapolated"]
            else f"measured (build {res['build_s']:.1f} s + save {res['save_s']:.1f} s)"
        )
        print(
            f"index of {res['taxa']} taxa x 80 templates, {spec}: {res['seconds']:.1f} s, "
            f"{res['prompts_per_s']:.0f} prompts/s; {how}",
            flush=True,
        )
    return results


# ---------------------------------------------------------------------------------------------- main


def machine() -> str:
    import torch

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {load}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="an open_clip release folder")
    p.add_argument("--image-dir", type=Path, default=SOURCES / "test")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--names", type=Path, default=SOURCES / "names.csv", help="CSV with scientific_name")
    p.add_argument("--labels", type=int, default=10, help="custom labels (each x 80 templates)")
    p.add_argument("--batch-size", type=int, default=64, help="tolclip's (and the second bioclip run's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=int, default=3600, help="seconds one command may take")
    p.add_argument("--index-taxa", type=int, default=10_000)
    p.add_argument("--index-models", nargs="*", help="default: the newest training run and --model")
    p.add_argument("--index-budget", type=float, default=900.0, help="longest index build measured in full")
    p.add_argument(
        "--index-sample", type=float, default=120.0, help="seconds of the subset extrapolated from"
    )
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="tolclip's image tower arithmetic"
    )
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--skip-index", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not (args.model / "open_clip_config.json").is_file():
        raise SystemExit(f"{args.model} is not an open_clip release folder: run `make random-openclip`")
    print(f"machine: {machine()}", flush=True)
    report: dict = {}
    if not args.skip_predict:
        images = pick_images(args.image_dir, args.images)
        labels = pick_labels(args.names, args.labels)
        print(
            f"predict: {len(images)} images from {args.image_dir}, {len(labels)} labels, model {args.model}"
        )
        with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
            rows = predict_rounds(args, images, labels, Path(tmp))
            report["predict"] = predict_table(rows, len(images))
    if not args.skip_index:
        report["index"] = index_table(args)
    print(f"machine after: {machine()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
