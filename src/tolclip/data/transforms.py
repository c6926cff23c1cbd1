"""Image transforms: training augmentation and the evaluation preprocessing open_clip describes.

One evaluation transform serves our own eval sets and imported open_clip/BioCLIP models alike:
`Preprocess` holds its settings (they travel with exported checkpoints as `preprocess_cfg`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from tolclip.core.constants import CLIP_MEAN, CLIP_STD


class _ToRGB:
    """``img.convert("RGB")`` for PIL images (open_clip's MaybeConvertMode); a class so it pickles."""

    def __call__(self, img: Any) -> Any:
        return img.convert("RGB") if isinstance(img, Image.Image) else img


class _ResizeLongest:
    """Resize keeping aspect ratio so that the longer side is ``size`` (open_clip ``ResizeKeepRatio(longest=1)``)."""

    def __init__(self, size: int, interpolation: T.InterpolationMode) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        ratio = max(h / self.size, w / self.size)
        return T.functional.resize(img, [round(h / ratio), round(w / ratio)], self.interpolation)


@dataclass(frozen=True)
class Preprocess:
    """Evaluation image preprocessing as open_clip describes it (``preprocess_cfg``)."""

    image_size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shorter side to image_size, then centre crop (open_clip default)

    def __post_init__(self) -> None:
        # Normalise lists / scalars from JSON and YAML so that equal settings compare equal.
        for field in ("mean", "std"):
            value = getattr(self, field)
            value = (value,) * 3 if isinstance(value, int | float) else tuple(value)
            if len(value) != 3:
                raise ValueError(f"Preprocess.{field} needs 3 values (RGB), got {value!r}")
            object.__setattr__(self, field, tuple(float(x) for x in value))
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"Preprocess.interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}"
            )
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(
                f"Preprocess.resize_mode must be 'shortest', 'longest' or 'squash', got {self.resize_mode!r}"
            )
        object.__setattr__(self, "image_size", int(self.image_size))

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """torchvision transform equal to open_clip's eval ``image_transform`` for these settings."""
        mode = (
            T.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
        )
        size = self.image_size
        if self.resize_mode == "shortest":
            resize = [T.Resize(size, interpolation=mode), T.CenterCrop(size)]
        elif self.resize_mode == "squash":
            resize = [T.Resize((size, size), interpolation=mode)]
        else:  # letterbox: torchvision's CenterCrop zero-pads like open_clip's CenterCropOrPad(fill=0)
            resize = [_ResizeLongest(size, mode), T.CenterCrop(size)]
        return T.Compose([*resize, _ToRGB(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def open_clip_cfg(self) -> dict[str, Any]:
        """The ``preprocess_cfg`` entry of ``open_clip_config.json``."""
        return {
            "size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }

    @classmethod
    def from_open_clip_cfg(cls, cfg: Mapping[str, Any], image_size: int) -> Preprocess:
        """Read a ``preprocess_cfg`` over open_clip's defaults; the size is the model's, as in open_clip."""
        cfg = dict(cfg)
        if cfg.get("mode", "RGB") != "RGB":
            raise ValueError(f"preprocess_cfg.mode must be 'RGB', got {cfg['mode']!r}")
        if cfg.get("fill_color", 0) != 0:
            raise ValueError(f"preprocess_cfg.fill_color {cfg['fill_color']!r} is not supported (only 0)")
        interpolation = cfg.get("interpolation") or "bicubic"
        return cls(
            image_size=image_size,
            mean=CLIP_MEAN if cfg.get("mean") is None else cfg["mean"],
            std=CLIP_STD if cfg.get("std") is None else cfg["std"],
            # open_clip evaluates 'random' (a training option) with bicubic
            interpolation="bicubic" if interpolation == "random" else interpolation,
            resize_mode=cfg.get("resize_mode") or "shortest",
        )


class RandomCropToTensor:
    """Training augmentation: torchvision's ``RandomResizedCrop`` (same parameter draw: area in
    `scale`, aspect ratio log-uniform in [3/4, 4/3], 10 tries, then a centre crop) with bicubic
    resampling, then CLIP normalisation, with fewer operations than the torchvision chain.

    The loader shares the CPU with training, so its cost per sample is taken from the model: one
    torch draw per try instead of several, and the uint8-to-float conversion and normalisation in
    two tensor operations. Randomness comes from torch's generator, which the stream
    seeds per sample (a resumed run passes over samples without decoding them).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.9, 1.0)) -> None:
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(CLIP_STD).view(3, 1, 1) * 255.0)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop, drawn as torchvision's ``get_params``."""
        area = width * height
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        for _ in range(10):
            u_area, u_ratio, u_top, u_left = torch.rand(4).tolist()
            target = area * (self.scale[0] + u_area * (self.scale[1] - self.scale[0]))
            ratio = math.exp(lo + u_ratio * (hi - lo))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u_top * (height - h + 1)), height - h)
                left = min(int(u_left * (width - w + 1)), width - w)
                return left, top, left + w, top + h
        w, h = min(width, height), min(width, height)  # fallback: the centre square, as torchvision
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.crop(self.box(*img.size)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return (pixels.float() - self.mean) * self.inv_std


def train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0)) -> Callable:
    return RandomCropToTensor(image_size, tuple(scale))


def eval_transform(image_size: int) -> Callable:
    """CLIP's evaluation preprocessing at `image_size` (shorter side, centre crop, bicubic)."""
    return Preprocess(image_size).transform()
