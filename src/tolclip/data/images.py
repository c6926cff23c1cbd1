"""Turning any image file into the bytes a shard stores: decode → RGB → resize → JPEG.

Every way an input can be bad (not an image, truncated, too large, a mode we cannot map to RGB)
raises one exception type, `ImageError`, whose `reason` is short and stable so that a curation
run can count and list its skips. No raw PIL/OSError escapes `load_image`.

Notes on the decisions (see also the functions):

* Alpha (RGBA, LA, palette or RGB/L with a transparency key) is composited on **white**: a plain
  `convert("RGB")` drops alpha and shows whatever the transparent pixels hold, usually black,
  which turns cut-out specimen photos into black silhouettes.
* CMYK: Pillow already undoes the Adobe inversion of CMYK JPEGs (it reads the APP14 "Adobe"
  marker and decodes as `CMYK;I`), so `convert("RGB")` gives the right colours: on
  `camera-trap-edge/african_elephants_cmyk.jpg` the mean colour equals the RGB original's
  (201, 183, 188). We add no second inversion.
* 16-bit (I;16*, I) is scaled 0..65535 → 0..255 with rounding; Pillow's own `convert("L")`
  clips instead, which turns most of a 16-bit image white.
* Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (the default) in the process, or
  truncated files decode silently with a grey bottom and cannot be caught here.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 64 MP: above any camera-trap or phone photo we expect (50 MP sensors are ~45 MP), small enough
# that one RGB decode (~190 MB) cannot exhaust a loader worker.
DEFAULT_MAX_PIXELS = 64_000_000

ResizeMode = Literal["squash", "shorter_side", "none"]
RESIZE_MODES: tuple[str, ...] = ("squash", "shorter_side", "none")

# Bicubic: the interpolation CLIP/BioCLIP preprocessing uses, so stored images look like what the
# training transform would produce; Pillow's resize widens the kernel when shrinking (antialiased),
# so no aliasing. LANCZOS is marginally sharper but slower and rings more on JPEG edges.
RESAMPLE = Image.Resampling.BICUBIC
# Pillow first shrinks by an integer factor with a box filter while the image stays >= 3x the
# target; its docs call the result indistinguishable from a full bicubic pass, and it is much
# faster on multi-megapixel camera-trap photos.
REDUCING_GAP = 3.0


class ImageError(Exception):
    """An input that cannot become a stored image. `reason` is short, for skip counts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open(path_or_bytes: str | os.PathLike | bytes) -> Image.Image:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes | bytearray) else path_or_bytes
    try:
        return Image.open(source)
    except Image.DecompressionBombError as e:
        # Pillow refuses at 2x its own MAX_IMAGE_PIXELS before we see the header.
        raise ImageError(f"too large: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError("not an image") from e
    except FileNotFoundError as e:
        raise ImageError("file not found") from e
    except OSError as e:
        # A file cut inside its header fails here ("Truncated File Read"), not in load().
        if "truncat" in str(e).lower():
            raise ImageError("truncated") from e
        raise ImageError(f"unreadable: {e}") from e
    except Exception as e:  # plugins raise SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"corrupt header: {e.__class__.__name__}") from e


def _decode(image: Image.Image) -> None:
    """Force the full decode now, so a truncated or corrupt file fails here, not in a loader."""
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}") from e
    except MemoryError as e:
        raise ImageError("too large: out of memory") from e
    except OSError as e:
        # Pillow says "image file is truncated" (JPEG) or "... truncated ..." / "broken data
        # stream" (PNG); both mean the file ends early.
        msg = str(e).lower()
        if "truncat" in msg or "broken data stream" in msg:
            raise ImageError("truncated") from e
        raise ImageError(f"corrupt: {e}") from e
    except Exception as e:  # decoders raise SyntaxError, ValueError, EOFError, ...
        raise ImageError(f"corrupt: {e.__class__.__name__}") from e


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # PNG/TIFF 16-bit grey decodes to I;16* or I. We assume the 16-bit range (0..65535) for I too,
    # which is what Pillow produces for those files; values outside it are clipped.
    arr = np.asarray(image).astype(np.int64)
    arr = np.clip(arr, 0, 65535)
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded Pillow image as 8-bit RGB (alpha on white, 16-bit scaled, CMYK converted)."""
    mode = image.mode
    try:
        if mode == "RGB" and "transparency" not in image.info:
            return image
        if mode.startswith("I;16") or mode == "I":
            return _sixteen_bit_to_l(image).convert("RGB")
        if mode == "F":
            # Float images have no agreed range; Pillow's clip to 0..255 is as good a guess as any.
            return image.convert("L").convert("RGB")
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        if has_alpha:
            return _on_white(image.convert("RGBA"))
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        # e.g. "conversion from LAB to RGB not supported"
        raise ImageError(f"unsupported mode: {mode}") from e


def load_image(path_or_bytes: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file (path or its bytes) into an upright 8-bit RGB image, or raise `ImageError`.

    The pixel limit is checked from the header, before any pixel is decoded, so a decompression
    bomb costs only the header read. EXIF orientation is applied, so the result is upright.
    """
    # Our own limit replaces Pillow's warning threshold; its hard error (2x) stays as a backstop.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(path_or_bytes) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError(f"empty: {width}×{height}")
            if width * height > max_pixels:
                raise ImageError(f"too large: {width}×{height}")
            _decode(image)
            try:
                upright = ImageOps.exif_transpose(image)
            except Exception as e:  # malformed EXIF raises assorted errors
                raise ImageError(f"bad EXIF: {e.__class__.__name__}") from e
            rgb = to_rgb(upright)
            # Detach from the file: the `with` closes it, and an RGB result must not share pixels
            # with the input image object we are about to drop.
            return rgb.copy() if rgb is image else rgb


ImageInput = str | os.PathLike | bytes | Image.Image


def load_any(item: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`load_image` for a path or bytes; an already opened Pillow image is made upright RGB the same way."""
    if not isinstance(item, Image.Image):
        return load_image(item, max_pixels=max_pixels)
    width, height = item.size
    if width * height > max_pixels:
        raise ImageError(f"too large: {width}×{height}")
    try:
        upright = ImageOps.exif_transpose(item)
    except Exception as e:  # malformed EXIF raises assorted errors
        raise ImageError(f"bad EXIF: {e.__class__.__name__}") from e
    _decode(upright)
    return to_rgb(upright)


def resize(image: Image.Image, mode: ResizeMode, size: int) -> Image.Image:
    """Resize for storage.

    * ``squash``: exactly size×size, aspect ratio not kept (TreeOfLife-10M stores 224×224); small
      images are upscaled, since a fixed stored size is the point of this mode.
    * ``shorter_side``: shorter side becomes `size`, aspect kept; never upscales (an image whose
      shorter side is already <= size is returned as is): upscaling stores more bytes and no
      information, and the training transform resizes anyway.
    * ``none``: unchanged.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    if mode == "none":
        return image
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    width, height = image.size
    if mode == "squash":
        target = (size, size)
    else:
        short = min(width, height)
        if short <= size:
            return image
        scale = size / short
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Pin the shorter side exactly: rounding the scale must not give size±1.
        target = (size, target[1]) if width <= height else (target[0], size)
    if target == image.size:
        return image
    return image.resize(target, RESAMPLE, reducing_gap=REDUCING_GAP)


def encode(image: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes as stored in shards (the one encoder lives in `tolclip.data.shards`)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, not {quality}")
    return encode_jpeg(image, quality=quality)


def normalise(
    path: str | os.PathLike | bytes,
    mode: ResizeMode = "squash",
    size: int = 224,
    quality: int = 95,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> bytes:
    """load → resize → encode: the bytes to store for one input file. Raises `ImageError`."""
    return encode(resize(load_image(path, max_pixels=max_pixels), mode, size), quality=quality)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
