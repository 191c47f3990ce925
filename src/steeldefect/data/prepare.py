"""Prepare: detect the data folder's layout (Severstal CSV, class folders, image + mask pairs, MVTec AD, COCO), read
it as a Layout (one entry per image: its label or classes and how to read its masks), then assemble: check every
image and mask, and give one row per image, one per (image, class) mask, and the data metrics."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from steeldefect.data.coco import annotation_files, read_coco
from steeldefect.data.dataset import IMAGE_COLUMNS, class_label
from steeldefect.data.layouts import IMAGE_SUFFIXES, BadImage, Entry, Layout, read_tree
from steeldefect.data.severstal import MasksCsv, read_labels, read_masks, rle_decode, rle_encode
from steeldefect.errors import UserError
from steeldefect.params import DataParams

log = logging.getLogger(__name__)

NO_CLEAN_NOTE = (
    "The set has no clean images (every image is defective), so the defect/clean metrics (accuracy, ROC AUC, false "
    "positives and negatives) will not apply; train with train.target: classes to tell the defect types apart."
)


def _check_image(path: Path) -> tuple[int, int, str]:
    """(height, width, md5) of an image file that decodes; raises OSError/ValueError if it does not."""
    data = path.read_bytes()
    with Image.open(path) as im:
        im.load()
        width, height = im.size
    return height, width, hashlib.md5(data).hexdigest()


def prepare(source: Path, on_bad_image: str, data: DataParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Read and check a data folder in any layout (`data.format`, detected when "auto"): detect, read (a Layout),
    assemble.

    Returns (images, masks, excluded, data metrics): one row per image (IMAGE_COLUMNS), one row per non-empty
    (image, defect class) mask (ImageId, ClassId, EncodedPixels, area), the images left out (ImageId, problem) and
    the data metrics, which name the layout and the classes (`class_names`: ClassId -> name). Every bad image is
    found before reporting: with on_bad_image "fail" they are all listed in one UserError, with "skip" they are
    left out (with their masks) and listed in `excluded`.
    """
    fmt = detect(source, data.format)
    if fmt == "severstal":
        layout = read_severstal(source)
    elif fmt == "coco":
        layout = read_coco(source)
    else:
        layout = read_tree(source, data.clean_names, fmt)
    if layout.ignored:
        more = f" and {len(layout.ignored) - 5} more" if len(layout.ignored) > 5 else ""
        log.info("ignored, neither images nor masks: %s%s", ", ".join(layout.ignored[:5]), more)
    ids = dict(zip(layout.class_names, layout.class_ids or range(1, len(layout.class_names) + 1), strict=True))
    images, masks, excluded = _assemble(layout, ids, on_bad_image, layout.image_dir or source)
    names = {str(i): name for name, i in ids.items()}
    derived = int(images.ImageId.isin(layout.derived_clean).sum())
    metrics = {
        "layout": layout.name,
        "class_names": names,
        **data_metrics(images, masks, excluded, derived, names),
        "ignored_files": len(layout.ignored),
        "duplicate_mask_rows_dropped": layout.duplicates_dropped,
        "has_clean_images": bool((images.label == 0).any()),
    }
    if not metrics["has_clean_images"]:
        metrics["note"] = NO_CLEAN_NOTE
    return images, masks, excluded, metrics


def detect(source: Path, fmt: str = "auto") -> str:
    """The layout of `source`: `fmt` itself unless "auto"; then severstal or coco where their files are, else
    "tree" (class folders or image + mask pairs, told apart by `layouts.read_tree`)."""
    if not source.is_dir():
        raise UserError(f"data.source {source}: not a folder. Set data.source to 'synthetic' or a folder of images.")
    if fmt != "auto":
        return fmt
    found = []
    if (source / "train.csv").exists() or (source / "train_images").exists():
        found.append(("severstal", "train.csv or train_images/"))
        others = [d for d in source.iterdir() if d.is_dir() and d.name not in ("train_images", "test_images")]
        stray = next((f for d in others for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES), None)
        if stray is not None:
            raise UserError(
                f"{source}: layouts mixed: a Severstal train.csv / train_images/ and images elsewhere ({stray}). "
                "Keep one layout per folder, or set data.format: severstal to read train_images/ only."
            )
    coco = annotation_files(source)
    if coco:
        found.append(("coco", ", ".join(str(f.relative_to(source)) for f in coco[:3])))
    if len(found) > 1:
        raise UserError(
            f"{source}: more than one layout fits: "
            + "; ".join(f"{name} ({what})" for name, what in found)
            + ". Set data.format to the one you mean (docs/data.md)."
        )
    return found[0][0] if found else "auto"


def _assemble(
    layout: Layout, ids: dict[str, int], on_bad_image: str, where: Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(images, masks, excluded) of a layout's entries: each image checked, each mask read at its image's size
    (`ids`: class name -> ClassId; bad images are reported in `where`)."""
    rows, mask_rows, problems = [], [], []
    for e in layout.entries:
        try:
            height, width, md5 = _check_image(e.path)
            found = {k: m for k, m in (e.masks(height, width) if e.masks else {}).items() if m.any()}
        except FileNotFoundError:
            problems.append((e.image_id, "file not found" + ("" if e.path == where / e.image_id else f" ({e.path})")))
            continue
        except BadImage as err:
            problems.append((e.image_id, str(err)))
            continue
        except (OSError, ValueError) as err:
            problems.append((e.image_id, f"does not decode as an image ({err})"))
            continue
        label = e.label if e.label is not None else int(bool(found))
        classes = sorted({ids[c] for c in (*e.classes, *found)})
        mask_rows += [
            (e.image_id, ids[k], rle_encode(found[k]), int(found[k].sum())) for k in sorted(found, key=ids.get)
        ]
        rows.append((e.image_id, str(e.path), label, " ".join(map(str, classes)), len(found), height, width, md5))
    _report(
        problems,
        where,
        on_bad_image,
        "listed image(s) are missing or unreadable, or have a bad mask",
        "Restore, fix or remove the files (and any rows listing them)",
    )
    return (
        pd.DataFrame(rows, columns=IMAGE_COLUMNS),
        pd.DataFrame(mask_rows, columns=["ImageId", "ClassId", "EncodedPixels", "area"]),
        pd.DataFrame(problems, columns=["ImageId", "problem"]),
    )


def _report(problems: list[tuple[str, str]], where: Path, on_bad_image: str, what: str, fix: str) -> None:
    if problems and on_bad_image == "fail":
        listing = "; ".join(f"{i}: {why}" for i, why in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(f"{where}: {len(problems)} {what}: {listing}{more}. {fix}, or set prepare.on_bad_image: skip.")


def read_severstal(source: Path) -> Layout:
    """The Severstal layout: train_images/ + train.csv (+ defect_and_no_defect.csv, which gives the labels when
    present; else an image is defective when it has a mask). Class names are the ClassIds ("1".."4")."""
    masks_csv, labels_csv = source / "train.csv", source / "defect_and_no_defect.csv"
    image_dir = source / "train_images"
    for p in (masks_csv, image_dir):
        if not p.exists():
            raise UserError(
                f"{p}: not found. A Severstal-layout data.source holds train_images/ and train.csv (and optionally "
                "defect_and_no_defect.csv); for other layouts see docs/data.md."
            )
    parsed = read_masks(masks_csv)
    if parsed.duplicates_dropped:
        log.info(
            "%s: dropped %d repeated mask row(s) (same ImageId, ClassId and EncodedPixels as an earlier row)",
            masks_csv,
            parsed.duplicates_dropped,
        )
    if labels_csv.exists():
        labels, derived = _checked_labels(parsed.masks, masks_csv, labels_csv), set()
    else:
        labels, derived = _labels_from_masks(parsed, image_dir)
    by_image = {image_id: rows for image_id, rows in parsed.masks.groupby("ImageId")}
    entries = [
        Entry(i, image_dir / i, int(label), masks=_rle_reader(by_image[i], masks_csv) if i in by_image else None)
        for i, label in zip(labels.ImageId, labels.label, strict=True)
    ]
    class_ids = sorted(int(c) for c in parsed.masks.ClassId.unique())
    return Layout(
        "severstal",
        entries,
        class_names=[str(c) for c in class_ids],
        ignored=[],
        class_ids=class_ids,
        image_dir=image_dir,
        derived_clean=derived,
        duplicates_dropped=parsed.duplicates_dropped,
    )


def _rle_reader(rows: pd.DataFrame, masks_csv: Path) -> Callable[[int, int], dict[str, np.ndarray]]:
    """An image's masks from its train.csv rows, decoded (and so validated) at the image's own size."""

    def read(height: int, width: int) -> dict[str, np.ndarray]:
        return {
            str(r.ClassId): rle_decode(
                r.EncodedPixels, height, width, f"{masks_csv} row {r.row} (ImageId {r.ImageId}, ClassId {r.ClassId})"
            )
            for r in rows.itertuples(index=False)
        }

    return read


def _checked_labels(masks: pd.DataFrame, masks_csv: Path, labels_csv: Path) -> pd.DataFrame:
    """The labels file (authoritative), checked against the masks: no mask without a label, no clean image
    with a mask."""
    labels = read_labels(labels_csv)
    stray = sorted(set(masks.ImageId) - set(labels.ImageId))
    if stray:
        raise UserError(
            f"{masks_csv}: ImageId {stray[0]} has a mask but is not in {labels_csv} "
            f"({len(stray)} such images); add it to the labels file or remove its masks."
        )
    clean_with_mask = sorted(set(masks.ImageId) & set(labels.ImageId[labels.label == 0]))
    if clean_with_mask:
        raise UserError(
            f"{labels_csv}: ImageId {clean_with_mask[0]} is labelled 0 (clean) but has a mask in "
            f"{masks_csv} ({len(clean_with_mask)} such images); fix the label or the mask."
        )
    return labels


def _labels_from_masks(parsed: MasksCsv, image_dir: Path) -> tuple[pd.DataFrame, set[str]]:
    """Without a labels file: defective = has a mask; every other image listed or on disk is clean. Also
    returns the images that are clean only because train.csv does not mention them."""
    on_disk = {p.name for p in image_dir.glob("*.jpg")}
    derived = on_disk - set(parsed.images)
    ids = sorted(set(parsed.images) | on_disk)
    defective = set(parsed.masks.ImageId)
    return pd.DataFrame({"ImageId": ids, "label": [int(i in defective) for i in ids]}), derived


def data_metrics(
    images: pd.DataFrame, masks: pd.DataFrame, excluded: pd.DataFrame, derived_clean: int, names: dict[str, str]
) -> dict:
    """What the notebook printed about the data, as numbers DVC can diff; classes by name (`names`: ClassId ->
    name)."""
    tables = exploration_tables(images, masks, names)
    sizes = tables["image_sizes"].sort_values("images", ascending=False)
    return {
        "images": len(images),
        "defective": int(images.label.sum()),
        "clean": int((images.label == 0).sum()),
        "masks": len(masks),
        "images_per_class": {names[str(k)]: int(v) for k, v in _per_class(images).items()},
        "images_by_number_of_masks": dict(
            zip(tables["masks_per_image"].masks.astype(str), tables["masks_per_image"].images.astype(int).tolist())
        ),
        "images_with_2plus_classes": int((images.n_masks >= 2).sum()),
        "defect_area_share_mean_per_class": dict(
            zip(tables["defect_area"]["class"], tables["defect_area"].mean_area_share.tolist())
        ),
        "image_sizes": {
            "distinct": len(sizes),
            "most_common": f"{sizes.width.iloc[0]}x{sizes.height.iloc[0]}" if len(sizes) else None,
            "height_min": int(images.height.min()) if len(images) else None,
            "height_max": int(images.height.max()) if len(images) else None,
            "width_min": int(images.width.min()) if len(images) else None,
            "width_max": int(images.width.max()) if len(images) else None,
        },
        "defective_without_mask": int(((images.label == 1) & (images.n_masks == 0)).sum()),
        "clean_derived_from_missing_csv_rows": derived_clean,
        "excluded_bad_images": len(excluded),
    }


def _per_class(images: pd.DataFrame) -> pd.Series:
    """Images per defect ClassId (from the `classes` column: masks, folders or COCO categories)."""
    return images.classes.astype(str).str.split().explode().dropna().astype(int).value_counts().sort_index()


def exploration_tables(images: pd.DataFrame, masks: pd.DataFrame, names: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Plot data for the data exploration: masks per image, defect area per class, image sizes."""
    pixels = images.set_index("ImageId").loc[masks.ImageId, ["height", "width"]].prod(axis=1).to_numpy()
    area = masks.assign(area_share=masks.area / pixels).groupby("ClassId")
    return {
        "masks_per_image": images.n_masks.value_counts().sort_index().rename_axis("masks").reset_index(name="images"),
        "defect_area": pd.DataFrame(
            {
                "class": [class_label(k, names) for k in area.groups],
                "mean_area_share": area.area_share.mean().round(5).to_numpy(),
            }
        ),
        "image_sizes": images.groupby(["width", "height"]).size().reset_index(name="images"),
    }
