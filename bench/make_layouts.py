"""The real magnetic-tile images (Severstal layout) rearranged into every common layout, for reader benchmarks.

    .venv/bin/python bench/make_layouts.py /tmp/layouts [--source ../shared/data/magnetic-tile]

Writes OUT/published, OUT/mvtec, OUT/kolektor2, OUT/folders, OUT/coco_polygons and OUT/coco_rle (compressed
RLE) with the writers of tests/layout_trees.py. Images are copied byte for byte, never re-encoded; masks are
decoded from train.csv; labels come from defect_and_no_defect.csv (a defective image may have no mask).
Refuses an OUT that exists and is not empty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from steeldefect.data.severstal import rle_decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from layout_trees import (  # noqa: E402
    Sample,
    write_coco,
    write_folders,
    write_kolektor2,
    write_mvtec,
    write_published,
)

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic-tile"
CLASSES = ("blowhole", "break", "crack", "fray", "free", "uneven")
LAYOUTS = {
    "published": write_published,
    "mvtec": write_mvtec,
    "kolektor2": write_kolektor2,
    "folders": write_folders,
    "coco_polygons": lambda samples, root: write_coco(samples, root, encoding="polygons"),
    "coco_rle": lambda samples, root: write_coco(samples, root, encoding="rle_compressed"),
}


def read_samples(source: Path) -> list[Sample]:
    """One Sample per labelled image of `source`; SystemExit on a duplicate stem or an inconsistent label."""
    labels = pd.read_csv(source / "defect_and_no_defect.csv")
    masks = pd.read_csv(source / "train.csv").dropna(subset=["EncodedPixels"])
    rles = masks.groupby("ImageId")["EncodedPixels"].apply(list).to_dict()
    samples, seen = [], {}
    for image_id, label in zip(labels["ImageID"], labels["label"]):
        path = source / "train_images" / image_id
        prefix, _, rest = image_id.partition("_")
        stem = Path(rest).stem
        if prefix not in CLASSES or not stem:
            sys.exit(f"{image_id}: expected <class>_<stem>.jpg with a class among {', '.join(CLASSES)}")
        if (prefix == "free") != (int(label) == 0):
            sys.exit(f"{image_id}: label {label} in defect_and_no_defect.csv disagrees with the class prefix")
        if stem in seen:
            sys.exit(f"stem {stem!r} is shared by {seen[stem]} and {image_id}; stems must be unique")
        seen[stem] = image_id
        with Image.open(path) as im:
            width, height = im.size
        mask = None
        for k, rle in enumerate(rles.get(image_id, [])):
            part = rle_decode(rle, height, width, where=f"train.csv ({image_id}, mask {k + 1})")
            mask = part if mask is None else mask | part
        class_name = None if prefix == "free" else prefix
        if class_name is None and mask is not None and mask.any():
            sys.exit(f"{image_id}: a clean image with a non-empty mask in train.csv")
        samples.append(Sample(stem=stem, image=path, class_name=class_name, mask=mask))
    unlabelled = set(rles) - set(labels["ImageID"])
    if unlabelled:
        sys.exit(f"train.csv has masks of images not in defect_and_no_defect.csv: {sorted(unlabelled)[:5]}")
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="magnetic-tile in the Severstal layout")
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        sys.exit(f"{args.out} already exists and is not empty; give a new or empty folder")
    samples = read_samples(args.source)
    defective = sum(s.class_name is not None for s in samples)
    with_mask = sum(s.mask is not None for s in samples)
    print(f"{len(samples)} images from {args.source}: {defective} defective, {with_mask} with a mask")
    for name, write in LAYOUTS.items():
        start = time.perf_counter()
        names = write(samples, args.out / name)
        print(f"{name:14s} {len(names):5d} images {time.perf_counter() - start:6.2f} s")


if __name__ == "__main__":
    main()
