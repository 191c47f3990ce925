"""The defect list of a defect map (serve/regions.py): connected regions, their boxes, lengths and areas in the
original image's pixels, the min area and the mm columns, per type with per-type maps; and the per-type overlay
(serve/maps.py). Pure NumPy, SciPy and Pillow: no TensorFlow."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from steeldefect.serve.maps import (
    BOX_COLUMNS,
    LEGEND_LINE,
    MAP_COLOUR,
    OUTLINE_COLOUR,
    TYPE_COLOURS,
    bounding_box,
    legend,
    outline,
    overlay_image,
    resize_to,
    value_for,
    write_overlay,
    write_overlays,
)
from steeldefect.serve.regions import DEFECT_COLUMNS, MM_COLUMNS, defect_table, regions


def box(region: dict) -> tuple[int, ...]:
    return tuple(region[c] for c in BOX_COLUMNS)


def two_blobs() -> np.ndarray:
    """An 8 x 8 map: a 2 x 2 blob (peak 0.9) and a single cell (0.7); at stride 4 (32 x 32 image) 64 and 16 px."""
    m = np.zeros((8, 8), np.float32)
    m[1:3, 1:3] = [[0.6, 0.9], [0.6, 0.6]]
    m[6, 6] = 0.7
    return m


def test_importing_it_does_not_import_tensorflow():
    code = "import sys, steeldefect.serve.regions, steeldefect.serve.maps; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_two_blobs_are_two_regions_with_their_area_box_and_peak():
    big, small = regions(two_blobs(), 0.5, 32, 32)
    assert (big["type"], big["area_px"], box(big)) == ("defect", 64, (4, 4, 12, 12))
    assert big["probability"] == pytest.approx(0.9)  # the maximum inside, not the mean
    assert (small["area_px"], box(small), small["length_px"], small["width_px"]) == (16, (24, 24, 28, 28), 4, 4)
    assert small["probability"] == pytest.approx(0.7)
    assert "area_mm2" not in big


def test_a_diagonal_line_is_as_long_as_its_diagonal():
    """5 cells on the diagonal of a 10 x 10 map in a 40 x 80 image: each cell 4 px tall and 8 px wide, so the line
    runs from (0, 0) to (40, 20) (x, y): the rotated rectangle along it is hypot(40, 20) long. Across it the
    staircase reaches from corner (8, 0) to corner (0, 4): their distance along the normal (-1, 2) / sqrt(5) is
    (8 + 8) / sqrt(5). The box (40 x 20) overstates the length."""
    m = np.zeros((10, 10), np.float32)
    m[np.arange(5), np.arange(5)] = 0.8
    (line,) = regions(m, 0.5, 40, 80)
    assert line["length_px"] == pytest.approx(math.hypot(40, 20), abs=0.01)
    assert line["width_px"] == pytest.approx(16 / math.sqrt(5), abs=0.01)
    assert (line["area_px"], box(line)) == (5 * 4 * 8, (0, 0, 40, 20))


@pytest.mark.parametrize("rows, cols", [(slice(2, 5), slice(1, 8)), (slice(0, 7), slice(3, 5))])
def test_an_axis_aligned_block_is_as_long_as_its_longer_side(rows, cols):
    m = np.zeros((8, 8), np.float32)
    m[rows, cols] = 1
    (block,) = regions(m, 0.5, 24, 24)  # 3 px per cell
    w, h = 3 * (cols.stop - cols.start), 3 * (rows.stop - rows.start)
    assert (block["length_px"], block["width_px"], block["area_px"]) == (max(w, h), min(w, h), w * h)


def test_a_single_pixel_is_1_long_and_1_wide():
    m = np.zeros((4, 4), np.float32)
    m[1, 2] = 0.5  # at the threshold: it counts
    (pixel,) = regions(m, 0.5, 4, 4)
    assert (pixel["area_px"], pixel["length_px"], pixel["width_px"], box(pixel)) == (1, 1, 1, (2, 1, 3, 2))


def test_min_area_drops_the_small_region_and_keeps_the_large():
    m = two_blobs()
    assert [r["area_px"] for r in regions(m, 0.5, 32, 32, min_area=17)] == [64]
    assert [r["area_px"] for r in regions(m, 0.5, 32, 32, min_area=16)] == [64, 16]  # not smaller than 16
    assert [r["area_px"] for r in regions(m, 0.5, 32, 32, min_area={"defect": 17})] == [64]
    assert [r["area_px"] for r in regions(m, 0.5, 32, 32, min_area={"scratch": 1000})] == [64, 16]  # not named: 0
    assert regions(m, 0.5, 32, 32, min_area=65) == []


def test_mm_columns_are_the_pixel_figures_times_the_pixel_size():
    for region in regions(two_blobs(), 0.5, 32, 32, mm_per_pixel=0.2):
        assert region["area_mm2"] == pytest.approx(region["area_px"] * 0.2**2)
        assert region["length_mm"] == pytest.approx(region["length_px"] * 0.2)
        assert region["width_mm"] == pytest.approx(region["width_px"] * 0.2)
    assert regions(two_blobs(), 0.5, 32, 32, mm_per_pixel=0.2)[0]["area_mm2"] == 2.56  # no float noise


def test_a_map_below_the_threshold_has_no_region():
    assert regions(np.full((6, 6), 0.49, np.float32), 0.5, 60, 60) == []


def test_regions_come_largest_first_and_equal_areas_top_left_first():
    m = np.zeros((10, 10), np.float32)
    m[0, 0] = m[0, 9] = 1  # two of 1 cell, the left one first
    m[9, 0:3] = 1  # 3 cells, last in reading order
    m[5, 5:7] = 1  # 2 cells
    found = regions(m, 0.5, 10, 10)
    assert [(r["area_px"], r["box_x0"], r["box_y0"]) for r in found] == [(3, 0, 9), (2, 5, 5), (1, 0, 0), (1, 9, 0)]


def test_cells_touching_at_a_corner_are_one_region():
    m = np.zeros((6, 6), np.float32)
    m[2, 2] = m[3, 3] = 1
    (region,) = regions(m, 0.5, 12, 12)
    assert (region["area_px"], box(region)) == (8, (4, 4, 8, 8))


def test_the_boxes_are_those_of_the_predictions_csv_whatever_the_scale():
    """A 40 x 250 image under a 16 x 24 map: cells are 2.5 x 10.42 px, so cell edges fall inside pixels; a
    region's box is still `maps.bounding_box` of its cells, and the regions' boxes make up the image's box."""
    rng = np.random.default_rng(0)
    m = (rng.random((16, 24)) > 0.93).astype(np.float32)
    found = regions(m, 0.5, 40, 250)
    assert len(found) > 2
    for region in found:
        assert region["area_px"] <= (region["box_x1"] - region["box_x0"]) * (region["box_y1"] - region["box_y0"])
    union = (*np.min([box(r)[:2] for r in found], axis=0), *np.max([box(r)[2:] for r in found], axis=0))
    assert union == bounding_box(m, 0.5, 40, 250)
    one = np.zeros((16, 24), np.float32)
    one[5:7, 2:4] = 1  # x from 20.8 to 41.7: floor and ceil
    assert box(regions(one, 0.5, 40, 250)[0]) == bounding_box(one, 0.5, 40, 250)


def png(height: int, width: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_defect_table_has_a_row_per_region_of_every_image_with_a_map():
    clean = np.zeros((8, 8), np.float32)
    images = [png(32, 32), png(32, 32), png(16, 16), png(32, 32)]
    table = defect_table(images, [two_blobs(), None, two_blobs(), clean], 0.5, 0, names=["a", "b", "c", "d"])
    assert list(table.columns) == DEFECT_COLUMNS
    assert list(table.path) == ["a", "a", "c", "c"] and list(table.region) == [1, 2, 1, 2]  # b unreadable, d clean
    assert list(table.area_px) == [64, 16, 16, 4]  # c is 16 x 16: 2 px per cell
    assert all(table[c].dtype == np.int64 for c in ["region", "area_px", *BOX_COLUMNS])
    with_mm = defect_table(images, [two_blobs(), None, None, None], 0.5, {"defect": 20}, mm_per_pixel=0.1)
    assert list(with_mm.columns) == DEFECT_COLUMNS + MM_COLUMNS and len(with_mm) == 1
    assert isinstance(with_mm.path[0], bytes)  # no names: the paths (here the images themselves)
    empty = defect_table(images, [clean] * 4, 0.5, 0)
    assert list(empty.columns) == DEFECT_COLUMNS and empty.empty and empty.area_px.dtype == np.int64


def scratch_and_pit() -> np.ndarray:
    """(8, 8, 2) maps of an 8 x 8 map (32 x 32 image, 16 px per cell): scratch = `two_blobs` (64 and 16 px); pit
    a row of 3 cells (48 px) and the cell of scratch's small region (16 px, same box)."""
    pit = np.zeros((8, 8), np.float32)
    pit[5, 1:4] = 0.8
    pit[6, 6] = 0.9
    return np.stack([two_blobs(), pit], axis=-1)


def test_defect_table_with_type_maps_has_a_row_per_region_of_each_type():
    types = scratch_and_pit()
    images, names = [png(32, 32), png(32, 32)], ["scratch", "pit"]
    table = defect_table(
        images, [types.max(axis=-1), None], 0.5, 0, names=["a", "b"], type_maps=[types, None], type_names=names
    )
    assert list(table.columns) == DEFECT_COLUMNS and list(table.path) == ["a"] * 4  # b unreadable
    # numbered over both types, largest first; equal area and box: by type name
    assert list(zip(table.region, table.type, table.area_px)) == [
        (1, "scratch", 64),
        (2, "pit", 48),
        (3, "pit", 16),
        (4, "scratch", 16),
    ]
    assert list(table.probability) == pytest.approx([0.9, 0.8, 0.9, 0.7])  # each type's own map
    assert list(table.box_x0) == [4, 4, 24, 24] and table.region.dtype == np.int64
    small = defect_table(images[:1], [types.max(axis=-1)], 0.5, {"pit": 17}, type_maps=[types], type_names=names)
    assert list(zip(small.region, small.type, small.area_px)) == [
        (1, "scratch", 64),
        (2, "pit", 48),
        (3, "scratch", 16),
    ]
    # a map threshold per type (threshold.json's map_threshold by type name): pit's 0.8 cells no longer count
    strict = {"scratch": 0.5, "pit": 0.85}
    table = defect_table(images[:1], [types.max(axis=-1)], strict, 0, type_maps=[types], type_names=names)
    assert list(zip(table.type, table.area_px)) == [("scratch", 64), ("pit", 16), ("scratch", 16)]
    assert (value_for(strict, "pit"), value_for(strict), value_for(0.4, "pit")) == (0.85, 0.5, 0.4)
    untyped = defect_table(images[:1], [types.max(axis=-1)], 0.5, 0)  # no type maps: the any-defect map's regions
    assert list(untyped.type) == ["defect"] * 3 and list(untyped.area_px) == [64, 48, 16]


def write_png(path, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(path)
    return str(path)


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_type_overlay_tints_each_type_in_its_colour_with_a_legend_below(tmp_path):
    """A 40 x 80 grey image under (4, 8) maps (10 x 10 px per cell): scratch in the top-left cell, pit in the
    bottom-right one."""
    types = np.zeros((4, 8, 2), np.float32)
    types[0, 0, 0] = types[3, 7, 1] = 1.0
    image = write_png(tmp_path / "steel.png", np.full((40, 80, 3), 100, np.uint8))
    write_overlay(image, types.max(axis=-1), 0.5, tmp_path / "out.png", types, ["scratch", "pit"])
    out = read_png(tmp_path / "out.png")
    assert out.shape[1:] == (80, 3) and out.shape[0] > 40 and (out.shape[0] - 40) % LEGEND_LINE == 0  # the legend
    colours = np.round(TYPE_COLOURS[:2] * 255)

    def nearest(pixel):
        return int(np.argmin(np.linalg.norm(colours - pixel, axis=1)))

    assert nearest(out[5, 5]) == 0 and nearest(out[35, 75]) == 1  # inside each type's cell: its colour
    assert tuple(out[0, 0]) == tuple(colours[0]) and tuple(out[39, 79]) == tuple(colours[1])  # outlined in it
    assert (out[15:25, 20:60] == 100).all()  # no map: the image unchanged
    assert all((out[40:] == c).all(axis=-1).any() for c in colours)  # below: a square in each type's colour
    written = write_overlays(
        ["steel.png", "gone.png"],
        [types.max(axis=-1), None],
        0.5,
        tmp_path / "maps",
        [image, image],
        [types, None],
        ["scratch", "pit"],
    )
    assert written == 1 and np.array_equal(read_png(tmp_path / "maps" / "steel_map.png"), out)


def test_the_legend_wraps_onto_a_new_line_when_the_names_do_not_fit():
    assert legend(["scratch", "pit"], 400).shape == (LEGEND_LINE, 400, 3)
    assert legend(["scratch", "pit"], 60).shape == (2 * LEGEND_LINE, 60, 3)


def test_overlay_without_type_maps_is_the_red_overlay_as_before(tmp_path):
    """Without type maps: exactly the old overlay (red heat, yellow outline at the threshold, no legend), here
    computed by hand, on a map that does not tile the image."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (37, 83, 3), dtype=np.uint8)
    m = rng.random((5, 11)).astype(np.float32)
    heat = np.clip(resize_to(m, 37, 83), 0, 1)[..., None] * 0.6
    old = pixels.astype(np.float32) / 255 * (1 - heat) + MAP_COLOUR * heat
    old[outline(heat[..., 0] >= 0.5 * 0.6)] = OUTLINE_COLOUR
    old = np.round(old * 255).astype(np.uint8)
    assert np.array_equal(overlay_image(pixels, m, 0.5), old)
    image = write_png(tmp_path / "steel.png", pixels)
    write_overlay(image, m, 0.5, tmp_path / "out.png")
    assert np.array_equal(read_png(tmp_path / "out.png"), old)
    assert write_overlays(["steel.png"], [m], 0.5, tmp_path / "maps", [image], type_maps=None) == 1
    assert np.array_equal(read_png(tmp_path / "maps" / "steel_map.png"), old)
