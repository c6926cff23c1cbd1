"""Image embeddings of a loaded model for many inputs, with the unreadable ones kept and explained."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from tolclip.data.images import ImageInput
from tolclip.evaluation.features import extract_image_features
from tolclip.models.loading import LoadedModel

PRECISIONS = ("fp32", "bf16")
# Below this many images a progress bar only flickers.
PROGRESS_MIN_IMAGES = 64


@dataclass
class ImageEmbeddings:
    keys: list[str]  # one per input: its path, or its position for an in-memory image
    features: torch.Tensor  # [len(ok), D] float32 on CPU
    ok: list[int]  # input positions of the rows of `features`
    failures: dict[int, str]  # input position -> why it could not be read

    def row_of(self) -> dict[int, int]:
        """Input position -> row of `features`."""
        return {pos: row for row, pos in enumerate(self.ok)}


def image_key(item: ImageInput, position: int) -> str:
    """How an input is named in outputs: its path as given, or its position (as pybioclip does)."""
    if isinstance(item, bytes | bytearray):
        return str(position)
    return os.fspath(item) if isinstance(item, str | os.PathLike) else str(position)


def _progress_bar(total: int, enabled: bool | None):
    show = enabled if enabled is not None else (sys.stderr.isatty() and total >= PROGRESS_MIN_IMAGES)
    if not show:
        return nullcontext(None)
    from rich.progress import Progress

    return Progress(transient=False, console=None)


def embed_images(
    model: LoadedModel,
    images: Sequence[ImageInput],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    normalize: bool = True,
    progress: bool | None = None,
    precision: str = "fp32",
) -> ImageEmbeddings:
    """Embed every readable input with ``model`` (already on ``device``); failures are listed, not raised.

    ``progress``: None shows a bar on a terminal for long runs; True/False force it. ``precision="bf16"``
    runs the image tower under bfloat16 autocast: about twice the images/s on a CPU with AVX-512 BF16
    (and on GPUs), embeddings within about 1e-3 of float32 (cosine 0.99999 on a ViT-B/32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")

    def encode(x: torch.Tensor) -> torch.Tensor:
        if precision == "fp32":
            return model.net.encode_image(x, normalize=False)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            return model.net.encode_image(x, normalize=False)

    keys = [image_key(item, i) for i, item in enumerate(images)]
    if not keys:  # nothing to read (every argument was a problem): the caller still reports those
        return ImageEmbeddings([], torch.empty(0, 0), [], {})
    with _progress_bar(len(images), progress) as bar:
        task = bar.add_task("images", total=len(images)) if bar is not None else None
        advance = (lambda n: bar.advance(task, n)) if bar is not None else None
        out = extract_image_features(
            encode,
            model.preprocess.transform(),
            list(images),
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            normalize=normalize,
            allow_none=True,
            progress=advance,
        )
    return ImageEmbeddings(keys, out.features, out.index.tolist(), dict(out.reasons))
