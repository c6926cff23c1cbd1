"""`tolclip synthetic OUT_DIR [--seed N] [--set KEY=VALUE ...] [--force]`: write the synthetic tree of life.

Generates the embedded default dataset (`tolclip.data.synthetic`) into OUT_DIR, or reuses the
complete one already there when its config matches, and prints its counts, shard specs and speed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tolclip.data.synthetic import MANIFEST, SyntheticConfig, build_synthetic_dataset, cached_manifest


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings into typed SyntheticConfig overrides."""
    defaults = SyntheticConfig()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(SyntheticConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {', '.join(types)}; got {item!r}")
        out[key] = types[key](value)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tolclip synthetic",
        description="Write the embedded default dataset: a seeded, synthetic tree of life with inherited "
        "visual traits.",
    )
    parser.add_argument("out_dir", help="folder to write train/, val/, unseen/, taxa.json, manifest.json")
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a SyntheticConfig field"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the dataset and print its counts, shard specs and images per second."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(**{**_parse_overrides(args.set), "seed": args.seed})
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    out = Path(args.out_dir)
    if args.force:
        (out / MANIFEST).unlink(missing_ok=True)  # no manifest: the dataset counts as incomplete
    cached = cached_manifest(out, config) is not None
    start = time.perf_counter()
    manifest = build_synthetic_dataset(out, config)
    seconds = time.perf_counter() - start
    counts = manifest["counts"]
    print(json.dumps(counts, indent=1))
    for split, spec in manifest["specs"].items():
        print(f"{split}: {spec}")
    total = sum(counts["images"].values())
    if cached:
        print(f"{total} images: already generated in {manifest['root']}")
    else:
        print(f"{total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s)")
    return 0
