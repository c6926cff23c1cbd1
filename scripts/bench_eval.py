"""Feature-extraction images/s of tolclip's evaluation pipeline vs open_clip's own, same checkpoint and images.

Both sides load one open_clip checkpoint and encode the same image files into L2-normalised features:

* ``tolclip``: exactly what the evaluation suite runs (`tolclip.evaluation.suite.evaluate`): the checkpoint loaded by
  `tolclip.models.loading.load_open_clip` into our towers, then
  `tolclip.evaluation.features.extract_image_features(net.encode_image, preprocess.transform(), paths, batch, workers)`
  (robust `load_image` decode, our torchvision transform, `torch.inference_mode`).
* ``open_clip``: the natural open_clip loop: `open_clip.create_model_and_transforms("local-dir:FOLDER")`
  (a bare weights file: `open_clip.model.CLIP` of the same architecture + `open_clip.load_checkpoint`, and
  `open_clip.image_transform`), a `DataLoader` over the same paths doing `preprocess(Image.open(path))`,
  the same batch size and workers, `model.encode_image` under `torch.no_grad()`, then normalise.

The untimed warm-up pass of each side also checks that both give the same features (max abs difference);
a speed comparison of different outputs would be meaningless, so the script stops if they differ. Then
the sides are timed in interleaved rounds (the order rotates each round so machine noise hits both alike)
and the median images/s per side and the ratio tolclip / open_clip are printed per worker count.
``--breakdown`` also times the stages apart (decode, transform, model forward under no_grad /
inference_mode) to show where a difference comes from.

    python scripts/bench_eval.py --images 256 --batch-size 32 --workers 0 1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import PIL
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tolclip.curate.sources import IMAGE_EXTENSIONS
from tolclip.data.images import load_image
from tolclip.evaluation.features import extract_image_features
from tolclip.models.loading import LoadedModel, load_open_clip
from tolclip.models.open_clip_config import CONFIG_FILE, open_clip_kwargs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT.parent / "shared" / "data" / "sources" / "butterflies-100" / "test"
DEFAULT_CHECKPOINT = ROOT / "data" / "checkpoints" / "random-openclip-vit-b16"
DEFAULT_MODEL = "ViT-B-16-quickgelu"  # the architecture of BioCLIP (and of the default random checkpoint)
SIDES = ("tolclip", "open_clip")


# ------------------------------------------------------------------------------------------- models


def ensure_default_checkpoint(path: Path) -> None:
    """Write the random ViT-B-16-quickgelu release folder with scripts/make_random_openclip.py if absent."""
    if (path / CONFIG_FILE).is_file():
        return
    print(f"bench_eval: writing a random {DEFAULT_MODEL} checkpoint to {path} (once)", flush=True)
    script = ROOT / "scripts" / "make_random_openclip.py"
    subprocess.run([sys.executable, str(script), str(path), "--model", DEFAULT_MODEL], check=True)


def load_theirs(path: Path, ours: LoadedModel) -> tuple[torch.nn.Module, Callable]:
    """open_clip's model (eval mode) and eval preprocessing for the checkpoint, loaded the open_clip way."""
    if path.is_dir():
        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(path))
    else:  # a bare state dict names no architecture: build the one its shapes describe
        model = open_clip.model.CLIP(**open_clip_kwargs(ours.net_config))
        open_clip.load_checkpoint(model, str(path))
        preprocess = open_clip.image_transform(ours.preprocess.image_size, is_train=False)
    return model.eval(), preprocess


# ------------------------------------------------------------------------------------- the two sides


class _OpenClipImages(Dataset):
    """What open_clip's examples do: ``preprocess(Image.open(path))``."""

    def __init__(self, paths: list[str], preprocess: Callable) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(Image.open(self.paths[i]))


def run_theirs(
    model: torch.nn.Module,
    preprocess: Callable,
    paths: list[str],
    batch: int,
    workers: int,
    device: torch.device,
) -> torch.Tensor:
    loader = DataLoader(_OpenClipImages(paths, preprocess), batch_size=batch, num_workers=workers)
    feats = []
    with torch.no_grad():
        for images in loader:
            feats.append(F.normalize(model.encode_image(images.to(device)).float(), dim=-1).cpu())
    return torch.cat(feats)


def run_ours(
    loaded: LoadedModel, paths: list[str], batch: int, workers: int, device: torch.device
) -> torch.Tensor:
    out = extract_image_features(
        loaded.net.encode_image, loaded.preprocess.transform(), paths, batch, workers, device=device
    )
    if out.failed or out.index.tolist() != list(range(len(paths))):
        sys.exit(f"bench_eval: tolclip could not read {len(out.failed)} images (first: {out.failed[:1]})")
    return out.features


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------- breakdown


def breakdown(
    loaded: LoadedModel,
    theirs: torch.nn.Module,
    preprocess: Callable,
    paths: list[str],
    batch: int,
    rounds: int,
    device: torch.device,
) -> None:
    """Stage rates (images/s, main process, no loader): where a difference between the sides comes from."""
    ours_tf = loaded.preprocess.transform()
    decoded = [load_image(p) for p in paths]
    x = torch.stack([ours_tf(im) for im in decoded]).to(device)
    batches = list(torch.split(x, batch))

    def forward(encode: Callable[[torch.Tensor], torch.Tensor], mode: Callable) -> Callable[[], object]:
        def go() -> None:
            with mode():
                for b in batches:
                    encode(b)

        return go

    def plain_open(p: str) -> Image.Image:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")

    stages: dict[str, Callable[[], object]] = {
        "decode: tolclip load_image": lambda: [load_image(p) for p in paths],
        "decode: PIL open+load+RGB": lambda: [plain_open(p) for p in paths],
        "transform: tolclip (decoded)": lambda: [ours_tf(im) for im in decoded],
        "transform: open_clip (decoded)": lambda: [preprocess(im) for im in decoded],
        "decode+transform: tolclip": lambda: [ours_tf(load_image(p)) for p in paths],
        "decode+transform: open_clip": lambda: [preprocess(Image.open(p)) for p in paths],
        "forward: tolclip inference_mode": forward(loaded.net.encode_image, torch.inference_mode),
        "forward: tolclip no_grad": forward(loaded.net.encode_image, torch.no_grad),
        "forward: open_clip no_grad": forward(theirs.encode_image, torch.no_grad),
        "forward: open_clip inference_mode": forward(theirs.encode_image, torch.inference_mode),
    }
    for fn in stages.values():  # warm-up
        timed(fn, device)
    rates: dict[str, list[float]] = {k: [] for k in stages}
    names = list(stages)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(len(paths) / timed(stages[name], device))
    print(f"\nbreakdown: median images/s over {rounds} rounds, main process, batch {batch} for forward")
    for name, v in rates.items():
        print(f"  {name:<36} {statistics.median(v):>9.1f}")


# -------------------------------------------------------------------------------------------- main


def pick_images(root: Path, n: int) -> list[str]:
    """The first `n` image files under `root` (recursively), sorted by relative path."""
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return [str(p) for p in files[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="open_clip model folder (open_clip_config.json + weights, e.g. BioCLIP) or bare weights file "
        f"(default: {DEFAULT_CHECKPOINT.relative_to(ROOT)}, a random {DEFAULT_MODEL}, written if absent)",
    )
    ap.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation of a bare weights file (a folder's config says it)",
    )
    ap.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="folder of images, searched recursively (default: ../shared/data butterflies-100/test)",
    )
    ap.add_argument("--images", type=int, default=256, help="first N image files by sorted path")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers (a list)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved timed rounds per side and worker count"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--atol", type=float, default=1e-3, help="largest feature difference accepted")
    ap.add_argument("--breakdown", action="store_true", help="also time decode / transform / forward apart")
    args = ap.parse_args()

    if not args.root.is_dir():
        sys.exit(
            f"bench_eval: image folder {args.root} not found. It is the read-only dev data in ../shared/data "
            "(see its README); pass --root DIR for a folder of your own."
        )
    paths = pick_images(args.root, args.images)
    if not paths:
        sys.exit(f"bench_eval: no image files under {args.root}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_eval: --device cuda asked, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = DEFAULT_CHECKPOINT
        ensure_default_checkpoint(checkpoint)
    try:
        ours = load_open_clip(checkpoint, args.quick_gelu)
    except (ValueError, FileNotFoundError) as exn:
        hint = (
            " (here: --quick-gelu or --no-quick-gelu)"
            if args.quick_gelu is None and checkpoint.is_file()
            else ""
        )
        sys.exit(f"bench_eval: {exn}{hint}")
    theirs, preprocess = load_theirs(checkpoint, ours)
    ours.net.to(device)
    theirs.to(device)

    n = len(paths)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    with Image.open(paths[0]) as im0:
        first = f"{im0.format} {im0.width}x{im0.height} {im0.mode}"
    v = ours.net_config["vision"]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"python={platform.python_version()} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"device={device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(f"versions: open_clip={open_clip.__version__} timm={timm.__version__} Pillow={PIL.__version__}")
    print(
        f"checkpoint: {checkpoint} (ViT {v['width']}w x {v['layers']}, patch {v['patch_size']}, "
        f"{v['image_size']} px, {v['act']}); preprocess {ours.preprocess}"
    )
    steps = getattr(preprocess, "transforms", [preprocess])
    print(f"open_clip preprocess: {' -> '.join(type(t).__name__ for t in steps)}")
    print(f"images: {n} files ({mb:.1f} MB, first {first}) from {args.root}")
    print(f"settings: batch={args.batch_size} workers={args.workers} rounds={args.rounds} (+1 warm-up)")

    sides: dict[str, Callable[[int], torch.Tensor]] = {
        "tolclip": lambda w: run_ours(ours, paths, args.batch_size, w, device),
        "open_clip": lambda w: run_theirs(theirs, preprocess, paths, args.batch_size, w, device),
    }
    # Warm-up (page cache, allocator, kernels), untimed; its outputs are the agreement check.
    feats = {s: sides[s](args.workers[0]) for s in SIDES}
    diff = (feats["tolclip"] - feats["open_clip"]).abs().max().item()
    cos = (feats["tolclip"] * feats["open_clip"]).sum(-1).min().item()
    print(f"features: {tuple(feats['tolclip'].shape)} max abs diff {diff:.2e}, min cosine {cos:.6f}")
    if diff > args.atol:
        sys.exit(
            f"bench_eval: features differ by {diff:.2e} > --atol {args.atol:g}: timing would be meaningless"
        )

    rates: dict[tuple[str, int], list[float]] = {(s, w): [] for s in SIDES for w in args.workers}
    for r in range(args.rounds):
        order = SIDES[r % 2 :] + SIDES[: r % 2]
        for w in args.workers:
            for s in order:
                rates[(s, w)].append(n / timed(lambda s=s, w=w: sides[s](w), device))
                print(f"  round {r + 1} workers={w} {s:<9} {rates[(s, w)][-1]:8.1f} img/s", flush=True)

    print(f"\nmedian images/s over {args.rounds} rounds ({n} images, batch {args.batch_size})")
    print(f"{'workers':>7} {'tolclip':>9} {'open_clip':>10} {'ratio':>7} {'per-round median':>17}")
    for w in args.workers:
        ours_r, theirs_r = rates[("tolclip", w)], rates[("open_clip", w)]
        per_round = statistics.median(a / b for a, b in zip(ours_r, theirs_r, strict=True))
        mo, mt = statistics.median(ours_r), statistics.median(theirs_r)
        print(f"{w:>7} {mo:>9.1f} {mt:>10.1f} {mo / mt:>7.3f} {per_round:>17.3f}")
    print("target (issue): tolclip/open_clip >= 1.0 per worker count")

    if args.breakdown:
        breakdown(ours, theirs, preprocess, paths, args.batch_size, args.rounds, device)


if __name__ == "__main__":
    main()
