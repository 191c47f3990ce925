"""The connected defect regions of a defect map: the defect list of `steeldefect predict --defects`, one row per
region with its peak probability, area, box and length in the original image's pixels (and mm). Pure NumPy and
SciPy, no TensorFlow.

A region is a set of 8-connected pixels of the map resized to the original image (`maps.resize_to`, each map cell a
block of pixels) at or above the map threshold. Its length is the longest side of its minimum-area rotated
rectangle: the defect's extent along its own direction (a diagonal crack's length, which its box overstates), its
width the shorter side.

With a model trained with types (per-type maps), the rows come from each type's map instead of the any-defect map:
one per connected region of each type's map, so an image with a scratch and a pit has a row for each, and the
type column names the type.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull

from steeldefect.serve import maps

DEFECT_COLUMNS = ["path", "region", "type", "probability", "area_px", *maps.BOX_COLUMNS, "length_px", "width_px"]
MM_COLUMNS = ["area_mm2", "length_mm", "width_mm"]  # after DEFECT_COLUMNS when a pixel size is given
INT_COLUMNS = ["region", "area_px", *maps.BOX_COLUMNS]


def rotated_extent(mask: np.ndarray) -> tuple[float, float]:
    """(length, width): the sides of the minimum-area rotated rectangle around the pixels of boolean `mask`, by
    rotating calipers over the convex hull of the pixels' corners (pixel (r, c) is the square (c, r)-(c+1, r+1), so
    one pixel gives (1, 1) and an axis-aligned w x h block (max(w, h), min(w, h)))."""
    rows = np.flatnonzero(mask.any(axis=1))
    left = mask[rows].argmax(axis=1)
    right = mask.shape[1] - mask[rows, ::-1].argmax(axis=1)
    # a row's pixels lie between its leftmost and rightmost pixel: that strip's 4 corners stand for all of them
    x = np.concatenate([left, right, left, right])
    y = np.concatenate([rows, rows, rows + 1, rows + 1])
    points = np.column_stack([x, y]).astype(float)
    hull = points[ConvexHull(points).vertices]
    edges = np.roll(hull, -1, axis=0) - hull
    along = edges / np.linalg.norm(edges, axis=1, keepdims=True)  # one direction per hull edge
    across = np.column_stack([-along[:, 1], along[:, 0]])
    sides = np.stack([np.ptp(hull @ along.T, axis=0), np.ptp(hull @ across.T, axis=0)])
    best = sides[:, np.argmin(sides.prod(axis=0))]
    return float(best.max()), float(best.min())


def regions(
    defect_map: np.ndarray,
    threshold: float | dict[str, float],
    height: int,
    width: int,
    min_area: float | dict[str, float] = 0,
    type_name: str = "defect",
    mm_per_pixel: float | None = None,
) -> list[dict]:
    """The defect regions of `defect_map` in its `height` x `width` original image (see the module docstring),
    largest first (equal areas: top-left first, by box_y0 then box_x0). Each a dict: type (`type_name`),
    probability (the map's maximum in it), area_px, box_x0, box_y0, box_x1, box_y1 (x1, y1 exclusive: the box of
    its map cells as `maps.bounding_box` draws it, so one region's box is the predictions CSV's box), length_px,
    width_px (2 decimals) and with `mm_per_pixel` area_mm2, length_mm, width_mm. `threshold`: a number, or
    {type name: number} (`maps.value_for`). Regions under `min_area` pixels
    (a number, or {type name: pixels}, 0 for a type it does not name) are left out."""
    limit = min_area.get(type_name, 0) if isinstance(min_area, dict) else min_area
    pixels = maps.resize_to(defect_map, height, width)
    labels, _ = ndimage.label(pixels >= maps.value_for(threshold, type_name), structure=np.ones((3, 3), bool))
    h, w = np.shape(defect_map)
    # each pixel's map cell, numbered (resize_to works in float32: exact below 2**24 cells)
    cell_of = maps.resize_to(np.arange(h * w).reshape(h, w), height, width).astype(np.int64)
    found = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[box] == label
        area = int(mask.sum())
        if area < limit:
            continue
        cells = np.zeros(h * w, bool)
        cells[cell_of[box][mask]] = True
        length, side = rotated_extent(mask)
        region = {
            "type": type_name,
            "probability": float(pixels[box][mask].max()),
            "area_px": area,
            **dict(zip(maps.BOX_COLUMNS, maps.bounding_box(cells.reshape(h, w), 1, height, width))),
            "length_px": round(length, 2),
            "width_px": round(side, 2),
        }
        if mm_per_pixel is not None:
            region.update(
                area_mm2=_significant(area * mm_per_pixel**2),
                length_mm=_significant(region["length_px"] * mm_per_pixel),
                width_mm=_significant(region["width_px"] * mm_per_pixel),
            )
        found.append(region)
    return sorted(found, key=largest_first)


def largest_first(region: dict) -> tuple:
    """The order of an image's regions: largest first, equal areas top-left first (box_y0, box_x0), then by type."""
    return -region["area_px"], region["box_y0"], region["box_x0"], region["type"]


def _significant(value: float) -> float:
    """`value` to 6 significant digits: no float noise (0.30000000000000004) in the CSV, whatever the scale."""
    return float(f"{value:.6g}")


def defect_table(
    paths: list[str | bytes],
    defect_maps: list[np.ndarray | None],
    threshold: float | dict[str, float],
    min_area: float | dict[str, float],
    mm_per_pixel: float | None = None,
    names: list[str] | None = None,
    type_maps: list[np.ndarray | None] | None = None,
    type_names: list[str] | None = None,
) -> pd.DataFrame:
    """One row per defect region (`regions`) of every image that has a map, numbered 1, 2, ... per image, with the
    columns DEFECT_COLUMNS (+ MM_COLUMNS with `mm_per_pixel`). An image without a region, or without a map (it
    could not be read), has no row: the predictions CSV still lists it. `paths`: the image files or the encoded
    images (bytes), for their size; `names`: the path column (default: `paths`). With `type_maps` (each image's
    (h, w, K) maps of the K types `type_names`) the regions of each type's map, of that type, numbered over all
    the image's types in `largest_first` order; else those of the any-defect map, of type "defect"."""
    rows = []
    for path, name, defect_map, types in zip(paths, names or paths, defect_maps, type_maps or [None] * len(paths)):
        if defect_map is None:
            continue
        height, width = maps.image_size_of(path)
        typed = [(defect_map, "defect")] if types is None else zip(np.moveaxis(types, -1, 0), type_names)
        found = sorted(
            (r for m, t in typed for r in regions(m, threshold, height, width, min_area, t, mm_per_pixel)),
            key=largest_first,
        )
        rows += [{"path": name, "region": i, **region} for i, region in enumerate(found, start=1)]
    columns = DEFECT_COLUMNS + (MM_COLUMNS if mm_per_pixel is not None else [])
    return pd.DataFrame(rows, columns=columns).astype(dict.fromkeys(INT_COLUMNS, "int64"))
