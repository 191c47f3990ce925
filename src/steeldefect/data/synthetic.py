"""Deterministic synthetic steel surfaces in the Severstal layout (the built-in default data).

Each image is grey rolled steel: horizontal grain, banding, a slow gradient, noise and faint blotches.
Defective images carry one or two of four defect classes in Severstal's mix (`class_weights`):
1 clusters of small dark pits, 2 thin dark cracks, 3 long horizontal scratches or streaks (light or dark),
4 large dark patches. What makes real inspection hard is drawn too, in shares set by the params:
- `faint_fraction` of the defects have `faint_contrast` times the usual contrast (faint pits are also tiny
  and few);
- `edge_fraction` of the defects sit at an image border, partly cut off;
- `mark_fraction` of the images, clean or defective alike, carry harmless marks that are *not* defects:
  oil stains (large, soft-edged, slightly dark), water spots (small faint rings) and roll marks (the same
  small soft dent repeated along the strip at the roll's pitch), at `mark_contrast` times their base
  contrast (at 2, about as strong as a faint defect).
Masks are exact (the pixels a defect changed) and written as RLE; harmless marks have no mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from steeldefect.atomic import atomic_dir
from steeldefect.data.severstal import rle_encode
from steeldefect.params import SynthesizeParams

HEIGHT, WIDTH, JPEG_QUALITY = 256, 1600, 90


def _blur(a: np.ndarray, k: int) -> np.ndarray:
    """Box blur with an odd k x k window (zero padded), separable, by cumulative sums."""
    r = k // 2
    c = np.cumsum(np.pad(a, ((r + 1, r), (0, 0))), axis=0)
    a = (c[k:] - c[:-k]) / k
    c = np.cumsum(np.pad(a, ((0, 0), (r + 1, r))), axis=1)
    return (c[:, k:] - c[:, :-k]) / k


def _add(img: np.ndarray, mask: np.ndarray, delta: float, soft: int = 0) -> None:
    """Add delta inside mask; with soft = k > 0 the edge is blurred over k pixels (marks, not defects)."""
    if not soft:
        img[mask] += delta
        return
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    y0, y1 = max(ys.min() - soft, 0), min(ys.max() + soft + 1, img.shape[0])
    x0, x1 = max(xs.min() - soft, 0), min(xs.max() + soft + 1, img.shape[1])
    img[y0:y1, x0:x1] += delta * _blur(mask[y0:y1, x0:x1].astype(float), soft)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(95, 150)
    rows = np.convolve(rng.normal(0, 6, h + 8), np.ones(9) / 9, mode="valid")[:h]  # horizontal grain
    grain = rows[:, None] + rng.normal(0, 2.5, (h, 1)) * np.sin(np.linspace(0, rng.uniform(2, 9), w))[None, :]
    gradient = np.linspace(0, rng.uniform(-15, 15), w)[None, :]
    img = base + grain + gradient + rng.normal(0, 5, (h, w))
    for _ in range(rng.integers(2, 6)):  # faint blotches: distractors, not defects
        _add(img, _ellipse(rng, h, w, rng.uniform(20, 80), rng.uniform(10, 40)), rng.uniform(-8, 8), soft=7)
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


def _place(rng: np.random.Generator, h: int, w: int, my: float, mx: float, edge: bool) -> tuple[float, float]:
    """A centre at least (my, mx) inside the image, or, for an edge defect, within (my, mx) / 2 of one border
    (so the defect is partly cut off)."""
    if not edge:
        return rng.uniform(my, h - my), rng.uniform(mx, w - mx)
    side = int(rng.integers(4))
    cy = [rng.uniform(0, my / 2), rng.uniform(h - my / 2, h), rng.uniform(my, h - my), rng.uniform(my, h - my)]
    cx = [rng.uniform(mx, w - mx), rng.uniform(mx, w - mx), rng.uniform(0, mx / 2), rng.uniform(w - mx / 2, w)]
    return cy[side], cx[side]


def _pits(rng, h, w, edge, faint):  # class 1: a cluster of small dark pits; faint: a few tiny ones
    cy, cx = _place(rng, h, w, 30, 40, edge)
    n, size, spread = (rng.integers(1, 4), (1.2, 2.5), 0.3) if faint else (rng.integers(6, 18), (2, 5), 1)
    mask = np.zeros((h, w), bool)
    while not mask.any():  # a pit pushed past the border leaves nothing: draw again
        for _ in range(n):
            r, dy, dx = rng.uniform(*size), rng.normal(0, 18 * spread), rng.normal(0, 30 * spread)
            mask |= _ellipse(rng, h, w, r, r * rng.uniform(0.6, 1), cy + dy, cx + dx)
    return mask, -rng.uniform(25, 50)


def _crack(rng, h, w, edge, faint):  # class 2: a thin jagged dark crack, roughly across the strip
    n = int(rng.integers(60, 180))
    y0, x0 = (rng.uniform(0, h - n / 2), rng.uniform(20, w - 20)) if not edge else _place(rng, h, w, 0, 40, True)
    angle = rng.uniform(-0.6, 0.6)
    ys = y0 + np.arange(n) * np.cos(angle) * (1 if y0 < h / 2 else -1)  # from the start into the image
    xs = x0 + np.cumsum(abs(np.sin(angle)) + rng.normal(0, 0.7, n)) * (1 if x0 < w / 2 else -1)
    keep = (ys >= 0) & (ys < h - 1) & (xs >= 0) & (xs < w - 1)
    mask = np.zeros((h, w), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            mask[ys[keep].astype(int) + dy, xs[keep].astype(int) + dx] = True
    return mask, -rng.uniform(35, 65)


def _scratch(rng, h, w, edge, faint):  # class 3: a long, nearly horizontal scratch or streak, light or dark
    length, thick = rng.uniform(150, 900), rng.uniform(2, 5)
    y0 = rng.uniform(10, h - 10) if not edge else rng.choice([rng.uniform(2, 6), rng.uniform(h - 6, h - 2)])
    x0 = rng.uniform(0, w - length)
    yy, xx = np.mgrid[0:h, 0:w]
    wave = 3 * np.sin((xx - x0) / rng.uniform(40, 120))
    centre = y0 + (xx - x0) * rng.uniform(-0.04, 0.04) * (not edge) + wave
    mask = (np.abs(yy - centre) <= thick / 2) & (xx >= x0) & (xx <= x0 + length)
    return mask, rng.choice([-1, 1]) * rng.uniform(30, 50)


def _patch(rng, h, w, edge, faint):  # class 4: a large dark patch with a ragged outline
    rx, ry = rng.uniform(40, 130), rng.uniform(25, 70)
    cy, cx = _place(rng, h, w, ry, rx, edge)
    mask = _ellipse(rng, h, w, rx, ry, cy, cx)
    for _ in range(3):
        mask |= _ellipse(rng, h, w, rx / 2, ry / 2, cy + rng.normal(0, ry / 2), cx + rng.normal(0, rx / 2))
    return mask, -rng.uniform(22, 40)


DEFECTS = {1: _pits, 2: _crack, 3: _scratch, 4: _patch}


def _oil_stain(rng: np.random.Generator, img: np.ndarray, k: float) -> None:  # large, soft-edged, slightly dark
    h, w = img.shape
    _add(img, _ellipse(rng, h, w, rng.uniform(30, 120), rng.uniform(15, 60)), -k * rng.uniform(6, 16), soft=15)


def _water_spots(rng: np.random.Generator, img: np.ndarray, k: float) -> None:  # a few small faint rings
    h, w = img.shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    for _ in range(rng.integers(2, 7)):
        y, x, r = cy + rng.normal(0, 25), cx + rng.normal(0, 60), rng.uniform(4, 12)
        ring = _ellipse(rng, h, w, r, r, y, x) & ~_ellipse(rng, h, w, r - 1.5, r - 1.5, y, x)
        _add(img, ring, k * rng.choice([-1, 1]) * rng.uniform(8, 18), soft=3)


def _roll_marks(rng: np.random.Generator, img: np.ndarray, k: float) -> None:  # one small soft dent, once per roll turn
    h, w = img.shape
    pitch, y = rng.uniform(180, 420), rng.uniform(10, h - 10)
    rx, ry, delta = rng.uniform(3, 8), rng.uniform(6, 20), k * rng.choice([-1, 1]) * rng.uniform(6, 14)
    for x in np.arange(rng.uniform(0, pitch), w, pitch):
        _add(img, _ellipse(rng, h, w, rx, ry, y, x), delta, soft=5)


MARKS = (_oil_stain, _water_spots, _roll_marks)


def make_image(cfg: SynthesizeParams, seed: int, index: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One grey image (uint8, HEIGHT x WIDTH) and its masks {class_id: bool mask}; a pure function of
    (cfg, seed, index). Background, defects and harmless marks draw from separate random streams, so
    changing e.g. `mark_fraction` leaves the defects of every image as they were."""
    rng, marks_rng = np.random.default_rng([seed, index]), np.random.default_rng([seed, index, 1])
    img = _background(rng, HEIGHT, WIDTH)
    masks: dict[int, np.ndarray] = {}
    if rng.random() < cfg.defect_fraction:
        p = np.asarray(cfg.class_weights, float) / sum(cfg.class_weights)
        n_classes = min(2 if rng.random() < cfg.two_class_fraction else 1, int((p > 0).sum()))
        for cls in sorted(rng.choice([1, 2, 3, 4], size=n_classes, replace=False, p=p).tolist()):
            edge, faint = rng.random() < cfg.edge_fraction, rng.random() < cfg.faint_fraction
            mask, delta = DEFECTS[cls](rng, HEIGHT, WIDTH, edge, faint)
            _add(img, mask, delta * (cfg.faint_contrast if faint else 1.0))
            masks[cls] = mask
    if marks_rng.random() < cfg.mark_fraction:
        for i in sorted(marks_rng.choice(len(MARKS), size=marks_rng.integers(1, 3), replace=False)):
            MARKS[i](marks_rng, img, cfg.mark_contrast)
    return np.clip(img, 0, 255).astype(np.uint8), masks


def write_dataset(cfg: SynthesizeParams, seed: int, out_dir: Path) -> None:
    """Write train_images/*.jpg, train.csv (ImageId,ClassId,EncodedPixels) and defect_and_no_defect.csv,
    one image at a time: rows go straight to the open CSV files, so memory does not grow with n_images."""
    with (
        atomic_dir(out_dir) as tmp,
        open(tmp / "train.csv", "w") as masks_csv,
        open(tmp / "defect_and_no_defect.csv", "w") as labels_csv,
    ):
        (tmp / "train_images").mkdir()
        masks_csv.write("ImageId,ClassId,EncodedPixels\n")
        labels_csv.write("ImageID,label\n")
        for i in range(cfg.n_images):
            name = f"synth_{i:05d}.jpg"
            img, masks = make_image(cfg, seed, i)
            Image.fromarray(img).convert("RGB").save(tmp / "train_images" / name, "JPEG", quality=JPEG_QUALITY)
            masks_csv.writelines(f"{name},{cls},{rle_encode(m)}\n" for cls, m in masks.items())
            labels_csv.write(f"{name},{int(bool(masks))}\n")
