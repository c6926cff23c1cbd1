"""Drawing one organism: an image of a species' traits under random pose, lighting and background.

Per image, position, scale, rotation, lighting, pattern phase, background and noise vary, so
memorising pixels does not work but the traits stay visible at 64 px and at 32 px. Everything is
computed in closed form per pixel (distances in a rotated, scaled body frame) with ~1 px soft edges:
anti-aliased, vectorised, channel-first for speed, no drawing library needed.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from tolclip.data.synthetic.tree import SyntheticConfig, Traits

# Every constant is cast so the arithmetic stays in float32 (fast, and fixes the exact pixel values).
_f32 = np.float32

_MARKER_RGB: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "red": (235, 25, 25),
    "yellow": (255, 225, 30),
    "blue": (30, 90, 255),
}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v), dtype=np.float32) * 255.0


def _shape_radius(shape: str, theta: np.ndarray) -> np.ndarray:
    """Boundary radius (in body radii) of a shape family at body-frame angles `theta`."""
    if shape == "round":
        return np.full_like(theta, 1.0)
    if shape == "angular":  # a diamond: corners front/back/top/bottom
        quarter = np.float32(np.pi / 2)
        a = theta - np.floor(theta / quarter) * quarter - quarter / 2  # np.mod is slow on floats
        return np.float32(0.86) / np.cos(a)
    if shape == "elongated":
        a, b = 1.4, 0.6
        return a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    if shape == "lobed":
        return 0.85 + 0.22 * np.cos(5 * theta)
    if shape == "star":
        return 0.6 + 0.55 * np.abs(np.cos(2 * theta)) ** 3
    if shape == "egg":
        return 0.95 + 0.25 * np.cos(theta)
    if shape == "kidney":
        return 1.0 - 0.4 * np.maximum(-np.cos(theta), 0.0) ** 4
    raise ValueError(f"unknown shape {shape!r}")


_MARKER_ANGLE = {"front": 0.0, "back": math.pi, "top": -math.pi / 2}
_GRIDS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre x and y coordinates (H, W) and a fixed bank of Gaussian noise (3, 2H, 2W)."""
    if size not in _GRIDS:
        c = np.arange(size, dtype=np.float32) + 0.5
        xs = np.ascontiguousarray(np.broadcast_to(c[None, :], (size, size)))
        ys = np.ascontiguousarray(np.broadcast_to(c[:, None], (size, size)))
        # Drawing fresh normals costs more than the rest of an image; a random crop of a fixed bank
        # is as good for "mild sensor noise" and just as deterministic.
        bank = np.random.default_rng(20240917).standard_normal((3, 2 * size, 2 * size), dtype=np.float32)
        _GRIDS[size] = (xs, ys, bank)
    return _GRIDS[size]


def _lerp(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: img = img + alpha * (colour - img), img (3, H, W), colour (3,) or (3, H, W)."""
    for ch in range(3):
        img[ch] += alpha * (colour[ch] - img[ch])


def _soft(x: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a region whose signed distance (in pixels) is x: a 1 px ramp."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _span(z: np.ndarray, i: int, lo: float, hi: float) -> float:
    """Nuisance number i of an image, scaled from [0, 1) to [lo, hi)."""
    return lo + (hi - lo) * float(z[i])


@dataclass(frozen=True)
class _Body:
    """Pixel coordinates in the body frame, in body radii: u along the body axis, v across it."""

    u: np.ndarray
    v: np.ndarray
    r: np.ndarray
    theta: np.ndarray
    inside: np.ndarray  # > 0 inside; ~distance to the edge
    inv_px: np.float32  # body radii -> pixels, for the 1 px soft edges


def _body_frame(traits: Traits, z: np.ndarray, xs: np.ndarray, ys: np.ndarray, cfg: SyntheticConfig) -> _Body:
    """The body's pose (scale, rotation, shift drawn from z) as per-pixel body-frame coordinates."""
    size = cfg.image_size
    radius = 0.26 * size * _span(z, 0, 1.0 - cfg.scale_jitter, 1.0 + cfg.scale_jitter)
    rot = math.radians(_span(z, 1, -cfg.max_rotation, cfg.max_rotation))
    cx = size / 2 + _span(z, 2, -1.0, 1.0) * cfg.max_shift * size
    cy = size / 2 + _span(z, 3, -1.0, 1.0) * cfg.max_shift * size
    dx, dy = xs - _f32(cx), ys - _f32(cy)
    cr, sr = _f32(math.cos(rot) / radius), _f32(math.sin(rot) / radius)
    u = dx * cr + dy * sr
    v = (dy * cr - dx * sr) / _f32(traits.aspect)
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    return _Body(u, v, r, theta, inside=_shape_radius(traits.shape, theta) - r, inv_px=_f32(radius))


def _background(z: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Low-saturation colour, linear gradient and one soft ripple, so the background carries no trait."""
    bg_col = _hsv(_span(z, 6, 0, 360), _span(z, 7, 0.0, 0.25), _span(z, 8, 0.3, 0.92))
    gx, gy = _span(z, 9, -25, 25) / size, _span(z, 10, -25, 25) / size
    ripple = _f32(_span(z, 13, 0, 10)) * np.sin(
        xs * _f32(_span(z, 11, -0.3, 0.3))
        + ys * _f32(_span(z, 12, -0.3, 0.3))
        + _f32(_span(z, 14, 0, 2 * math.pi))
    )
    shade = ripple + (xs - _f32(size / 2)) * _f32(gx) + (ys - _f32(size / 2)) * _f32(gy)
    img = np.empty((3, size, size), dtype=_f32)
    for ch in range(3):
        img[ch] = shade + bg_col[ch]
    return img


def _body_colours(traits: Traits, hue: float, light: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Primary and secondary (pattern) RGB of the body under this lighting."""
    primary = _hsv(hue, traits.saturation, traits.value) * light
    if traits.secondary == "dark":
        secondary = primary * _f32(0.3)
    elif traits.secondary == "light":
        secondary = primary + (_f32(250.0) - primary) * _f32(0.75)
    else:
        secondary = np.full(3, 105.0, dtype=_f32) * light
    return primary, secondary


def _draw_appendages(img: np.ndarray, traits: Traits, body: _Body, primary: np.ndarray) -> None:
    """k rays leaving the outline, rotated off the front (marker side)."""
    r, theta, inv_px = body.r, body.theta, body.inv_px
    k = traits.appendages
    step = 2 * math.pi / k
    th0 = math.pi / k
    j = np.floor((theta - _f32(th0)) * _f32(1 / step) + _f32(0.5))
    d_ang = theta - _f32(th0) - j * _f32(step)
    ray_rb = _shape_radius(traits.shape, np.asarray(th0 + np.arange(k) * step, dtype=_f32))
    rb_j = ray_rb[j.astype(np.int64) % k]
    along = r * np.cos(d_ang)
    perp = r * np.abs(np.sin(d_ang))
    a_app = _soft((_f32(0.085) - perp) * inv_px) * _soft((rb_j + _f32(0.5) - along) * inv_px)
    a_app *= along > rb_j * _f32(0.5)
    _lerp(img, primary * _f32(0.45), a_app)


def _pattern_mask(traits: Traits, body: _Body, z: np.ndarray) -> np.ndarray:
    """Where the secondary colour goes, in [0, 1]; in the body frame, so rotation carries it."""
    u, v, r, inside, inv_px = body.u, body.v, body.r, body.inside, body.inv_px
    period = _f32(traits.period)
    ca, sa = _f32(math.cos(math.radians(traits.angle))), _f32(math.sin(math.radians(traits.angle)))
    p = u * ca + v * sa + _f32(_span(z, 15, 0, traits.period))
    q = v * ca - u * sa + _f32(_span(z, 16, 0, traits.period))
    tau = _f32(2 * math.pi) / period
    gain = inv_px / tau  # sine edges ~1 px wide
    if traits.pattern == "stripes":
        return np.clip(0.5 + np.sin(p * tau) * gain, 0, 1)
    if traits.pattern == "rings":
        return np.clip(0.5 + np.sin((r + _f32(_span(z, 17, 0, traits.period))) * tau) * gain, 0, 1)
    if traits.pattern == "checks":
        return np.clip(0.5 + np.sin(p * tau) * np.sin(q * tau) * (2 * gain), 0, 1)
    if traits.pattern == "spots":
        fp = p / period
        fq = q / period
        fp -= np.floor(fp + 0.5)
        fq -= np.floor(fq + 0.5)
        return _soft((_f32(0.3) - np.sqrt(fp * fp + fq * fq)) * (period * inv_px))
    if traits.pattern == "edged":  # solid body with a band of secondary colour along the edge
        return _soft((_f32(0.35) * period - inside) * inv_px)
    raise ValueError(f"unknown pattern {traits.pattern!r}")


def _draw_body(
    img: np.ndarray, traits: Traits, body: _Body, z: np.ndarray, primary: np.ndarray, secondary: np.ndarray
) -> None:
    """The patterned body and its outline."""
    m = _pattern_mask(traits, body, z)
    a_body = _soft(body.inside * body.inv_px)
    colour = primary[:, None, None] + m[None] * (secondary - primary)[:, None, None]
    _lerp(img, colour, a_body)
    if traits.outline != "none":
        outline = np.full(3, 25.0 if traits.outline == "dark" else 245.0, dtype=_f32)
        _lerp(img, outline, a_body * _soft((_f32(0.13) - body.inside) * body.inv_px))


def _draw_marker(img: np.ndarray, traits: Traits, body: _Body, light: np.float32) -> None:
    """The marker ("eye"): position from the genus, colour and size from the species."""
    ang = _MARKER_ANGLE[traits.marker_pos]
    mrb = float(_shape_radius(traits.shape, np.asarray([ang], dtype=_f32))[0])
    mu, mv = _f32(0.5 * mrb * math.cos(ang)), _f32(0.5 * mrb * math.sin(ang))
    du, dv = body.u - mu, (body.v - mv) * _f32(traits.aspect)  # round in the image whatever the aspect
    d = np.sqrt(du * du + dv * dv)
    msize = _f32(traits.marker_size)
    # A contrasting rim keeps the marker visible on any body colour.
    rim = np.full(3, 245.0 if traits.marker_colour == "black" else 15.0, dtype=_f32)
    _lerp(img, rim, _soft((msize + _f32(0.09) - d) * body.inv_px))
    marker = np.array(_MARKER_RGB[traits.marker_colour], dtype=_f32) * light
    _lerp(img, marker, _soft((msize - d) * body.inv_px))


def render(traits: Traits, rng: np.random.Generator, config: SyntheticConfig | None = None) -> np.ndarray:
    """One image (H, W, 3 uint8) of an organism with these traits; nuisance drawn from `rng`."""
    cfg = config or SyntheticConfig()
    size = cfg.image_size
    xs, ys, bank = _grid(size)
    # All nuisance numbers in one draw: scalar draws cost ~5 us each, a whole image ~0.5 ms.
    z = rng.random(24)
    light = _f32(_span(z, 4, 0.88, 1.1))
    primary, secondary = _body_colours(traits, traits.hue + _span(z, 5, -3.0, 3.0), light)
    body = _body_frame(traits, z, xs, ys, cfg)
    # Back to front: background, appendages under the body, the body, the marker, sensor noise.
    img = _background(z, xs, ys, size)
    if traits.appendages:
        _draw_appendages(img, traits, body, primary)
    _draw_body(img, traits, body, z, primary, secondary)
    _draw_marker(img, traits, body, light)
    if cfg.noise_std > 0:
        ox, oy = int(z[18] * size), int(z[19] * size)
        img += bank[:, oy : oy + size, ox : ox + size] * _f32(cfg.noise_std)
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.transpose(1, 2, 0)).astype(np.uint8)
