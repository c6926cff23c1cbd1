"""Writing the synthetic tree of life: seeded splits of rendered images as shards, plus taxa and manifest.

Each genus keeps `unseen_per_genus` species out of training: they are only written to the `unseen`
split, to measure zero-shot generalisation to species whose genus (and family) were seen.

Output (`build_synthetic_dataset`): `train/`, `val/`, `unseen/` shard folders written with
`shards.write_shards`, `taxa.json` and, last, `manifest.json`. A complete dataset with the same
config is reused; a different or partial one is regenerated.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tolclip.data.images import encode_jpeg
from tolclip.data.shards import Sample, shard_spec, write_shards
from tolclip.data.synthetic.draw import render
from tolclip.data.synthetic.tree import SyntheticConfig, SyntheticSpecies, build_tree

#: Bump whenever the tree, names or rendering change, so cached datasets are regenerated.
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "unseen")
MANIFEST = "manifest.json"
TAXA = "taxa.json"


def _image_rng(config: SyntheticConfig, split: str, species_id: int, index: int) -> np.random.Generator:
    # One stream per image, keyed by its identity: images do not depend on write order or on the
    # number of images drawn for other species.
    return np.random.default_rng([config.seed, SPLITS.index(split), species_id, index])


def _split_jobs(
    config: SyntheticConfig, tree: Sequence[SyntheticSpecies], split: str
) -> list[tuple[int, int]]:
    jobs = [(sp.id, i) for sp in tree for i in range(sp.counts(config)[split])]
    # Shuffled (seeded) so consecutive samples and thus shards mix all species.
    random.Random(f"tolclip-synthetic-order/{config.seed}/{split}").shuffle(jobs)
    return jobs


def iter_samples(
    config: SyntheticConfig, split: str, tree: Sequence[SyntheticSpecies] | None = None
) -> Iterator[Sample]:
    """The samples of one split in write order (seeded shuffle), rendered and JPEG-encoded lazily."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tree = build_tree(config) if tree is None else tree
    for species_id, i in _split_jobs(config, tree, split):
        sp = tree[species_id]
        pixels = render(sp.traits, _image_rng(config, split, species_id, i), config)
        yield Sample(
            key=f"syn{config.seed}_{split}_{species_id:05d}_{i:04d}",
            image=encode_jpeg(Image.fromarray(pixels), quality=config.jpeg_quality),
            taxon=sp.taxon,
            source="synthetic",
            source_id=f"seed{config.seed}/{split}/{species_id}/{i}",
        )


def _config_key(config: SyntheticConfig) -> dict[str, Any]:
    """The config as it reads back from JSON, for comparing with a stored manifest."""
    return json.loads(json.dumps(config.to_dict()))


def _with_paths(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Add absolute locations: the manifest file itself stores paths relative to its folder."""
    root = out.resolve()
    specs = {split: str(root / spec) for split, spec in manifest["shards"].items() if spec}
    return {**manifest, "root": str(root), "specs": specs}


def load_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete dataset in `out_dir` (with absolute `root` and `specs`), else None."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        return None
    files = [f for split_files in manifest.get("files", {}).values() for f in split_files]
    if not (out / TAXA).is_file() or not all((out / f).is_file() for f in files):
        return None  # something was deleted since: not complete any more
    return _with_paths(manifest, out)


def cached_manifest(out_dir: str | os.PathLike, config: SyntheticConfig) -> dict[str, Any] | None:
    """The manifest of a complete dataset in `out_dir` generated with `config`, else None."""
    manifest = load_manifest(out_dir)
    if manifest is None or manifest.get("config") != _config_key(config):
        return None
    return manifest


_OURS = {*SPLITS, TAXA, MANIFEST, MANIFEST + ".tmp", TAXA + ".tmp"}


def _clear(out: Path) -> None:
    """Remove a previous (possibly partial) synthetic dataset, refusing to touch anything else."""
    if not out.exists():
        return
    foreign = sorted(set(os.listdir(out)) - _OURS)
    if foreign:
        raise FileExistsError(
            f"{out} holds files a synthetic dataset does not write ({', '.join(foreign[:5])}); "
            "choose an empty or new directory"
        )
    for name in _OURS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_splits(
    cfg: SyntheticConfig, tree: Sequence[SyntheticSpecies], out: Path
) -> tuple[dict[str, str | None], dict[str, list[str]], dict[str, int]]:
    """Shards of every split: (spec, files) relative to `out` and the image count, per split."""
    shards: dict[str, str | None] = {}
    files: dict[str, list[str]] = {}
    images: dict[str, int] = {}
    for split in SPLITS:
        n = sum(sp.counts(cfg)[split] for sp in tree)
        images[split] = n
        if n == 0:  # write_shards would leave one empty shard behind
            shards[split], files[split] = None, []
            continue
        n_shards = math.ceil(n / cfg.samples_per_shard)
        paths = write_shards(iter_samples(cfg, split, tree), out / split, max_count=math.ceil(n / n_shards))
        rel = [p.relative_to(out) for p in paths]
        shards[split] = shard_spec(rel)
        files[split] = [str(p) for p in rel]
    return shards, files, images


def _taxa(cfg: SyntheticConfig, tree: Sequence[SyntheticSpecies]) -> list[dict[str, Any]]:
    """What `taxa.json` holds: every species with its taxon, split counts and traits."""
    return [
        {
            "id": sp.id,
            "taxon": sp.taxon.to_dict(),
            "seen": sp.seen,
            "counts": sp.counts(cfg),
            "traits": asdict(sp.traits),
        }
        for sp in tree
    ]


def _counts(cfg: SyntheticConfig, tree: Sequence[SyntheticSpecies], images: dict[str, int]) -> dict[str, Any]:
    """The manifest's summary: taxa per rank, seen/unseen species and images per split."""
    seen = [sp for sp in tree if sp.seen]
    return {
        "kingdoms": cfg.kingdoms,
        "phyla": len({sp.taxon.phylum for sp in tree}),
        "classes": len({sp.taxon.class_ for sp in tree}),
        "orders": len({sp.taxon.order for sp in tree}),
        "families": len({sp.taxon.family for sp in tree}),
        "genera": len({sp.taxon.genus for sp in tree}),
        "species": len(tree),
        "species_seen": len(seen),
        "species_unseen": len(tree) - len(seen),
        "species_with_common_name": sum(bool(sp.taxon.common) for sp in tree),
        "images": images,
    }


def build_synthetic_dataset(
    out_dir: str | os.PathLike, config: SyntheticConfig | None = None, **overrides: Any
) -> dict[str, Any]:
    """Write the synthetic dataset to `out_dir` and return its manifest.

    `out_dir/train`, `val`, `unseen` hold shards, `taxa.json` every species, `manifest.json` (written
    last, so an interrupted run is never taken for complete) the config, counts and shard specs
    (relative to `out_dir`). The returned dict adds `root` and absolute `specs` per split. If a
    complete dataset with the same config is already there, it is returned without regenerating;
    a different or partial one is removed first (only if the folder holds nothing else).
    """
    cfg = replace(config or SyntheticConfig(), **overrides)
    out = Path(out_dir)
    existing = cached_manifest(out, cfg)
    if existing is not None:
        return existing
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)

    tree = build_tree(cfg)
    shards, files, images = _write_splits(cfg, tree, out)
    _write_json(out / TAXA, _taxa(cfg, tree))
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "tolclip.data.synthetic",
        "config": _config_key(cfg),
        "counts": _counts(cfg, tree, images),
        "shards": shards,
        "files": files,
        "taxa": TAXA,
    }
    _write_json(out / MANIFEST, manifest)
    return _with_paths(manifest, out)
