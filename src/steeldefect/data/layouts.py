"""Image trees as users have them: class folders, image + mask pairs (beside the image or in a mask tree), MVTec AD.

The rules (docs/data.md):
- Images are .jpg, .jpeg, .png or .bmp files (any case). Hidden files and folders are skipped; any other file is
  listed as ignored.
- A file is a mask when its stem ends with `_mask`, `_label`, `_gt` or `_seg` (any case), when it shares its stem
  with a JPEG in the same folder (magnetic-tile: `x.jpg` + `x.png`), or when it lies in a mask tree: a folder
  named `ground_truth`, `masks`, `mask`, `gt`, `labels` or `SegmentationClass` (CVAT) that mirrors the image
  tree beside it (structural folders left out, so MVTec's `ground_truth/crack/000_mask.png` is the mask of
  `test/crack/000.png`). CVAT's `SegmentationObject/` and `ImageSets/` are skipped (listed as ignored).
- Structural folders (`train`, `test`, `val`, `images`, `imgs`, ...) are not classes. An image's class folder is
  its nearest other folder. When some folder's name is clean (`data.clean_names`, matched against the whole
  name or its last `_`/`-` part), folders give the labels: images under a clean folder are clean, the others
  defective of their folder's class. When no folder is clean but images have masks (KolektorSDD, KolektorSDD2),
  the mask gives the label: non-empty means defective, of the one class `defect`. When no folder is clean and
  no image has a mask (defects sorted by type), every image is defective, of its folder's class; this needs at
  least two class folders (with one there is nothing to tell apart).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from steeldefect.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}  # what TensorFlow's decode_image reads
MASK_SUFFIXES = IMAGE_SUFFIXES | {".gif", ".tif", ".tiff"}
MASK_STEM_ENDINGS = ("_mask", "_label", "_gt", "_seg")
MASK_TREES = {"ground_truth", "masks", "mask", "gt", "labels", "segmentationclass"}
SKIPPED_TREES = {"segmentationobject", "imagesets"}  # CVAT "Segmentation mask": instance masks and split lists
STRUCTURAL = {"train", "training", "test", "testing", "val", "valid", "validation", "images", "image", "imgs", "img"}
STRUCTURAL |= {"jpegimages"}  # CVAT "Segmentation mask" (Pascal VOC)
DEFECT = "defect"  # the class of a defect known only from its mask


class BadImage(Exception):
    """A problem with one image or its mask: the image is failed or skipped (`prepare.on_bad_image`)."""


@dataclass
class Entry:
    """One image as a layout reader found it: `label` 0, 1, or None (from the mask); `classes`: its defect classes
    known without the mask (folder, COCO categories); `masks(height, width)` gives its masks as {class name: bool
    array} (raising BadImage), or is None when it has none."""

    image_id: str
    path: Path
    label: int | None
    classes: tuple[str, ...] = ()
    masks: Callable[[int, int], dict[str, np.ndarray]] | None = None


@dataclass
class Layout:
    name: str  # folders, pairs or mvtec (or coco, severstal)
    entries: list[Entry]
    class_names: list[str]  # defect classes: ClassId i + 1 is class_names[i], unless class_ids says otherwise
    ignored: list[str]  # files that are neither images nor masks
    # Severstal: the ClassIds of class_names (its own numbers), the folder its bad images are reported in
    # (train_images/), the images clean only because train.csv does not list them, the repeated rows dropped
    class_ids: list[int] | None = None
    image_dir: Path | None = None
    derived_clean: set[str] = field(default_factory=set)
    duplicates_dropped: int = 0


def is_clean(folder: str, clean_names: tuple[str, ...]) -> bool:
    names = {n.lower() for n in clean_names}
    return folder.lower() in names or re.split(r"[_-]", folder)[-1].lower() in names


def read_mask(path: Path, height: int, width: int) -> np.ndarray:
    """Bool (height, width) mask from a mask image: grey masks are on at >= 128 when they use the 8-bit range,
    else at any non-zero value (0/1, class indices); palette and colour masks are on wherever the colour is not
    black; a mask with a varying alpha channel (a brush export) is on where alpha >= 128."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.size != (width, height):
                raise BadImage(
                    f"mask {path} is {im.size[0]}x{im.size[1]} pixels but its image is {width}x{height}; a mask "
                    "must have its image's size (width x height)"
                )
            if "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
                im = im.getchannel("A")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "I", "I;16", "F"):
                rgb = np.asarray(im.convert("RGB"))
                if im.mode == "P" or not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                    return rgb.any(axis=2)
                im = Image.fromarray(rgb[..., 0])
            high = im.getextrema()[1]  # PIL's C code: most masks (of clean images) stop here, all zero
            if not high:
                return np.zeros((height, width), dtype=bool)
            grey = np.asarray(im)
            return grey >= 128 if high >= 128 else grey > 0
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise BadImage(f"mask {path} is not a readable image ({e})") from e


def _mask_base(stem: str) -> str | None:
    """The image stem a mask's stem names (`000_mask` -> `000`), or None."""
    low = stem.lower()
    return next((stem[: -len(e)] for e in MASK_STEM_ENDINGS if low.endswith(e) and len(low) > len(e)), None)


@dataclass
class _Scan:
    images: dict[Path, Path | None]  # image path -> its mask
    tree_masks: list[Path]
    beside: int
    ignored: list[str]
    folders: list[Path]  # every non-hidden folder outside mask trees


def _scan(source: Path) -> _Scan:
    images: dict[Path, Path | None] = {}
    tree_masks, ignored, folders, beside = [], [], [], 0
    for top, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        top = Path(top)
        rel_parts = [p.lower() for p in top.relative_to(source).parts]
        if SKIPPED_TREES & set(rel_parts):
            ignored += [str(top / f) for f in sorted(files)]
            continue
        in_tree = any(p in MASK_TREES for p in rel_parts)
        if not in_tree and top != source:
            folders.append(top)
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for name in sorted(f for f in files if not f.startswith(".")):
            path = top / name
            suffix = path.suffix.lower()
            if suffix not in MASK_SUFFIXES:
                ignored.append(str(path))
            elif in_tree:
                tree_masks.append(path)
            else:
                by_stem[path.stem.lower()].append(path)
        masks_here, here = [], {}
        for stem, paths in by_stem.items():
            if _mask_base(stem) is not None:
                masks_here += paths
                continue
            jpeg = [p for p in paths if p.suffix.lower() in (".jpg", ".jpeg")]
            if len(paths) > 1 and (len(paths) > 2 or len(jpeg) != 1):
                raise UserError(
                    f"{top}: the files {', '.join(p.name for p in paths)} share the stem {paths[0].stem!r}, so which "
                    "one is the image is unclear (for an image + mask pair the image must be the JPEG). Rename the "
                    "mask with a _mask suffix (e.g. x_mask.png) and set data.format: pairs, or remove the extra files."
                )
            image = jpeg[0] if jpeg else paths[0]
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(
                    f"{image}: {image.suffix} images cannot be read by the pipeline (it reads .jpg, .jpeg, .png and "
                    ".bmp); convert it, or name it as a mask (x_mask{image.suffix}) if it is one."
                )
            images[image], here[stem] = None, image
            if len(paths) == 2:
                masks_here.append(next(p for p in paths if p is not image))
        for mask in masks_here:
            base = _mask_base(mask.stem) or mask.stem
            _attach(images, here.get(base.lower()), mask)
            beside += 1
    return _Scan(images, tree_masks, beside, ignored, folders)


def _attach(images: dict[Path, Path | None], image: Path | None, mask: Path) -> None:
    if image is None:
        raise UserError(
            f"{mask}: a mask without an image (no image with its stem beside it, or at the same place in the image "
            "tree). Add the image, or remove the mask."
        )
    if images[image] is not None:
        raise UserError(
            f"{image}: two masks, {images[image]} and {mask}; keep one (or merge them into one mask image)."
        )
    images[image] = mask


def _key(base: Path, parts: tuple[str, ...], stem: str) -> tuple:
    """A mask tree's lookup key: the folder holding the tree, the non-structural folders below it, the stem."""
    return base, tuple(p.lower() for p in parts if p.lower() not in STRUCTURAL), stem.lower()


def _attach_tree_masks(source: Path, scan: _Scan) -> None:
    by_key = {}
    for mask in scan.tree_masks:
        rel = mask.relative_to(source).parts
        i = next(i for i, p in enumerate(rel) if p.lower() in MASK_TREES)
        key = _key(source.joinpath(*rel[:i]), rel[i + 1 : -1], _mask_base(mask.stem) or mask.stem)
        by_key[key] = mask
    used: dict[Path, Path] = {}
    for image in scan.images:
        rel = image.relative_to(source).parts
        for i in range(len(rel)):
            mask = by_key.get(_key(source.joinpath(*rel[:i]), rel[i:-1], image.stem))
            if mask is None:
                continue
            if mask in used:
                raise UserError(
                    f"{mask}: this mask matches two images, {used[mask]} and {image} (structural folders such as "
                    "train/ and test/ are left out when matching); give the images distinct names or masks."
                )
            used[mask] = image
            _attach(scan.images, image, mask)
    stray = [m for m in scan.tree_masks if m not in used]
    if stray:
        _attach(scan.images, None, stray[0])


def read_tree(source: Path, clean_names: tuple[str, ...], want: str = "auto") -> Layout:
    """Read a folder of class folders or image + mask pairs (see the module's rules). `want` (folders, pairs,
    mvtec) is checked against what was found; "auto" accepts any of the three."""
    scan = _scan(source)
    if not scan.images:
        found = ", ".join(Path(f).name for f in scan.ignored[:3]) + (" ..." if len(scan.ignored) > 3 else "")
        raise UserError(
            f"{source}: no layout fits: no images (.jpg, .jpeg, .png, .bmp), no train.csv, no COCO annotations file; "
            f"{len(scan.ignored)} other files ({found or 'none'}). Point data.source at the folder holding your "
            "images, and set data.format if its layout is not detected (docs/data.md)."
        )
    if scan.beside and scan.tree_masks:
        raise UserError(
            f"{source}: layouts mixed: {scan.beside} masks lie beside their images and {len(scan.tree_masks)} in a "
            f"mask tree (e.g. {scan.tree_masks[0]}). Use one of the two."
        )
    _attach_tree_masks(source, scan)
    _check_folders(source, scan)
    found = _layout_name(source, scan)
    if want != "auto" and want != found:
        raise UserError(
            f"{source}: data.format is {want}, but the folder looks like {found} "
            f"({sum(m is not None for m in scan.images.values())} masks for {len(scan.images)} images). Set "
            f"data.format: {found} (or auto), or rearrange the folder (docs/data.md)."
        )
    return _entries(source, scan, clean_names, found)


def _check_folders(source: Path, scan: _Scan) -> None:
    holding = {p for image in scan.images for p in image.parents}
    empty = [f for f in scan.folders if f not in holding]
    if empty:
        raise UserError(
            f"{empty[0]}: an empty class folder (no .jpg, .jpeg, .png or .bmp image in it or below it; "
            f"{len(empty)} such folders). Add its images, or remove the folder."
        )


def _layout_name(source: Path, scan: _Scan) -> str:
    if not any(scan.images.values()):
        return "folders"
    top = {p.name.lower() for p in source.iterdir() if p.is_dir()}
    return "mvtec" if {"ground_truth", "test"} <= top else "pairs"


def _class_folders(source: Path, image: Path) -> list[str]:
    return [p for p in image.relative_to(source).parts[:-1] if p.lower() not in STRUCTURAL]


def _entries(source: Path, scan: _Scan, clean_names: tuple[str, ...], name: str) -> Layout:
    folders = {image: _class_folders(source, image) for image in scan.images}
    has_clean = any(is_clean(f, clean_names) for fs in folders.values() for f in fs)
    types = sorted({fs[-1] for fs in folders.values() if fs}, key=str.lower)
    no_masks = not any(scan.images.values())
    if not has_clean and no_masks and len(types) == 1:
        raise UserError(
            f"{source}: every image is in one class folder, {types[0]}, and no folder is named as clean "
            f"(data.clean_names: {list(clean_names)}), so there is nothing to tell apart. Add a folder of clean "
            "images (named as one of data.clean_names) or folders of other defect types, or give the images masks "
            "(labels then come from the masks)."
        )
    by_folder = has_clean or (no_masks and bool(types))  # folders give the labels (no clean one: all defective)
    entries = []
    for image, mask in scan.images.items():
        image_id = str(PurePosixPath(*image.relative_to(source).parts))
        fs = folders[image]
        if by_folder and not fs:
            raise UserError(
                f"{image}: not in a class folder, while other images are (layouts mixed). Move it into a class folder "
                f"(clean: one of data.clean_names {list(clean_names)}; defective: a folder named after the defect)."
            )
        if by_folder:
            clean = any(is_clean(f, clean_names) for f in fs)
            label, cls = (0, None) if clean else (1, fs[-1])
        elif mask is None:
            raise UserError(
                f"{image}: no mask and no class folder, so its label is unknown. No folder in {source} is named "
                f"as clean (data.clean_names: {list(clean_names)}), so labels come from masks: add its mask (all "
                "zero if clean), or sort the images into clean and defect folders (or into one folder per defect "
                "type, if every image is defective)."
            )
        else:
            label, cls = None, DEFECT
        reader = None if mask is None else _mask_reader(mask, cls or DEFECT, clean=label == 0)
        entries.append(Entry(image_id, image, label, (cls,) if label == 1 else (), reader))
    names = sorted({c for e in entries for c in e.classes}, key=str.lower) if by_folder else [DEFECT]
    return Layout(name, entries, names, scan.ignored)


def _mask_reader(path: Path, cls: str, clean: bool) -> Callable[[int, int], dict[str, np.ndarray]]:
    def read(height: int, width: int) -> dict[str, np.ndarray]:
        mask = read_mask(path, height, width)
        if clean and mask.any():
            raise BadImage(
                f"a non-empty mask ({path}, {int(mask.sum())} defect pixels) for an image in a clean folder; clear "
                "the mask, or move the image into a defect folder"
            )
        return {} if clean else {cls: mask}

    return read
