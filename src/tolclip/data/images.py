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
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
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


def load_image(
    path_or_bytes: str | os.PathLike | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_for: tuple[str, int] | None = None,
    scale_divides: Callable[[int, int], int] | None = None,
) -> Image.Image:
    """Decode a file (path or its bytes) into an upright 8-bit RGB image, or raise `ImageError`.

    The pixel limit is checked from the header, before any pixel is decoded, so a decompression
    bomb costs only the header read. EXIF orientation is applied, so the result is upright.

    `reduce_for=(mode, size)` says the image will next go through `resize(image, mode, size)`:
    a JPEG much larger than that needs is then decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
    (see `reduced_decode_scale`), which is several times faster; anything else decodes as without it.
    `scale_divides(width, height)` (of the upright full image) restricts the scale to divisors of what
    it returns: the builder passes its pHash's box factor, so the hash sees the same pixel grid.
    """
    if reduce_for is not None:
        resized_size(1, 1, *reduce_for)  # a bad mode or size is a ValueError for every file, not only JPEGs
    # Our own limit replaces Pillow's warning threshold; its hard error (2x) stays as a backstop.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(path_or_bytes) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError(f"empty: {width}×{height}")
            if width * height > max_pixels:
                raise ImageError(f"too large: {width}×{height}")
            reduced_from = (
                _draft_reduced(image, reduce_for, scale_divides) if reduce_for is not None else None
            )
            _decode(image)
            # Before the transpose, which drops the orientation tag: the file's own pixels and tags.
            source = _jpeg_source(image) if reduced_from is None else None
            try:
                # In place: a copy per image (as `exif_transpose` makes even when it has nothing to do)
                # costs the image stage 10-30 µs.
                ImageOps.exif_transpose(image, in_place=True)
            except Exception as e:  # malformed EXIF raises assorted errors
                raise ImageError(f"bad EXIF: {e.__class__.__name__}") from e
            rgb = to_rgb(image)
        # Leaving `with` closed only the file: a loaded image stays usable (Pillow >= 8.4 keeps its core).
        if reduced_from is not None:
            rgb.info[REDUCED_FROM] = reduced_from
        elif source is not None and rgb is image:
            rgb.info[JPEG_SOURCE] = source
        return rgb


# libjpeg's scaled inverse DCT: 1/8 averages each 8×8 block (its DC term), 1/2 and 1/4 keep the
# lowest 4×4 / 2×2 coefficients, i.e. a decent low-pass, not point sampling.
JPEG_SCALES = (8, 4, 2)
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that transpose width and height
# `Image.info` key on a reduced decode: (upright full width, height, scale), read by `resize`.
REDUCED_FROM = "tolclip_reduced_from"


def reduced_decode_scale(
    width: int, height: int, mode: str, size: int, orientation: int = 1, divides: int | None = None
) -> int:
    """The largest JPEG decode scale (8, 4, 2, else 1) that leaves `resize` enough pixels.

    `width`×`height` is the stored (pre-EXIF) size. A scale qualifies when the part of the reduced
    image that covers the photo, `width / scale` × `height / scale`, is at least the size `resize`
    gives the full decode in both upright dimensions, so `resize` only ever shrinks it. Mode
    ``none`` and images that `resize` keeps as they are never qualify. With `divides`, only scales
    that divide it qualify.
    """
    if orientation in _SWAPS_AXES:
        width, height = height, width
    target = resized_size(width, height, mode, size)
    for scale in JPEG_SCALES:
        if divides is not None and (divides <= 0 or divides % scale):
            continue
        if width // scale >= target[0] and height // scale >= target[1]:
            return scale
    return 1


def _draft_reduced(
    image: Image.Image, reduce_for: tuple[str, int], scale_divides: Callable[[int, int], int] | None = None
) -> tuple[int, int, int] | None:
    """Ask libjpeg for a reduced-scale decode (before `load`) when `reduced_decode_scale` allows one.

    Returns what `resize` needs to treat the result exactly like the full decode, `REDUCED_FROM`.
    """
    if image.format not in ("JPEG", "MPO"):
        return None
    width, height = image.size
    if all(reduced_decode_scale(width, height, *reduce_for, orientation=o) == 1 for o in (1, 6)):
        return None  # too small in either orientation: skip parsing EXIF (most web-sized images)
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: decode at full size; exif_transpose reports the error later
        return None
    upright = (height, width) if orientation in _SWAPS_AXES else (width, height)
    divides = scale_divides(*upright) if scale_divides is not None else None
    scale = reduced_decode_scale(width, height, *reduce_for, orientation=orientation, divides=divides)
    # Pillow picks the largest s in (8, 4, 2, 1) with size // s >= the requested size: `scale`
    # itself once both sides are >= 2 * scale (for tinier images its choice could differ).
    if (
        scale == 1
        or min(width, height) < 2 * scale
        or image.draft(None, (width // scale, height // scale)) is None
    ):
        return None
    return (*upright, scale)


def _reduced_source(image: Image.Image) -> tuple[tuple[int, int], tuple[float, float, float, float]] | None:
    """For a reduced decode from `load_image`: the full decode's size, and the box of the image that
    covers exactly the photo (its last column/row is partial where the scale does not divide the
    size; resizing it whole would stretch the photo by up to a reduced pixel). None for any other
    image, or one whose size changed since."""
    reduced_from = image.info.get(REDUCED_FROM)
    if reduced_from is None:
        return None
    width, height, scale = reduced_from
    if image.size != (-(-width // scale), -(-height // scale)):
        return None
    return (width, height), (0.0, 0.0, width / scale, height / scale)


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

    An image `load_image` decoded at reduced scale (`reduce_for`) gets the output size the full
    decode would get, resampled from exactly the photo's area of it, so it matches that output
    closely (PSNR figures: scripts/bench_decode.py).
    """
    source = _reduced_source(image) if mode != "none" else None
    if source is not None:
        # A reduced decode: the full decode's output size, from exactly the photo's part of it.
        target = resized_size(*source[0], mode, size)
        if target[0] <= image.size[0] and target[1] <= image.size[1]:
            out = image.resize(target, RESAMPLE, box=source[1], reducing_gap=REDUCING_GAP)
            del out.info[REDUCED_FROM]  # Pillow copies `info`; the output is not a reduced decode
            return out
    target = resized_size(image.size[0], image.size[1], mode, size)
    if target == image.size:
        return image
    return image.resize(target, RESAMPLE, reducing_gap=REDUCING_GAP)


def resized_size(width: int, height: int, mode: str, size: int) -> tuple[int, int]:
    """The size `resize` gives a width×height image (the input size where it returns it unchanged)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    if mode == "none":
        return width, height
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    if mode == "squash":
        return size, size
    short = min(width, height)
    if short <= size:
        return width, height
    scale = size / short
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Pin the shorter side exactly: rounding the scale must not give size±1.
    return (size, target[1]) if width <= height else (target[0], size)


# `Image.info` key on an image `load_image` decoded from an RGB JPEG as it is (upright, full scale,
# same pixels): what `original_fits` needs to know about the file.
JPEG_SOURCE = "tolclip_jpeg_source"
# EXIF, ICC, XMP and comments a kept original may carry: a few KB is a colour profile or a short EXIF
# block; a camera's EXIF with its thumbnail (tens of KB) is worth a re-encode to drop.
MAX_KEPT_METADATA = 4096
_SUBSAMPLING_420 = 2  # JpegImagePlugin.get_sampling's code for 4:2:0, Pillow's default when saving


@dataclass(frozen=True)
class JpegSource:
    tables: tuple[list[int], ...]  # quantization tables 0, 1, ... as Pillow reads them (64 steps each)
    subsampling: int
    metadata_bytes: int


def _jpeg_source(image: Image.Image) -> JpegSource | None:
    """The facts `original_fits` reads, for an upright RGB JPEG (whose pixels are then the stored ones)."""
    if image.format != "JPEG" or image.mode != "RGB" or "transparency" in image.info:
        return None
    try:
        if image.getexif().get(0x0112, 1) != 1:
            return None  # `exif_transpose` rotates it: the file's pixels are not the upright ones
    except Exception:  # malformed EXIF: `exif_transpose` reports it
        return None
    from PIL import JpegImagePlugin

    return JpegSource(
        tables=_in_order(getattr(image, "quantization", None) or {}),
        subsampling=JpegImagePlugin.get_sampling(image),
        metadata_bytes=sum(len(data) for _, data in getattr(image, "applist", [])),
    )


def _in_order(tables: dict[int, list[int]]) -> tuple[list[int], ...]:
    return tuple(tables[i] for i in sorted(tables))


@lru_cache(maxsize=8)
def _quality_tables(quality: int) -> np.ndarray:
    # libjpeg's own tables for `quality`, read back from a tiny encode: the order Pillow reports them in.
    with Image.open(io.BytesIO(encode_jpeg(Image.new("RGB", (16, 16)), quality))) as im:
        return np.array(_in_order(im.quantization), dtype=np.int64)


def original_fits(data: bytes, image: Image.Image, stored: Image.Image, quality: int) -> bool:
    """True when the file `data` itself can be stored for `stored` instead of `encode(stored, quality)`.

    That holds for an RGB JPEG that `load_image` decoded as it is (`image`) and `resize` left as it is
    (`stored is image`), quantized at least as coarsely as libjpeg does at `quality` in every table,
    subsampled 4:2:0 like our encode, with little metadata and nothing after its end marker. A
    re-encode of such a file cannot keep more detail than the file has, only lose some more, and costs
    a third of the image stage (docs/curation-at-scale.md); img2dataset calls this skip_reencode.
    """
    source = image.info.get(JPEG_SOURCE)
    if stored is not image or not isinstance(source, JpegSource):
        return False
    ours = _quality_tables(quality)
    return (
        source.subsampling == _SUBSAMPLING_420
        and source.metadata_bytes <= MAX_KEPT_METADATA
        and len(source.tables) == len(ours)  # tables of 64 steps each (as DQT defines them)
        and bool((np.array(source.tables, dtype=np.int64) >= ours).all())
        and data.endswith(b"\xff\xd9")
    )


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
