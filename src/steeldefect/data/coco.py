"""COCO instances JSON, as CVAT, Label Studio and Roboflow export it: per-object polygons or RLE with category names.

Annotation files: `annotations.json`, `*_annotations.coco.json` or `annotations/*.json` in the data folder, or
`annotations.json` / `*_annotations.coco.json` in a folder just below it (Roboflow: one per split). An image's
`file_name` is looked up beside its annotation file, in an `images/` folder there, then the same from the data
folder. Polygons, uncompressed and compressed RLE are decoded by pycocotools. An image without annotations is
clean; an annotation without a segmentation makes its image defective without a mask. Image files that no
annotation file lists are reported as ignored.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools import mask as mask_utils

from steeldefect.data.layouts import IMAGE_SUFFIXES, BadImage, Entry, Layout
from steeldefect.errors import UserError


def annotation_files(source: Path) -> list[Path]:
    folders = [source] + sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [f for d in folders for f in [d / "annotations.json", *sorted(d.glob("*_annotations.coco.json"))]]
    return [f for f in found if f.is_file()] + sorted((source / "annotations").glob("*.json"))


def read_coco(source: Path) -> Layout:
    files = annotation_files(source)
    if not files:
        raise UserError(
            f"{source}: no COCO annotation file (annotations.json, *_annotations.coco.json or annotations/*.json)."
        )
    entries, categories, seen = [], {}, {}
    for file in files:
        entries += _read_file(source, file, categories, seen)
    used = sorted({c for e in entries for c in e.classes}, key=lambda n: categories[n])
    files = (p for p in sorted(source.rglob("*")) if not any(x.startswith(".") for x in p.relative_to(source).parts))
    unlisted = [str(p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p not in seen]
    return Layout("coco", entries, used, unlisted)


def _load(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError("expected an object with an 'images' list")
        return data
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: not a COCO instances file ({e}).") from e


def _read_file(source: Path, file: Path, categories: dict[str, int], seen: dict[Path, str]) -> list[Entry]:
    data = _load(file)
    names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
    for cid, name in names.items():
        categories.setdefault(name, cid)
    images = {}
    for i, im in enumerate(data["images"]):
        if not {"id", "file_name", "width", "height"} <= set(im):
            raise UserError(f"{file}: images[{i}] lacks one of id, file_name, width, height.")
        if im["id"] in images:
            raise UserError(
                f"{file}: image id {im['id']} is listed twice ({images[im['id']]['file_name']} and {im['file_name']})"
                "; give each image one entry."
            )
        images[im["id"]] = im
    by_image: dict[object, list[dict]] = {i: [] for i in images}
    for a in data.get("annotations", []):
        if a.get("image_id") not in images:
            raise UserError(
                f"{file}: annotation {a.get('id')} refers to image id {a.get('image_id')!r}, which is not in "
                "'images'; fix or remove the annotation."
            )
        if a.get("category_id") not in names:
            raise UserError(
                f"{file}: annotation {a.get('id')} has category_id {a.get('category_id')!r}, which is not in "
                "'categories'; fix the annotation or add the category."
            )
        _check_polygons(file, a, images[a["image_id"]])
        by_image[a["image_id"]].append(a)
    return [_entry(source, file, images[i], anns, names, seen) for i, anns in by_image.items()]


def _check_polygons(file: Path, a: dict, im: dict) -> None:
    seg = a.get("segmentation")
    if not isinstance(seg, list):
        return
    for poly in seg:
        xs, ys = np.asarray(poly[0::2], dtype=float), np.asarray(poly[1::2], dtype=float)
        if len(poly) < 6 or len(poly) % 2:
            raise UserError(
                f"{file}: annotation {a.get('id')} has a polygon of {len(poly)} numbers; expected x, y "
                "pairs of at least 3 points."
            )
        if xs.min() < 0 or ys.min() < 0 or xs.max() > im["width"] or ys.max() > im["height"]:
            raise UserError(
                f"{file}: annotation {a.get('id')} of {im['file_name']} has a polygon outside the image "
                f"({im['width']}x{im['height']}): x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g}. "
                "Clip the polygon to the image, or fix the image size."
            )


def _resolve(source: Path, file: Path, name: str) -> Path:
    candidates = [d / name for base in (file.parent, source) for d in (base, base / "images")]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _entry(source: Path, file: Path, im: dict, anns: list[dict], names: dict, seen: dict[Path, str]) -> Entry:
    path = _resolve(source, file, str(im["file_name"]))
    try:
        image_id = str(PurePosixPath(*path.resolve().relative_to(source.resolve()).parts))
    except ValueError:
        image_id = str(im["file_name"])
    if path in seen:
        raise UserError(f"{file}: {path} is listed twice (also in {seen[path]}); give each image one entry.")
    seen[path] = str(file)
    if not anns:
        return Entry(image_id, path, 0)
    with_masks = [a for a in anns if a.get("segmentation")]
    reader = (lambda h, w: _masks(file, im, with_masks, names, h, w)) if with_masks else None
    return Entry(image_id, path, 1, tuple(sorted({names[a["category_id"]] for a in anns})), reader)


def _masks(file: Path, im: dict, anns: list[dict], names: dict, height: int, width: int) -> dict[str, np.ndarray]:
    if (im["width"], im["height"]) != (width, height):
        raise BadImage(
            f"{file} gives {im['file_name']} the size {im['width']}x{im['height']}, but the file is {width}x{height}"
        )
    out: dict[str, np.ndarray] = {}
    for a in anns:
        seg = a["segmentation"]
        try:
            if isinstance(seg, dict) and list(seg.get("size", [])) != [height, width]:
                raise ValueError(f"RLE size {seg.get('size')} is not the image's [height, width] [{height}, {width}]")
            if isinstance(seg, list):  # polygons
                rles = mask_utils.frPyObjects(seg, height, width)
            elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                rles = [mask_utils.frPyObjects(seg, height, width)]
            else:  # compressed RLE
                rles = [seg]
            mask = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        except (TypeError, ValueError, KeyError) as e:
            raise BadImage(
                f"{file}: annotation {a.get('id')} of {im['file_name']}: segmentation not decodable ({e})"
            ) from e
        name = names[a["category_id"]]
        out[name] = out[name] | mask if name in out else mask
    return out
