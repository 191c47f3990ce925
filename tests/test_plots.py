"""Tests for steeldefect.evaluate.plots: galleries are real PNGs; overlays tint only the masked pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steeldefect.evaluate.plots import CLASS_COLOURS, Tile, gallery, overlay

H, W = 64, 400


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[Path]:
    """Three grey steel-like JPEGs (horizontal bands and noise), written with PIL."""
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        img = 110 + 10 * np.sin(np.arange(H) / 3)[:, None] + rng.normal(0, 4, (H, W))
        path = folder / f"steel_{i}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB").save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return np.asarray(im.convert("RGB")).astype(int)


def _reddish(rgb: np.ndarray) -> int:
    return int(((rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 60)).sum())


def test_gallery_from_real_jpegs_writes_a_png(jpegs, tmp_path):
    tiles = [Tile(str(p), f"image {i}") for i, p in enumerate(jpegs)]
    out = tmp_path / "plots" / "gallery.png"
    gallery(tiles, out, "Three images")
    with Image.open(out) as im:
        im.verify()
    rgb = _png(out)
    assert rgb.shape[0] > 100 and rgb.shape[1] > 400
    assert rgb.std() > 10  # not a blank canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["gallery.png"]  # no temporary file left


def test_gallery_shows_the_masks_in_their_class_colour(jpegs, tmp_path):
    assert CLASS_COLOURS[1] == (1.0, 0.2, 0.2)  # red: what the check below looks for
    plain, masked = tmp_path / "plain.png", tmp_path / "masked.png"
    gallery([Tile(str(jpegs[0]), "no mask")], plain, "plain")
    gallery([Tile(str(jpegs[0]), "class 1", {1: _box(10, 50, 100, 300)})], masked, "masked")
    assert _reddish(_png(plain)) == 0
    assert _reddish(_png(masked)) > 1000  # the tinted box is visible in the figure


def test_gallery_with_no_tiles_writes_a_png_too(tmp_path):
    out = tmp_path / "gallery_false_negatives.png"
    gallery([], out, "Missed defects: 0", empty="No false negatives")
    rgb = _png(out)
    assert rgb.shape[0] > 50 and rgb.shape[1] > 50
    assert (rgb < 100).any()  # some text was drawn on the white figure


def test_gallery_replaces_an_older_png(jpegs, tmp_path):
    out = tmp_path / "g.png"
    out.write_bytes(b"not a png")
    gallery([Tile(str(jpegs[1]), "one")], out, "again")
    _png(out)


# --- overlay ----------------------------------------------------------------------------------------------


def test_overlay_tints_only_masked_pixels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    before = image.copy()
    m1, m3 = _box(0, 20, 0, 50), _box(30, 60, 200, 390)
    alpha = 0.45
    out = overlay(image, {1: m1, 3: m3}, alpha=alpha)
    assert np.array_equal(image, before)  # input untouched
    assert out.shape == (H, W, 3) and out.dtype == float
    assert out.min() >= 0 and out.max() <= 1
    base = image / 255
    outside = ~(m1 | m3)
    assert np.array_equal(out[outside], base[outside])
    for mask, cls in ((m1, 1), (m3, 3)):
        expected = (1 - alpha) * base[mask] + alpha * np.array(CLASS_COLOURS[cls])
        np.testing.assert_allclose(out[mask], expected)
        assert not np.allclose(out[mask], base[mask])


def test_overlay_without_masks_is_the_image_scaled():
    image = np.full((4, 5, 3), 255, np.uint8)
    np.testing.assert_array_equal(overlay(image, {}), np.ones((4, 5, 3)))


def test_overlay_overlapping_masks_and_unknown_class():
    image = np.zeros((4, 4, 3), np.uint8)
    m = np.zeros((4, 4), bool)
    m[1, 1] = True
    out = overlay(image, {2: m, 9: m}, alpha=0.5)
    g = 0.5 * np.array(CLASS_COLOURS[2])
    np.testing.assert_allclose(out[1, 1], 0.5 * g + 0.5 * np.ones(3))  # class 9: white, blended on top
    assert not out[~m].any()
