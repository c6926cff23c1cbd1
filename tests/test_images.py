"""images.py: every messy input becomes upright 8-bit RGB, or one ImageError with a short reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tolclip.curate.dedup import hamming, perceptual_hash
from tolclip.data.images import (
    MAX_KEPT_METADATA,
    ImageError,
    encode,
    load_image,
    normalise,
    original_fits,
    reduced_decode_scale,
    resize,
    resized_size,
)

from helpers import SHARED_DATA, jpeg_bytes

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


# --- reduced-scale (DCT-domain) JPEG decoding: load_image(..., reduce_for=(mode, size)) ---------

# The resized output of a reduced decode must stay this close to full decode + resize. Measured
# (scripts/bench_decode.py, squash 224): camera-trap photos 38.9-54 dB (mean 44.9), the synthetic
# images below 45.8-53.5 dB at 224/112/64; q95 encoding of the stored output alone costs those
# photos 33-38 dB, so 35 dB is below anything seen yet above what a wrong scale gives
# (decoding too small and upscaling measured 24-31 dB).
MIN_PSNR_DB = 35.0


def _psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * float(np.log10(255**2 / mse))


def _synthetic(width: int, height: int, seed: int = 0) -> Image.Image:
    """Sinusoids of many frequencies and directions plus noise: detail at every scale, unlike a flat fill."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    arr = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(6):
            fx, fy, phase = rng.uniform(1, 40), rng.uniform(1, 40), rng.uniform(0, 2 * np.pi)
            arr[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    arr = 128 + 20 * arr + rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "mode", "target", "expected"),
    [
        ((2048, 1536), "squash", 224, 4),  # 1/8 would be 256×192: too short for 224
        ((2048, 1536), "squash", 112, 8),
        ((2048, 1536), "shorter_side", 224, 4),
        ((2048, 1536), "none", 224, 1),
        ((300, 200), "squash", 64, 2),
        ((300, 200), "shorter_side", 224, 1),  # kept as is by resize: must stay byte-identical
        ((300, 200), "squash", 224, 1),
        ((1850, 1790), "shorter_side", 224, 4),  # output 232×224; 1/8 leaves 231×223 whole pixels
        ((1809, 1797), "shorter_side", 224, 8),  # output 225×224; 1/8 leaves 226×224 (+ partial ones)
    ],
)
def test_reduced_decode_scale_leaves_what_resize_needs(
    size: tuple[int, int], mode: str, target: int, expected: int
) -> None:
    scale = reduced_decode_scale(*size, mode, target)
    assert scale == expected
    needed = resized_size(*size, mode, target)
    if 1 < scale < 8:  # the next scale down would not have left enough
        assert size[0] // (2 * scale) < needed[0] or size[1] // (2 * scale) < needed[1]
    for orientation in (5, 6, 7, 8):  # stored transposed: the same decision on the upright size
        assert reduced_decode_scale(size[1], size[0], mode, target, orientation) == expected


@pytest.mark.parametrize(
    ("mode", "size"), [("squash", 224), ("shorter_side", 224), ("squash", 112), ("squash", 64)]
)
def test_big_jpeg_decodes_reduced_and_resizes_like_a_full_decode(mode: str, size: int) -> None:
    data = jpeg_bytes(_synthetic(1600, 1200))
    full = load_image(data)
    reduced = load_image(data, reduce_for=(mode, size))
    assert reduced.mode == "RGB"
    assert reduced.size[0] < full.size[0] and reduced.size[1] < full.size[1]
    needed = resized_size(*full.size, mode, size)
    assert reduced.size[0] >= needed[0] and reduced.size[1] >= needed[1]
    assert _psnr(resize(reduced, mode, size), resize(full, mode, size)) > MIN_PSNR_DB


@pytest.mark.parametrize(
    ("size", "mode", "target", "decoded"),
    [((275, 183), "squash", 64, (138, 92)), ((1809, 1797), "shorter_side", 224, (227, 225))],
)
def test_partial_last_pixel_is_not_stretched_into_the_output(
    size: tuple[int, int], mode: str, target: int, decoded: tuple[int, int]
) -> None:
    # The scale does not divide these sizes: the reduced image's last column and row cover only part
    # of a block. Resized whole, the photo would be stretched by up to a reduced pixel (measured
    # 28.4 and 24.9 dB against the full decode); `resize` maps exactly the photo's part instead.
    data = jpeg_bytes(_synthetic(*size, seed=3))
    full = resize(load_image(data), mode, target)
    reduced = load_image(data, reduce_for=(mode, target))
    assert reduced.size == decoded
    out = resize(reduced, mode, target)
    assert out.size == full.size  # also for shorter_side, whose long side rounds from the aspect
    assert _psnr(out, full) > MIN_PSNR_DB
    # An edited image (here cropped) is no longer the reduced decode: resized plainly.
    cropped = reduced.crop((0, 0, decoded[0] - 1, decoded[1] - 1))
    assert resize(cropped, mode, target).size == resized_size(*cropped.size, mode, target)


# The inverse of what exif_transpose applies per orientation (2-5 and 7 are their own inverse).
_STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decode_applies_exif_orientation(orientation: int) -> None:
    upright = _synthetic(1600, 1200, seed=1)
    upright.paste((255, 0, 0), (0, 0, 400, 1200))  # red on the left
    # Stored so that applying `orientation` (what exif_transpose does) gives `upright` back.
    stored = upright.transpose(_STORED_AS[orientation]) if orientation != 1 else upright
    data = jpeg_bytes(stored, orientation=orientation)
    reduced = load_image(data, reduce_for=("shorter_side", 224))
    assert reduced.size == (400, 300)  # upright, at 1/4
    r, g, b = reduced.getpixel((20, 150))
    assert r > 200 and g < 60 and b < 60  # the red band is on the left again
    full = load_image(data)
    assert _psnr(resize(reduced, "shorter_side", 224), resize(full, "shorter_side", 224)) > MIN_PSNR_DB


def test_png_small_jpeg_and_mode_none_are_unchanged() -> None:
    big = _synthetic(1600, 1200, seed=2)
    cases = [
        (_png_bytes(big), ("squash", 64)),  # not a JPEG: Pillow's draft does nothing for PNG anyway
        (jpeg_bytes(_synthetic(300, 200)), ("squash", 224)),  # no scale leaves 224×224
        (jpeg_bytes(_synthetic(300, 200)), ("shorter_side", 224)),  # resize keeps it as is
        (jpeg_bytes(big), ("none", 224)),
    ]
    for data, reduce_for in cases:
        plain, with_arg = load_image(data), load_image(data, reduce_for=reduce_for)
        assert with_arg.size == plain.size
        assert np.array_equal(np.asarray(with_arg), np.asarray(plain))


def test_truncated_big_jpeg_still_raises_with_reduced_decode() -> None:
    data = jpeg_bytes(_synthetic(1600, 1200))
    with pytest.raises(ImageError) as info:
        load_image(data[: len(data) // 2], reduce_for=("squash", 64))
    assert info.value.reason == "truncated"


def test_reduced_decode_keeps_cmyk_and_grey_jpegs_right() -> None:
    colour = Image.new("CMYK", (1600, 1200), (0, 255, 255, 0))
    r, g, b = load_image(jpeg_bytes(colour, quality=95), reduce_for=("squash", 64)).getpixel((50, 50))
    assert r > 240 and g < 15 and b < 15
    grey = load_image(jpeg_bytes(_synthetic(1600, 1200).convert("L")), reduce_for=("squash", 64))
    assert grey.mode == "RGB" and grey.size == (200, 150)
    arr = np.asarray(grey)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


@needs_camera
def test_truncated_camera_trap_file_raises_with_reduced_decode() -> None:
    with pytest.raises(ImageError) as info:
        load_image(CAMERA / "african_elephants_truncated_file.jpg", reduce_for=("squash", 224))
    assert info.value.reason == "truncated"


@needs_camera
@pytest.mark.parametrize(
    ("name", "decoded"),
    [
        ("african_elephants.jpg", (512, 384)),
        ("african_elephants_cmyk.jpg", (512, 384)),
        ("african_elephants_bw.jpg", (512, 384)),
        ("african_elephants_with_exif_orientation.jpg", (512, 384)),  # stored 1536×2048, orientation 6
        ("blank2.jpg", (408, 306)),  # 3264×2448 at 1/8
        ("human.jpg", (768, 432)),  # 3072×1728: 1/8 would leave 216 rows
    ],
)
def test_camera_trap_photos_reduced_decode_matches_full(name: str, decoded: tuple[int, int]) -> None:
    data = (CAMERA / name).read_bytes()
    full = load_image(data)
    reduced = load_image(data, reduce_for=("squash", 224))
    assert reduced.mode == "RGB" and reduced.size == decoded
    for mode in ("squash", "shorter_side"):
        assert _psnr(resize(reduced, mode, 224), resize(full, mode, 224)) > MIN_PSNR_DB
    # The builder hashes the loaded image: measured distances on these photos are 0-2 bits,
    # far under the dedup threshold's margin to distinct photos (DEFAULT_MAX_DISTANCE 6, distinct >= 10).
    assert hamming(perceptual_hash(reduced), perceptual_hash(full)) <= 2


@needs_camera
def test_camera_trap_variants_keep_their_colours_when_reduced() -> None:
    original = load_image(CAMERA / "african_elephants.jpg", reduce_for=("squash", 224))
    mean = np.asarray(original, dtype=np.float64).mean(axis=(0, 1))
    cmyk = load_image(CAMERA / "african_elephants_cmyk.jpg", reduce_for=("squash", 224))
    assert np.abs(np.asarray(cmyk, dtype=np.float64).mean(axis=(0, 1)) - mean).max() < 3
    rotated = load_image(CAMERA / "african_elephants_with_exif_orientation.jpg", reduce_for=("squash", 224))
    assert _corr(_thumb(rotated), _thumb(original)) > 0.98
    assert _corr(_thumb(rotated), _thumb(original.transpose(Image.Transpose.ROTATE_180))) < 0.9


def test_bad_reduce_for_is_a_value_error_for_any_file() -> None:
    for data in (_png_bytes(Image.new("RGB", (8, 8))), jpeg_bytes(Image.new("RGB", (64, 64)))):
        with pytest.raises(ValueError, match="resize mode"):
            load_image(data, reduce_for=("crop", 224))
        with pytest.raises(ValueError, match="size must be positive"):
            load_image(data, reduce_for=("squash", 0))


def test_resized_output_of_a_reduced_decode_is_a_plain_image() -> None:
    reduced = load_image(jpeg_bytes(_synthetic(1600, 1200)), reduce_for=("squash", 224))
    out = resize(reduced, "squash", 224)
    # Resizing the output again must treat it as the 224×224 image it is (no stale source box).
    assert resize(out, "shorter_side", 100).size == (100, 100)
    assert np.array_equal(np.asarray(resize(out, "squash", 224)), np.asarray(out))


def test_the_decode_scale_can_be_held_to_divisors_of_a_number() -> None:
    # The builder holds it to divisors of its pHash's box factor, so the hash sees the same grid.
    assert reduced_decode_scale(2048, 1536, "squash", 224) == 4
    assert reduced_decode_scale(2048, 1536, "squash", 224, divides=24) == 4
    assert reduced_decode_scale(2048, 1536, "squash", 224, divides=18) == 2
    assert reduced_decode_scale(2048, 1536, "squash", 224, divides=9) == 1
    assert reduced_decode_scale(2048, 1536, "squash", 224, divides=0) == 1


# --- storing a conforming JPEG as it is (build.reencode=auto) ------------------------------------------


def _fits(data: bytes, mode: str = "squash", size: int = 64, quality: int = 95) -> bool:
    image = load_image(data, reduce_for=(mode, size))
    return original_fits(data, image, resize(image, mode, size), quality)


def test_a_jpeg_already_at_the_stored_size_and_coarser_than_quality_is_kept() -> None:
    photo = _synthetic(64, 64, seed=3)
    assert _fits(jpeg_bytes(photo, quality=75))
    assert _fits(jpeg_bytes(photo, quality=95))  # libjpeg's own q95 tables: equal is coarse enough
    assert not _fits(jpeg_bytes(photo, quality=75), quality=70)  # finer than asked: re-encode shrinks it
    assert not _fits(jpeg_bytes(photo, quality=100))
    # shorter_side keeps a small image as it is, so its file can be kept too; squash resizes it.
    small = jpeg_bytes(_synthetic(48, 40, seed=4), quality=80)
    assert _fits(small, mode="shorter_side", size=64)
    assert not _fits(small, mode="squash", size=64)
    assert _fits(small, mode="none")


def test_a_jpeg_whose_pixels_or_bytes_are_not_the_stored_ones_is_re_encoded() -> None:
    photo = _synthetic(64, 64, seed=5)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=75, subsampling=0)  # 4:4:4: more chroma than our 4:2:0
    assert not _fits(buf.getvalue())
    assert not _fits(jpeg_bytes(photo, orientation=6, quality=75))  # rotated on load: not the file's pixels
    assert not _fits(jpeg_bytes(photo, quality=75) + b"trailing bytes")  # nothing may follow the end marker
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=75, comment=b"x" * (MAX_KEPT_METADATA + 1))
    assert not _fits(buf.getvalue())
    buf = io.BytesIO()
    photo.convert("L").save(buf, format="JPEG", quality=75)  # stored as RGB: its bytes are not
    assert not _fits(buf.getvalue())
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    assert not _fits(buf.getvalue())
    big = jpeg_bytes(_synthetic(512, 512, seed=6), quality=75)  # decoded at reduced scale, then resized
    assert not _fits(big)


def test_a_kept_jpeg_has_exactly_the_pixels_the_builder_hashed_and_a_re_encode_would_not() -> None:
    data = jpeg_bytes(_synthetic(64, 64, seed=7), quality=80)
    image = load_image(data)  # what the builder hashes
    with Image.open(io.BytesIO(data)) as kept:  # what a reader of the kept file decodes
        assert np.array_equal(np.asarray(image), np.asarray(kept.convert("RGB")))
    with Image.open(io.BytesIO(encode(image, 95))) as again:
        assert _psnr(again.convert("RGB"), image) < 60  # a second generation of JPEG loss
