"""images.py: every messy input becomes upright 8-bit RGB, or one ImageError with a short reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tolclip.data.images import ImageError, encode, load_image, normalise, resize

from helpers import SHARED_DATA

CAMERA = SHARED_DATA / "sources" / "camera-trap-edge"
needs_camera = pytest.mark.skipif(
    not CAMERA.is_dir(), reason="../shared/data not present (only in the dev/CI checkout)"
)


def _png_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height but holds no pixel data: a bomb costs nothing to make."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(
        image.convert("L").resize((32, 24), Image.Resampling.BILINEAR), dtype=np.float64
    ).ravel()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# --- the real messy files -------------------------------------------------------------------


@needs_camera
def test_camera_trap_variants_load_like_the_original() -> None:
    original = load_image(CAMERA / "african_elephants.jpg")
    assert original.mode == "RGB" and original.size == (2048, 1536)
    mean = np.asarray(original, dtype=np.float64).mean(axis=(0, 1))

    # CMYK (Adobe, stored inverted): must look like the original, not like its negative.
    cmyk = load_image(CAMERA / "african_elephants_cmyk.jpg")
    assert cmyk.mode == "RGB" and cmyk.size == original.size
    assert np.abs(np.asarray(cmyk, dtype=np.float64).mean(axis=(0, 1)) - mean).max() < 3

    grey = load_image(CAMERA / "african_elephants_bw.jpg")
    assert grey.mode == "RGB" and grey.size == original.size
    arr = np.asarray(grey)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert _corr(_thumb(grey), _thumb(original)) > 0.98

    # Stored as 1536×2048 with orientation 6: applying EXIF must give the original back.
    with Image.open(CAMERA / "african_elephants_with_exif_orientation.jpg") as raw:
        assert raw.size == (1536, 2048)
    rotated = load_image(CAMERA / "african_elephants_with_exif_orientation.jpg")
    assert rotated.mode == "RGB" and rotated.size == original.size
    assert _corr(_thumb(rotated), _thumb(original)) > 0.98
    upside_down = original.transpose(Image.Transpose.ROTATE_180)
    assert _corr(_thumb(rotated), _thumb(upside_down)) < 0.9


@needs_camera
def test_truncated_camera_trap_file_is_an_image_error() -> None:
    path = CAMERA / "african_elephants_truncated_file.jpg"
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path)
    assert info.value.reason == "truncated"
    with pytest.raises(ImageError, match="truncated"):
        normalise(path.read_bytes(), "squash", 224)


# --- self-made cases ------------------------------------------------------------------------


def test_rgba_png_transparent_becomes_white(tmp_path: Path) -> None:
    arr = np.zeros((10, 20, 4), dtype=np.uint8)
    arr[:, :10] = (200, 0, 0, 255)  # opaque red
    arr[:, 10:15] = (0, 0, 0, 0)  # fully transparent black: must not stay black
    arr[:, 15:] = (0, 0, 0, 128)  # half-transparent black: grey on white
    path = tmp_path / "rgba.png"
    path.write_bytes(_png_bytes(Image.fromarray(arr, mode="RGBA")))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)
    assert out.getpixel((2, 2)) == (200, 0, 0)
    assert out.getpixel((12, 2)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((17, 2)))


def test_palette_png_with_transparency_becomes_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 180, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, 4, 8))
    out = load_image(_png_bytes(image, transparency=0))
    assert out.getpixel((1, 1)) == (0, 180, 0)
    assert out.getpixel((6, 1)) == (255, 255, 255)


def test_greyscale_with_transparency_key_becomes_white() -> None:
    image = Image.new("L", (4, 4), 0)
    image.putpixel((0, 0), 90)
    out = load_image(_png_bytes(image, transparency=0))
    assert out.getpixel((0, 0)) == (90, 90, 90)
    assert out.getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.uint16)).save(buf, format=fmt)
    out = load_image(buf.getvalue())
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_cmyk_jpeg_made_by_pillow_keeps_its_colour() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)
    r, g, b = load_image(buf.getvalue()).getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)
    r, _, b = out.getpixel((10, 5))  # left became top
    assert r > 200 and b < 60


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is a caption, not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\xff\xd8\xff\xe0" + b"\x13" * 100,
    ],
    ids=["empty", "text", "png-garbage", "jpeg-garbage"],
)
def test_non_images_raise_image_error(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError):
        load_image(path)
    with pytest.raises(ImageError):
        load_image(data)


def test_text_file_reason_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.reason == "not an image"
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.jpg")


def test_truncated_png_raises_image_error() -> None:
    rng = np.random.default_rng(0)
    data = _png_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError) as info:
        load_image(data[: len(data) // 2])
    assert "truncated" in info.value.reason or "corrupt" in info.value.reason


def test_pixel_limit_is_checked_from_the_header() -> None:
    # 10000×10000 with no pixel data: only our header check can reject it as "too large"
    # (decoding would fail as truncated instead).
    with pytest.raises(ImageError) as info:
        load_image(_png_header_only(10_000, 10_000), max_pixels=50_000_000)
    assert info.value.reason == "too large: 10000×10000"
    # Far past Pillow's own bomb limit: its DecompressionBombError becomes an ImageError too.
    with pytest.raises(ImageError, match="too large"):
        load_image(_png_header_only(100_000, 100_000), max_pixels=10**12)
    small = _png_bytes(Image.new("RGB", (20, 20)))
    with pytest.raises(ImageError, match="too large: 20×20"):
        load_image(small, max_pixels=399)
    assert load_image(small, max_pixels=400).size == (20, 20)


def test_resize_modes() -> None:
    landscape = Image.new("RGB", (600, 400), (10, 20, 30))
    portrait = Image.new("RGB", (401, 600), (10, 20, 30))
    assert resize(landscape, "squash", 224).size == (224, 224)
    assert resize(Image.new("RGB", (50, 30)), "squash", 224).size == (224, 224)
    assert resize(landscape, "shorter_side", 224).size == (336, 224)
    out = resize(portrait, "shorter_side", 224)
    assert out.size[0] == 224 and out.size[1] == round(600 * 224 / 401)
    small = Image.new("RGB", (300, 200))
    assert resize(small, "shorter_side", 224) is small  # never upscaled
    assert resize(landscape, "none", 224) is landscape
    with pytest.raises(ValueError):
        resize(landscape, "crop", 224)  # type: ignore[arg-type]


def test_normalise_end_to_end_gives_stored_jpeg(tmp_path: Path) -> None:
    arr = np.zeros((300, 500, 4), dtype=np.uint8)
    arr[..., 1] = 150
    arr[:, :250, 3] = 255
    path = tmp_path / "cutout.png"
    path.write_bytes(_png_bytes(Image.fromarray(arr, mode="RGBA")))
    data = normalise(path, "shorter_side", 100, quality=90)
    assert data[:2] == b"\xff\xd8"
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (167, 100)
    assert all(c > 240 for c in out.getpixel((150, 50)))  # transparent half stored white
    assert encode(Image.new("L", (8, 8)))[:2] == b"\xff\xd8"
    with pytest.raises(ValueError):
        encode(out, quality=0)
