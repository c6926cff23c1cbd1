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
) -> ImageEmbeddings:
    """Embed every readable input with ``model`` (already on ``device``); failures are listed, not raised.

    ``progress``: None shows a bar on a terminal for long runs; True/False force it.
    """
    keys = [image_key(item, i) for i, item in enumerate(images)]
    if not keys:  # nothing to read (every argument was a problem): the caller still reports those
        return ImageEmbeddings([], torch.empty(0, 0), [], {})
    with _progress_bar(len(images), progress) as bar:
        task = bar.add_task("images", total=len(images)) if bar is not None else None
        advance = (lambda n: bar.advance(task, n)) if bar is not None else None
        out = extract_image_features(
            lambda x: model.net.encode_image(x, normalize=False),
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
