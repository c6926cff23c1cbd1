"""Image features and class-text embeddings of a model on a task, extracted once and cached on disk.

Every evaluation (zero-shot, few-shot, linear probe, rank-level, intrinsic) reads the same frozen,
L2-normalised features, so a model × task pair is encoded once. The cache key covers what changes
the numbers: the model's weights file (path, size, mtime) and architecture, the preprocessing, and
the task's files and labels (and, for text, the class names and templates).

Unreadable images are not dropped silently: they are left out of the features and listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tolclip.data.images import ImageError, ImageInput, load_any
from tolclip.models.io import load_weights_only

__all__ = ["FeatureCache", "ImageFeatures", "extract_image_features", "file_stamp"]


def file_stamp(path: str | os.PathLike) -> list[list[Any]]:
    """(path, size, mtime) of a file, or of every file under a folder: changes when the weights do."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]


@dataclass
class ImageFeatures:
    features: torch.Tensor  # [M, D] float32 (L2-normalised unless asked not to), for the readable images
    index: torch.Tensor  # [M] positions of those images in the input
    failed: list[str] = field(default_factory=list)  # "path: reason" for the unreadable ones
    reasons: dict[int, str] = field(default_factory=dict)  # position -> reason, for the unreadable ones


class _Images(Dataset):
    def __init__(self, items: Sequence[ImageInput], transform: Callable) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(load_any(self.items[i])), ""
        except ImageError as err:
            return i, None, err.reason


def _collate(
    batch: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list]:
    ok = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, reason) for i, x, reason in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, bad


@torch.inference_mode()
def extract_image_features(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable,
    paths: Sequence[ImageInput],
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    *,
    normalize: bool = True,
    allow_none: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImageFeatures:
    """Features of every readable image (paths or PIL images), in input order; unreadable ones are listed.

    ``progress(n)`` is called after each batch with the number of inputs it covered. With ``allow_none``
    an input of which nothing can be read gives empty features instead of an error.
    """
    on_gpu = torch.device(device).type == "cuda"
    loader = DataLoader(
        _Images(paths, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        shuffle=False,
        pin_memory=on_gpu,
    )
    feats, index, reasons = [], [], {}
    for idx, images, bad in loader:
        reasons.update(bad)
        if images is not None:
            out = encode_image(images.to(device, non_blocking=on_gpu)).float()
            feats.append((torch.nn.functional.normalize(out, dim=-1) if normalize else out).cpu())
            index += idx
        if progress is not None:
            progress(len(idx) + len(bad))
    failed = [f"{_label(paths[i], i)}: {reason}" for i, reason in reasons.items()]
    if not feats:
        if not allow_none or not paths:
            raise ValueError(f"none of the {len(paths)} images could be read (first: {failed[:1]})")
        return ImageFeatures(torch.empty(0, 0), torch.empty(0, dtype=torch.long), failed, reasons)
    return ImageFeatures(torch.cat(feats), torch.tensor(index, dtype=torch.long), failed, reasons)


def _label(item: ImageInput, i: int) -> str:
    return str(item) if isinstance(item, str | os.PathLike) else f"image {i}"


class FeatureCache:
    """`root/<kind>-<key>.pt` files; a corrupt or foreign file is recomputed, never trusted."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0

    def get(self, kind: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.root / f"{kind}-{key}.pt" if self.root else None
        if path is not None and path.exists():
            try:
                data = load_weights_only(path, "feature cache file")
            except ValueError:
                data = None  # an unreadable cache file is simply recomputed
            if isinstance(data, dict) and data.get("key") == key:
                self.hits += 1
                return data
        self.misses += 1
        data = {**compute(), "key": key}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(data, tmp)
            os.replace(tmp, path)  # a reader never sees half a file
        return data
