"""Writers of the common image-dataset layouts, from in-memory samples (for tests and bench/make_layouts.py).

Each ``write_<layout>(samples, root, **options)`` creates ``root`` and returns ``{relative posix path of each
written image: sample stem}`` so that a comparer can match images across layouts; nothing else is written
inside ``root``. Array images are written as JPEG (quality 95) unless a writer says otherwise; path images are
copied byte for byte with their own suffix. Masks are 8-bit grey 0/255 (PNG or BMP by suffix).

    published   MT_<Class>/Imgs/<stem>.jpg + <stem>.png          (magnetic-tile; clean class MT_Free)
    mvtec       train/good/NNN.jpg, test/<class|good>/NNN.jpg, ground_truth/<class>/NNN_mask.png
    kolektor2   train|test/NNNNN.jpg + NNNNN_GT.png              (numbered from 10000, no classes)
    kolektor1   kosNN/PartK.jpg + PartK_label.bmp                (no classes)
    folders     <clean>/<stem>.jpg, <class>/<stem>.jpg           (no masks)
    coco        images/<stem>.jpg + <json_name>                  (polygons, rle or rle_compressed)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class Sample:
    stem: str  # unique file stem, e.g. "exp1_num_4727"
    image: np.ndarray | Path  # uint8 HxW or HxWx3 array, or the path of an existing image file (copied as is)
    class_name: str | None  # defect class; None = clean
    mask: np.ndarray | None  # bool HxW (same size as the image); None = no mask


def _size(sample: Sample) -> tuple[int, int]:
    """(height, width) of the sample's image; ValueError if its mask has another size."""
    if isinstance(sample.image, Path):
        with Image.open(sample.image) as im:
            width, height = im.size
    else:
        height, width = sample.image.shape[:2]
    if sample.mask is not None and sample.mask.shape != (height, width):
        raise ValueError(f"{sample.stem}: mask {sample.mask.shape} is not the image's size {(height, width)}")
    return height, width


def _mask_or_zeros(sample: Sample) -> np.ndarray:
    return sample.mask if sample.mask is not None else np.zeros(_size(sample), dtype=bool)


def _write_image(image: np.ndarray | Path, dest: Path, suffix: str = ".jpg") -> Path:
    """Write `image` at `dest` + suffix (the source file's own suffix for a path); return the path written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Path):
        out = dest.with_name(dest.name + image.suffix)
        shutil.copyfile(image, out)
    else:
        out = dest.with_name(dest.name + suffix)
        jpeg = suffix.lower() in (".jpg", ".jpeg")
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(out, **({"quality": 95} if jpeg else {}))
    return out


def _write_mask(mask: np.ndarray, path: Path) -> None:
    """A bool mask as an 8-bit grey 0/255 image, PNG or BMP by the suffix of `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def palette_mask_png(mask: np.ndarray, path: Path) -> None:
    """A palette ("P") PNG: index 0 = black background, index 1 = red defect."""
    im = Image.fromarray(mask.astype(np.uint8))
    im.putpalette([0, 0, 0, 255, 0, 0])  # makes the "L" image a "P" one
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _split(samples: list[Sample], test_share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded (train, test) split, each in the original order."""
    order = np.random.default_rng(seed).permutation(len(samples))
    test = set(order[: round(len(samples) * test_share)].tolist())
    return [s for i, s in enumerate(samples) if i not in test], [s for i, s in enumerate(samples) if i in test]


def _names(root: Path, written: list[tuple[Path, str]]) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    return {path.relative_to(root).as_posix(): stem for path, stem in written}


def write_published(samples: list[Sample], root: Path) -> dict[str, str]:
    """Magnetic-tile as published: MT_<Class>/Imgs/<stem>.jpg + <stem>.png (all-zero mask where none)."""
    written = []
    for s in samples:
        folder = root / f"MT_{(s.class_name or 'free').capitalize()}" / "Imgs"
        written.append((_write_image(s.image, folder / s.stem), s.stem))
        _write_mask(_mask_or_zeros(s), folder / f"{s.stem}.png")
    return _names(root, written)


def write_mvtec(samples: list[Sample], root: Path, test_share: float = 0.5, seed: int = 0) -> dict[str, str]:
    """MVTec AD: clean images split into train/good and test/good, defective ones in test/<class>, masks in
    ground_truth/<class>/NNN_mask.png (none where the sample has no mask)."""
    train, test = _split([s for s in samples if s.class_name is None], test_share, seed)
    folders = {"train/good": train, "test/good": test}
    for s in samples:
        if s.class_name is not None:
            folders.setdefault(f"test/{s.class_name}", []).append(s)
    written = []
    for folder, members in folders.items():
        for i, s in enumerate(members):
            written.append((_write_image(s.image, root / folder / f"{i:03d}"), s.stem))
            if s.class_name is not None and s.mask is not None:
                _write_mask(s.mask, root / "ground_truth" / s.class_name / f"{i:03d}_mask.png")
    return _names(root, written)


def write_kolektor2(samples: list[Sample], root: Path, test_share: float = 0.5, seed: int = 0) -> dict[str, str]:
    """KolektorSDD2: train|test/NNNNN.jpg + NNNNN_GT.png (from 10000 in each folder; all-zero GT where none).
    Clean and defective samples are split separately, so both sets hold some of each."""
    clean_train, clean_test = _split([s for s in samples if s.class_name is None], test_share, seed)
    bad_train, bad_test = _split([s for s in samples if s.class_name is not None], test_share, seed)
    written = []
    for folder, members in (("train", clean_train + bad_train), ("test", clean_test + bad_test)):
        for i, s in enumerate(members, start=10000):
            written.append((_write_image(s.image, root / folder / f"{i:05d}"), s.stem))
            _write_mask(_mask_or_zeros(s), root / folder / f"{i:05d}_GT.png")
    return _names(root, written)


def write_kolektor1(samples: list[Sample], root: Path, per_folder: int = 8) -> dict[str, str]:
    """KolektorSDD v1: kosNN/PartK.jpg + PartK_label.bmp (0/255 grey, all-zero where none), NN from 01."""
    written = []
    for i, s in enumerate(samples):
        folder = root / f"kos{i // per_folder + 1:02d}"
        written.append((_write_image(s.image, folder / f"Part{i % per_folder}"), s.stem))
        _write_mask(_mask_or_zeros(s), folder / f"Part{i % per_folder}_label.bmp")
    return _names(root, written)


def write_folders(samples: list[Sample], root: Path, clean: str = "good") -> dict[str, str]:
    """Class folders, images only: <clean>/<stem>.jpg and <class>/<stem>.jpg."""
    written = [(_write_image(s.image, root / (s.class_name or clean) / s.stem), s.stem) for s in samples]
    return _names(root, written)


def _polygons(mask: np.ndarray) -> list[list[int]]:
    """Rectangles with corners on pixel edges covering the mask exactly: each vertical run of rows [y0, y1) is
    extended over the consecutive columns [x0, x1) holding the same run, giving [x0, y0, x1, y0, x1, y1, x0, y1].
    pycocotools (frPyObjects + merge + decode) rasterizes such integer-cornered rectangles to exactly the pixels
    [y0, y1) x [x0, x1), with no 0.5 offset (checked on every rectangle of a 7x6 image and on 3000 random masks).
    Shifting all corners by any d in [-0.5, 0.5) gives the same pixels; d = +0.5 moves the mask one pixel
    down-right. Labeling tools write fewer, longer polygons; merging runs keeps the count near theirs."""
    polys, open_runs = [], {}  # (y0, y1) -> first column
    for x in range(mask.shape[1] + 1):
        runs = set()
        if x < mask.shape[1]:
            edges = np.diff(np.concatenate([[0], mask[:, x].astype(np.int8), [0]]))
            runs = set(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
        for (y0, y1), x0 in sorted(open_runs.items()):
            if (y0, y1) not in runs:
                polys.append([x0, y0, x, y0, x, y1, x0, y1])
                del open_runs[(y0, y1)]
        for run in runs:
            open_runs.setdefault(run, x)
    return polys


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: alternating run lengths, starting with background, down the columns first."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": list(mask.shape)}


def write_coco(
    samples: list[Sample], root: Path, encoding: str = "polygons", json_name: str = "annotations.json"
) -> dict[str, str]:
    """COCO instances: images/<stem>.jpg and <json_name>. Clean images have no annotation; a defective image
    without mask (or with an empty one) gets a whole-image bbox and "segmentation": []."""
    if encoding not in ("polygons", "rle", "rle_compressed"):
        raise ValueError(f"unknown encoding {encoding!r}")
    categories = {name: i for i, name in enumerate(sorted({s.class_name for s in samples} - {None}), start=1)}
    images, annotations, written = [], [], []
    root.mkdir(parents=True, exist_ok=True)
    for image_id, s in enumerate(samples, start=1):
        path = _write_image(s.image, root / "images" / s.stem)
        written.append((path, s.stem))
        height, width = _size(s)
        file_name = path.relative_to(root).as_posix()
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if s.class_name is None:
            continue
        ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": categories[s.class_name]}
        if s.mask is None or not s.mask.any():
            ann.update(segmentation=[], area=width * height, bbox=[0, 0, width, height], iscrowd=0)
        else:
            rows, cols = np.flatnonzero(s.mask.any(axis=1)), np.flatnonzero(s.mask.any(axis=0))
            bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
            if encoding == "polygons":
                segmentation, crowd = _polygons(s.mask), 0
            elif encoding == "rle":
                segmentation, crowd = _uncompressed_rle(s.mask), 1
            else:
                rle = mask_utils.encode(np.asfortranarray(s.mask.astype(np.uint8)))
                segmentation, crowd = {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}, 1
            ann.update(segmentation=segmentation, area=int(s.mask.sum()), bbox=bbox, iscrowd=crowd)
        annotations.append(ann)
    cats = [{"id": i, "name": name} for name, i in categories.items()]
    (root / json_name).write_text(json.dumps({"images": images, "categories": cats, "annotations": annotations}))
    return _names(root, written)
