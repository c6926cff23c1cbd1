"""Reduced-scale (DCT-domain) JPEG decoding for the shard builder: speed, and what it changes in the output.

Over one folder of images (read into memory first, so disk speed is out of it) and a target size,
three sides run in interleaved rounds (the order rotates each round so machine noise hits all alike)
and the median round gives images/s:

* ``naive``: Pillow alone: ``Image.open``, ``convert("RGB")``, resize to size×size (BICUBIC,
  reducing_gap 3), JPEG q95 encode.
* ``full``: the builder's path without reduction: `load_image` (all checks, EXIF, mode handling),
  `resize(image, mode, size)`, `encode` q95.
* ``reduced``: the same with `load_image(..., reduce_for=(mode, size), scale_divides=hash_box_factor)`
  (as the builder calls it: the scale divides the pHash's box factor), so a JPEG well above the
  target decodes at 1/2, 1/4 or 1/8 scale in libjpeg (`tolclip.data.images.reduced_decode_scale`);
  the table's scale column counts the images per decode scale (1 = not reduced).

Quality, per image, reduced against full decode (identical for images that are not reduced):

* PSNR of the resized output before JPEG encoding, and after (each side encoded q95 and decoded
  again); for scale, the PSNR that q95 encoding alone costs the full-decode output is printed too.
  Images whose outputs are identical count as 99 dB.
* pHash: Hamming distance between `perceptual_hash` of the full and of the reduced decode (the
  builder hashes the loaded image, so this is what could change its duplicate decisions): the
  largest distance and how many images changed at all; next to it, as a yardstick, the same for
  the full decode re-encoded at q95 at full size (a change nobody would call a different photo),
  and, over the reduced images only, the full decode box-reduced by Pillow (`Image.reduce`) to the
  reduced decode's size: this control separates what the smaller input size alone does to the hash
  (its integer box pre-reduction then runs on a different grid) from what DCT scaling adds.

    python scripts/bench_decode.py ../shared/data/sources/camera-trap-edge --size 224
    python scripts/bench_decode.py ../shared/data/sources/mushrooms/images/train --size 64 112 224
    python scripts/bench_decode.py ../shared/data/sources/mushrooms/images/train --upscale-to 1600 --size 224
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tolclip.curate.dedup import hamming, hash_box_factor, perceptual_hash
from tolclip.data.images import (
    RESIZE_MODES,
    ImageError,
    encode,
    load_image,
    resize,
)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
QUALITY = 95


def read_images(folder: Path, limit: int | None) -> list[bytes]:
    """The bytes of every decodable image under `folder` (sorted, at most `limit`)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    out = []
    for path in paths:
        data = path.read_bytes()
        try:
            load_image(data)
        except ImageError as e:
            print(f"skip {path.name}: {e.reason}", file=sys.stderr)
            continue
        out.append(data)
        if limit is not None and len(out) >= limit:
            break
    return out


def upscaled(images: list[bytes], longer_side: int) -> list[bytes]:
    """Each image upscaled (BICUBIC) so its longer side is `longer_side`, saved as JPEG q90."""
    out = []
    for data in images:
        image = load_image(data)
        scale = longer_side / max(image.size)
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        buf = io.BytesIO()
        image.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def naive(data: bytes, mode: str, size: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def full(data: bytes, mode: str, size: int) -> bytes:
    return encode(resize(load_image(data), mode, size), quality=QUALITY)


def reduced(data: bytes, mode: str, size: int) -> bytes:
    return encode(
        resize(load_image(data, reduce_for=(mode, size), scale_divides=hash_box_factor), mode, size),
        quality=QUALITY,
    )


SIDES: dict[str, Callable[[bytes, str, int], bytes]] = {"naive": naive, "full": full, "reduced": reduced}


def images_per_second(images: list[bytes], mode: str, size: int, rounds: int) -> dict[str, float]:
    """Median images/s of each side over `rounds` interleaved rounds (order rotated each round)."""
    names = list(SIDES)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            side = SIDES[name]
            start = time.perf_counter()
            for data in images:
                side(data, mode, size)
            times[name].append(time.perf_counter() - start)
    return {name: len(images) / statistics.median(t) for name, t in times.items()}


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB (99 for identical images)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def quality(images: list[bytes], mode: str, size: int) -> dict[str, object]:
    """Per-image comparison of the reduced path with the full decode (see the module docstring)."""
    before, after, q95_cost, distances, reference, box_control = [], [], [], [], [], []
    scales: Counter[int] = Counter()
    for data in images:
        big = load_image(data)
        small = load_image(data, reduce_for=(mode, size), scale_divides=hash_box_factor)
        out_full, out_reduced = resize(big, mode, size), resize(small, mode, size)
        assert out_full.size == out_reduced.size, (out_full.size, out_reduced.size)
        before.append(psnr(out_reduced, out_full))
        enc_full = encode(out_full, quality=QUALITY)
        after.append(psnr(_decoded(encode(out_reduced, quality=QUALITY)), _decoded(enc_full)))
        q95_cost.append(psnr(_decoded(enc_full), out_full))
        distances.append(hamming(perceptual_hash(big), perceptual_hash(small)))
        scale = round(max(big.size) / max(small.size))  # the scale libjpeg actually decoded at
        scales[scale] += 1
        if scale > 1:  # control: the full decode box-reduced by Pillow to the same size, no DCT scaling
            box_control.append(hamming(perceptual_hash(big), perceptual_hash(big.reduce(scale))))
        # Reference: what re-encoding the full decode at q95 (same size) alone does to the hash.
        reference.append(hamming(perceptual_hash(big), perceptual_hash(_decoded(encode(big, QUALITY)))))
    return {
        "scales": dict(sorted(scales.items())),
        "psnr_before": (statistics.mean(before), min(before)),
        "psnr_after": (statistics.mean(after), min(after)),
        "q95_cost": (statistics.mean(q95_cost), min(q95_cost)),
        "phash": (max(distances), sum(d > 0 for d in distances)),
        "phash_q95": (max(reference), sum(d > 0 for d in reference)),
        "phash_box": (max(box_control), sum(d > 0 for d in box_control)) if box_control else ("-", "-"),
    }


def _pair(values: tuple) -> str:
    return " / ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in values)


def describe(images: list[bytes]) -> str:
    sizes = []
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(image.size)
    longer = sorted(max(s) for s in sizes)
    return (
        f"{len(images)} images, longer side {longer[0]}..{longer[-1]} px (median {longer[len(longer) // 2]})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="images, searched recursively")
    parser.add_argument("--size", type=int, nargs="+", default=[224], help="target sizes, one table row each")
    parser.add_argument("--mode", choices=[m for m in RESIZE_MODES if m != "none"], default="squash")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    parser.add_argument(
        "--upscale-to",
        type=int,
        default=None,
        metavar="PX",
        help="first upscale every image to this longer side and re-save it as JPEG q90 (in memory)",
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"not a folder: {args.folder}")
    images = read_images(args.folder, args.limit)
    if not images:
        parser.error(f"no decodable images under {args.folder}")
    if args.upscale_to:
        images = upscaled(images, args.upscale_to)
    print(f"{args.folder}: {describe(images)}; mode {args.mode}, {args.rounds} rounds, JPEG q{QUALITY}")
    speeds = {size: images_per_second(images, args.mode, size, args.rounds) for size in args.size}
    print(f"\n{'size':>5} {'naive/s':>8} {'full/s':>8} {'reduced/s':>9} {'vs naive':>9} {'vs full':>8}")
    for size, speed in speeds.items():
        print(
            f"{size:>5} {speed['naive']:>8.1f} {speed['full']:>8.1f} {speed['reduced']:>9.1f} "
            f"{speed['reduced'] / speed['naive']:>8.2f}x {speed['reduced'] / speed['full']:>7.2f}x"
        )
    print(
        f"\n{'size':>5} {'decode scales (scale: n)':>25} {'PSNR pre (mean/min)':>20} {'PSNR post':>12} "
        f"{'q95 cost':>12} {'pHash (max/n>0)':>16} {'q95 ref':>8} {'box ref':>8}"
    )
    for size in args.size:
        q = quality(images, args.mode, size)
        scales = ", ".join(f"{k}: {v}" for k, v in q["scales"].items())
        print(
            f"{size:>5} {scales:>25} {_pair(q['psnr_before']):>20} {_pair(q['psnr_after']):>12} "
            f"{_pair(q['q95_cost']):>12} {_pair(q['phash']):>16} {_pair(q['phash_q95']):>8} {_pair(q['phash_box']):>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
