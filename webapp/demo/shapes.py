"""Synthetic "shape drawn on paper, held up to a webcam" images.

The demo model never sees a real photo, so everything a webcam does to a
drawing is simulated here instead: random ink and paper colours, filled or
thick-outlined shapes at any position, size and rotation, a little
perspective (paper is rarely held square to the lens), uneven lighting, paper
grain, defocus blur, sensor noise and JPEG artefacts. The aim is that the
nuisance factors vary so much that the only stable cue left is the outline.

Only numpy and Pillow are used so that the server and the tests can import
this module without TensorFlow.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..frames.images import centre_crop_box  # the server's own crop rule

LABELS = ("circle", "square", "triangle", "star")

# Shapes are drawn SUPERSAMPLE times larger and box-filtered down: Pillow's
# ImageDraw does not antialias, and jagged edges are a synthetic-only cue.
SUPERSAMPLE = 3

# Minimum luminance difference (0-255) between ink and paper. Lighting
# falloff can shave up to ~35% off it, which still leaves a clear edge.
MIN_CONTRAST = 70.0

_LUMA = np.array([0.299, 0.587, 0.114])


def _luma(rgb) -> float:
    return float(np.dot(np.asarray(rgb, dtype=float), _LUMA))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any colour, from pastel to dark, via HSV so saturation is controlled."""
    h = rng.random()
    s = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.2, 1.0)], p=[0.3, 0.7])
    v = rng.uniform(0.05, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array([r, g, b]) * 255.0


def _paper_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly white-ish paper (as in real use), sometimes any colour at all."""
    if rng.random() < 0.6:
        base = rng.uniform(170, 255)
        tint = rng.normal(0, 8, size=3)  # white balance / paper tint
        return np.clip(base + tint, 0, 255)
    return _random_colour(rng)


def _contrasting_colour(rng: np.random.Generator, against: list[np.ndarray]) -> np.ndarray:
    """A random colour whose luminance differs enough from every reference."""
    lumas = [_luma(c) for c in against]
    for _ in range(50):
        c = _random_colour(rng)
        if all(abs(_luma(c) - l) >= MIN_CONTRAST for l in lumas):
            return c
    # Fall back to the extreme that is furthest from the references.
    dark = rng.uniform(0, 40, size=3)
    light = rng.uniform(215, 255, size=3)
    return dark if np.mean(lumas) > 127 else light


# ---------------------------------------------------------------- background


def _low_frequency(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1]: blotches, uneven paper, soft shadows."""
    gw = max(2, int(round(cells * w / max(w, h))))
    gh = max(2, int(round(cells * h / max(w, h))))
    small = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    field = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(field), -1, 1)


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background float image [h, w, 3] and the colours ink must contrast with."""
    kind = rng.choice(["plain", "gradient", "textured"], p=[0.3, 0.3, 0.4])
    base = _paper_colour(rng)
    if kind == "plain":
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy(), [base]
    if kind == "gradient":
        # Second colour close to the first in luminance more often than not,
        # so ink that contrasts with both ends exists; direction is random.
        other = np.clip(base + rng.normal(0, 45, size=3), 0, 255)
        theta = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = (xs - w / 2) * math.cos(theta) + (ys - h / 2) * math.sin(theta)
        t = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
        img = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
        return img.astype(np.float32), [base, other]
    # Textured paper: blotches at two scales plus fine grain.
    amp = rng.uniform(6, 22)
    blot = _low_frequency(rng, w, h, int(rng.integers(3, 9))) * amp
    blot += _low_frequency(rng, w, h, int(rng.integers(12, 30))) * amp * 0.4
    grain = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(2, 9))
    if rng.random() < 0.5:  # fibrous grain: noise smeared along one axis
        axis = int(rng.integers(0, 2))
        grain = sum(np.roll(grain, k, axis=axis) for k in range(4)) * 0.6
    img = base[None, None, :] + (blot + grain)[..., None]
    img += rng.normal(0, 3, size=3)[None, None, :] * (blot[..., None] / max(amp, 1))
    return img.astype(np.float32), [np.clip(base - amp, 0, 255), np.clip(base + amp, 0, 255)]


def _illumination(rng: np.random.Generator, w: int, h: int, strength: float) -> np.ndarray:
    """Multiplicative lighting: off-centre vignette (lamp/lens falloff) and a
    directional ramp (window light). Applies to paper and ink alike, so it
    cannot be used to find the shape."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    d2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / float(w * w + h * h)
    falloff = 1.0 - rng.uniform(0, strength) * np.clip(d2 * 2.5, 0, 1)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xs / w - 0.5) * math.cos(theta) + (ys / h - 0.5) * math.sin(theta)
    ramp = 1.0 + rng.uniform(0, strength * 0.6) * ramp
    return (falloff * ramp).astype(np.float32)


# -------------------------------------------------------------------- shapes


def _bowed(rng: np.random.Generator, corners: np.ndarray, amount: float) -> np.ndarray:
    """Hand-drawn edges: each straight edge becomes a slightly bowed,
    slightly wavy line between its (sharp) corners."""
    t = np.linspace(0, 1, 8, endpoint=False)[:, None]
    out = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        d = b - a
        normal = np.array([-d[1], d[0]]) / max(1e-9, float(np.hypot(*d)))
        bend = rng.normal(0, amount) * np.sin(math.pi * t) + rng.normal(0, amount / 3) * np.sin(2 * math.pi * t)
        out.append(a + t * d + bend * normal)
    return np.concatenate(out)


def _outline(rng: np.random.Generator, label: str) -> np.ndarray:
    """Closed polygon [k, 2] around the origin with circumradius ~1, drawn
    the way a person would: corners and edges a little off."""
    if label == "circle":
        # A fine polygon, drawn the same way as the others so that edge
        # rendering can't betray the class; low harmonics make it hand-drawn.
        a = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        r = 1.0 + sum(rng.normal(0, 0.015) * np.cos(k * a + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4))
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if label == "square":
        a = np.array([45, 135, 225, 315]) * math.pi / 180
        pts = np.stack([np.cos(a), np.sin(a)], axis=1)
        return _bowed(rng, pts + rng.normal(0, 0.03, size=pts.shape), 0.025)
    if label == "triangle":
        a = (np.array([90, 210, 330]) + rng.normal(0, 6, size=3)) * math.pi / 180
        pts = np.stack([np.cos(a), np.sin(a)], axis=1)
        return _bowed(rng, pts + rng.normal(0, 0.04, size=pts.shape), 0.025)
    if label == "star":
        inner = rng.uniform(0.36, 0.52)
        a = np.arange(10) * math.pi / 5 + math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        r = r * (1 + rng.normal(0, 0.03, size=10))
        return _bowed(rng, np.stack([r * np.cos(a), r * np.sin(a)], axis=1), 0.012)
    raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")


def _pose(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray:
    """Rotate, then a mild affine/perspective warp: paper tilted to the lens.
    Kept mild so a square stays recognisably a square, not any quadrilateral."""
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    pts = pts @ np.array([[c, s], [-s, c]])
    aspect = rng.uniform(0.82, 1.0)
    shear = rng.uniform(-0.12, 0.12)
    pts = pts @ np.array([[1.0, 0.0], [shear, aspect]])
    px, py = rng.uniform(-0.12, 0.12, size=2)
    return pts / (1.0 + px * pts[:, :1] + py * pts[:, 1:])


def _mask(w: int, h: int, pts: np.ndarray, stroke: float | None) -> np.ndarray:
    """Antialiased coverage [h, w] in 0..1 of a filled polygon, or of its
    outline with the given stroke width (centred on the path, round joins,
    like a marker pen)."""
    k = SUPERSAMPLE
    big = Image.new("L", (w * k, h * k), 0)
    draw = ImageDraw.Draw(big)
    scaled = [(float(x) * k, float(y) * k) for x, y in pts]
    if stroke is None:
        draw.polygon(scaled, fill=255)
    else:
        width = max(1, int(round(stroke * k)))
        draw.line(scaled + scaled[:2], fill=255, width=width, joint="curve")
        # Round caps on every vertex: joint="curve" misses the closing one.
        rad = width / 2
        for x, y in scaled:
            draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=255)
    small = big.resize((w, h), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# ------------------------------------------------------------------- render


def render(rng: np.random.Generator, label: str, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """One RGB image of width, height = ``size`` showing one shape of ``label``."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
    w, h = int(size[0]), int(size[1])
    short = min(w, h)
    scale = short / 128.0  # blur/noise/stroke parameters are tuned at 128 px

    img, refs = _background(rng, w, h)

    # Geometry: the shape's bounding box spans 25-85% of the short side and
    # sits (almost) entirely inside the frame. In a non-square frame it stays
    # inside the centred square: the server centre-crops to the model's square
    # input (and people centre what they show a webcam), so a shape out at the
    # side would be cut off and the frame's label would be a lie.
    pts = _pose(rng, _outline(rng, label))
    extent = rng.uniform(0.25, 0.85) * short
    span = (pts.max(axis=0) - pts.min(axis=0)).max()
    pts = (pts - (pts.max(axis=0) + pts.min(axis=0)) / 2) * (extent / span)
    half = (pts.max(axis=0) - pts.min(axis=0)) / 2
    overflow = extent * (rng.uniform(0, 0.06) if rng.random() < 0.25 else 0.0)
    offset = np.array([w - short, h - short]) / 2
    lo = offset + half - overflow
    hi = offset + short - half + overflow
    centre = rng.uniform(lo, np.maximum(lo, hi))
    pts = pts + centre

    # Style: filled, outline only (thick marker stroke), or filled with an
    # outline in another colour. Whatever is the only boundary must contrast
    # with the paper.
    style = rng.choice(["filled", "outline", "both"], p=[0.4, 0.35, 0.25])
    stroke = max(2.5 * scale, rng.uniform(0.05, 0.13) * extent)
    if style == "filled":
        ink = _contrasting_colour(rng, refs)
        layers = [(_mask(w, h, pts, None), ink)]
    elif style == "outline":
        ink = _contrasting_colour(rng, refs)
        layers = [(_mask(w, h, pts, stroke), ink)]
    else:
        fill = _random_colour(rng)
        ink = _contrasting_colour(rng, refs + [fill])
        layers = [(_mask(w, h, pts, None), fill), (_mask(w, h, pts, stroke), ink)]
    for mask, colour in layers:
        # Ink isn't perfectly even either: slight density variation.
        colour = colour.astype(np.float32)[None, None, :]
        colour = colour + np.float32(rng.normal(0, 4)) * _low_frequency(rng, w, h, 4)[..., None]
        img = img * (1 - mask[..., None]) + colour * mask[..., None]

    # Lighting: any scene may be unevenly lit (not just textured paper); the
    # MIN_CONTRAST margin keeps the shape visible in the darkest corner.
    if rng.random() < 0.6:
        img = img * _illumination(rng, w, h, 0.35)[..., None]

    # Camera: defocus/motion-ish blur, then sensor noise, then JPEG, in the
    # order a webcam pipeline applies them.
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.7:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.6) * scale))
    arr = np.asarray(out, dtype=np.float32)
    sigma = np.float32(rng.uniform(0, 10))
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * sigma  # luminance noise...
    noise = noise + rng.standard_normal((h, w, 3), dtype=np.float32) * (sigma * 0.4)  # ...plus chroma
    out = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
    buf.seek(0)
    final = Image.open(buf)
    final.load()
    return final.convert("RGB")


# ------------------------------------------------------------------ dataset


def _labels_for(n: int, seed: int) -> np.ndarray:
    """Balanced labels (counts differ by at most one), shuffled by seed."""
    labels = np.arange(n, dtype=np.int64) % len(LABELS)
    np.random.default_rng(np.random.SeedSequence([seed, 0xC1A55])).shuffle(labels)
    return labels


def _render_chunk(args) -> np.ndarray:
    seed, start, labels, size, render_size = args
    out = np.empty((len(labels), size[1], size[0], 3), dtype=np.uint8)
    box = centre_crop_box(render_size[0], render_size[1], size[0], size[1])
    for j, label in enumerate(labels):
        # Per-image seed from (seed, index): identical output whatever the
        # number of workers or the chunking.
        rng = np.random.default_rng(np.random.SeedSequence([seed, start + j]))
        img = render(rng, LABELS[int(label)], render_size)
        out[j] = np.asarray(img.resize(size, Image.BILINEAR, box=box), dtype=np.uint8)
    return out


def make_dataset(
    n: int,
    seed: int,
    size: tuple[int, int] = (64, 64),
    render_size: tuple[int, int] = (128, 128),
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, H, W, 3] and int64 labels [n], deterministic in
    ``seed``. Images are rendered at ``render_size`` and downscaled exactly as
    the server does (centre-crop to aspect, Pillow BILINEAR), so the model
    trains on the same resampling artefacts it will see in production."""
    size = (int(size[0]), int(size[1]))
    render_size = (int(render_size[0]), int(render_size[1]))
    labels = _labels_for(n, seed)
    workers = min(2, os.cpu_count() or 1)
    chunk = 500
    jobs = [(seed, s, labels[s : s + chunk], size, render_size) for s in range(0, n, chunk)]
    if workers <= 1 or n < 2000:  # small sets: process start-up isn't worth it
        parts = [_render_chunk(j) for j in jobs]
    else:
        # fork is fastest and needs no `if __name__ == "__main__"` guard in
        # the caller, but forking after TensorFlow has started its thread
        # pools can deadlock; then fall back to spawn.
        methods = multiprocessing.get_all_start_methods()
        method = "fork" if "fork" in methods and "tensorflow" not in sys.modules else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs, chunksize=1)
    images = np.concatenate(parts) if parts else np.empty((0, size[1], size[0], 3), np.uint8)
    return images, labels
