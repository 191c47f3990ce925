"""Deterministic synthetic steel surfaces in the Severstal layout (the built-in default data).

Each image is grey rolled steel (horizontal grain, banding, a slow gradient, noise and faint blotches that are
*not* defects). Defective images carry one or two of four defect classes that look different:
1 clusters of small dark pits, 2 thin dark cracks, 3 long horizontal scratches or streaks (light or dark),
4 large dark patches. Masks are exact (the pixels the defect changed) and written as RLE.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from steeldefect.atomic import atomic_dir
from steeldefect.params import SynthesizeParams
from steeldefect.severstal import rle_encode

HEIGHT, WIDTH, JPEG_QUALITY = 256, 1600, 90


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(95, 150)
    rows = np.convolve(rng.normal(0, 6, h + 8), np.ones(9) / 9, mode="valid")[:h]  # horizontal grain
    grain = rows[:, None] + rng.normal(0, 2.5, (h, 1)) * np.sin(np.linspace(0, rng.uniform(2, 9), w))[None, :]
    gradient = np.linspace(0, rng.uniform(-15, 15), w)[None, :]
    img = base + grain + gradient + rng.normal(0, 5, (h, w))
    for _ in range(rng.integers(2, 6)):  # faint blotches: distractors, not defects
        _add(img, _ellipse(rng, h, w, rng.uniform(20, 80), rng.uniform(10, 40)), rng.uniform(-8, 8), soft=True)
    return img


def _ellipse(
    rng: np.random.Generator, h: int, w: int, rx: float, ry: float, cy: float | None = None, cx: float | None = None
) -> np.ndarray:
    """A filled, randomly rotated ellipse (computed in its bounding box only)."""
    cy = rng.uniform(0, h) if cy is None else cy
    cx = rng.uniform(0, w) if cx is None else cx
    t = rng.uniform(0, np.pi)
    r = max(rx, ry)
    y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, h))
    x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
    mask = np.zeros((h, w), bool)
    if y0 >= y1 or x0 >= x1:
        return mask
    dy, dx = np.mgrid[y0:y1, x0:x1]
    dy, dx = dy - cy, dx - cx
    u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
    mask[y0:y1, x0:x1] = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return mask


def _add(img: np.ndarray, mask: np.ndarray, delta: float, soft: bool = False) -> None:
    if soft:
        k = np.ones(7) / 7
        m = np.apply_along_axis(np.convolve, 0, mask.astype(float), k, mode="same")
        m = np.apply_along_axis(np.convolve, 1, m, k, mode="same")
        img += delta * m
    else:
        img[mask] += delta


def _pits(rng, h, w):  # class 1: a cluster of small dark pits
    cy, cx = rng.uniform(30, h - 30), rng.uniform(40, w - 40)
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(6, 18)):
        r = rng.uniform(2, 5)
        mask |= _ellipse(rng, h, w, r, r * rng.uniform(0.6, 1), cy + rng.normal(0, 18), cx + rng.normal(0, 30))
    return mask, -rng.uniform(25, 50)


def _crack(rng, h, w):  # class 2: a thin jagged dark crack, roughly across the strip
    n = int(rng.integers(60, 180))
    y0, x0 = rng.uniform(0, h - n / 2), rng.uniform(20, w - 20)
    angle = rng.uniform(-0.6, 0.6)
    ys = y0 + np.arange(n) * np.cos(angle)
    xs = x0 + np.cumsum(np.sin(angle) + rng.normal(0, 0.7, n))
    mask = np.zeros((h, w), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = np.clip(ys.astype(int) + dy, 0, h - 1), np.clip(xs.astype(int) + dx, 0, w - 1)
            mask[yi, xi] = True
    return mask, -rng.uniform(35, 65)


def _scratch(rng, h, w):  # class 3: a long, nearly horizontal scratch or streak, light or dark
    length, thick = rng.uniform(150, 900), rng.uniform(2, 5)
    y0, x0 = rng.uniform(10, h - 10), rng.uniform(0, w - length)
    yy, xx = np.mgrid[0:h, 0:w]
    centre = y0 + (xx - x0) * rng.uniform(-0.04, 0.04) + 3 * np.sin((xx - x0) / rng.uniform(40, 120))
    mask = (np.abs(yy - centre) <= thick / 2) & (xx >= x0) & (xx <= x0 + length)
    return mask, rng.choice([-1, 1]) * rng.uniform(30, 50)


def _patch(rng, h, w):  # class 4: a large dark patch with a ragged outline
    rx, ry = rng.uniform(40, 130), rng.uniform(25, 70)
    cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
    mask = _ellipse(rng, h, w, rx, ry, cy, cx)
    for _ in range(3):
        mask |= _ellipse(rng, h, w, rx / 2, ry / 2, cy + rng.normal(0, ry / 2), cx + rng.normal(0, rx / 2))
    return mask, -rng.uniform(22, 40)


DEFECTS = {1: _pits, 2: _crack, 3: _scratch, 4: _patch}


def make_image(cfg: SynthesizeParams, seed: int, index: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One grey image (uint8, HEIGHT x WIDTH) and its masks {class_id: bool mask}; a pure function of
    (cfg, seed, index)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, HEIGHT, WIDTH)
    masks: dict[int, np.ndarray] = {}
    if rng.random() < cfg.defect_fraction:
        p = np.asarray(cfg.class_weights, float) / sum(cfg.class_weights)
        n_classes = min(2 if rng.random() < cfg.two_class_fraction else 1, int((p > 0).sum()))
        for cls in sorted(rng.choice([1, 2, 3, 4], size=n_classes, replace=False, p=p).tolist()):
            mask, delta = DEFECTS[cls](rng, HEIGHT, WIDTH)
            _add(img, mask, delta)
            masks[cls] = mask
    return np.clip(img, 0, 255).astype(np.uint8), masks


def write_dataset(cfg: SynthesizeParams, seed: int, out_dir: Path) -> None:
    """Write train_images/*.jpg, train.csv (ImageId,ClassId,EncodedPixels) and defect_and_no_defect.csv."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "train_images").mkdir()
        masks_rows, label_rows = ["ImageId,ClassId,EncodedPixels"], ["ImageID,label"]
        for i in range(cfg.n_images):
            name = f"synth_{i:05d}.jpg"
            img, masks = make_image(cfg, seed, i)
            buf = io.BytesIO()
            Image.fromarray(img).convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
            (tmp / "train_images" / name).write_bytes(buf.getvalue())
            masks_rows += [f"{name},{cls},{rle_encode(m)}" for cls, m in masks.items()]
            label_rows.append(f"{name},{int(bool(masks))}")
        (tmp / "train.csv").write_text("\n".join(masks_rows) + "\n")
        (tmp / "defect_and_no_defect.csv").write_text("\n".join(label_rows) + "\n")
