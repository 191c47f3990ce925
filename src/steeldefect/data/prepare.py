"""Prepare: read the data folder in its layout (Severstal CSV, class folders, image + mask pairs, MVTec AD, COCO),
check every image and mask, and give one row per image, one per (image, class) mask, and the data metrics."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd
from PIL import Image

from steeldefect.data.coco import annotation_files, read_coco
from steeldefect.data.dataset import IMAGE_COLUMNS, class_label
from steeldefect.data.layouts import IMAGE_SUFFIXES, BadImage, Layout, read_tree
from steeldefect.data.severstal import MasksCsv, read_labels, read_masks, rle_decode, rle_encode
from steeldefect.errors import UserError
from steeldefect.params import DataParams

log = logging.getLogger(__name__)


def _check_image(path: Path) -> tuple[int, int, str]:
    """(height, width, md5) of an image file that decodes; raises OSError/ValueError if it does not."""
    data = path.read_bytes()
    with Image.open(path) as im:
        im.load()
        width, height = im.size
    return height, width, hashlib.md5(data).hexdigest()


def prepare(source: Path, on_bad_image: str, data: DataParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Read and check a data folder in any layout (`data.format`, detected when "auto").

    Returns (images, masks, excluded, data metrics): one row per image (IMAGE_COLUMNS), one row per non-empty
    (image, defect class) mask (ImageId, ClassId, EncodedPixels, area), the images left out (ImageId, problem) and
    the data metrics, which name the layout and the classes (`class_names`: ClassId -> name). Every bad image is
    found before reporting: with on_bad_image "fail" they are all listed in one UserError, with "skip" they are
    left out (with their masks) and listed in `excluded`.
    """
    fmt = detect(source, data.format)
    if fmt == "severstal":
        images, masks, excluded, derived = _prepare_severstal(source, on_bad_image)
        names, ignored = {str(k): str(k) for k in sorted(masks.ClassId.unique())}, []
    else:
        layout = read_coco(source) if fmt == "coco" else read_tree(source, data.clean_names, fmt)
        fmt, ignored, derived = layout.name, layout.ignored, 0
        if ignored:
            more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
            log.info("ignored, neither images nor masks: %s%s", ", ".join(ignored[:5]), more)
        names = {str(i + 1): name for i, name in enumerate(layout.class_names)}
        images, masks, excluded = _assemble(layout, on_bad_image, source)
    metrics = data_metrics(images, masks, excluded, derived, names)
    return images, masks, excluded, {"layout": fmt, "class_names": names, **metrics, "ignored_files": len(ignored)}


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


def _assemble(layout: Layout, on_bad_image: str, source: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(images, masks, excluded) of a layout's entries: each image checked, each mask read at its image's size."""
    ids = {name: i + 1 for i, name in enumerate(layout.class_names)}
    rows, mask_rows, problems = [], [], []
    for e in layout.entries:
        try:
            height, width, md5 = _check_image(e.path)
            found = {k: m for k, m in (e.masks(height, width) if e.masks else {}).items() if m.any()}
        except FileNotFoundError:
            problems.append((e.image_id, f"file not found ({e.path})"))
            continue
        except BadImage as err:
            problems.append((e.image_id, str(err)))
            continue
        except (OSError, ValueError) as err:
            problems.append((e.image_id, f"does not decode as an image ({err})"))
            continue
        label = e.label if e.label is not None else int(bool(found))
        classes = sorted({ids[c] for c in (*e.classes, *found)})
        mask_rows += [(e.image_id, ids[k], rle_encode(m), int(m.sum())) for k, m in sorted(found.items())]
        rows.append((e.image_id, str(e.path), label, " ".join(map(str, classes)), len(found), height, width, md5))
    _report(
        problems,
        source,
        on_bad_image,
        "image(s) are missing or unreadable, or have a bad mask",
        "Fix or remove the files",
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


def _prepare_severstal(source: Path, on_bad_image: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """The Severstal layout: train_images/ + train.csv (+ defect_and_no_defect.csv)."""
    masks_csv, labels_csv = source / "train.csv", source / "defect_and_no_defect.csv"
    image_dir = source / "train_images"
    for p in (masks_csv, image_dir):
        if not p.exists():
            raise UserError(
                f"{p}: not found. A Severstal-layout data.source holds train_images/ and train.csv (and optionally "
                "defect_and_no_defect.csv); for other layouts see docs/data.md."
            )
    parsed = read_masks(masks_csv)
    if labels_csv.exists():
        labels, derived = _checked_labels(parsed.masks, masks_csv, labels_csv), set()
    else:
        labels, derived = _labels_from_masks(parsed, image_dir)
    by_image = parsed.masks.groupby("ImageId").ClassId.apply(lambda s: " ".join(map(str, sorted(s))))
    images, excluded = _check_images(labels, image_dir, by_image, on_bad_image)
    masks = parsed.masks[~parsed.masks.ImageId.isin(excluded.ImageId)]
    masks = masks.assign(area=_mask_areas(masks, images, masks_csv))[["ImageId", "ClassId", "EncodedPixels", "area"]]
    return images, masks, excluded, int(images.ImageId.isin(derived).sum())


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


def _check_images(
    labels: pd.DataFrame, image_dir: Path, by_image: pd.Series, on_bad_image: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, excluded): one checked row per labelled image that decodes, and the ones that do not."""
    rows, problems = [], []
    for image_id, label in zip(labels.ImageId, labels.label, strict=True):
        path = image_dir / image_id
        try:
            height, width, md5 = _check_image(path)
        except FileNotFoundError:
            problems.append((image_id, "file not found"))
            continue
        except (OSError, ValueError) as e:
            problems.append((image_id, f"does not decode as an image ({e})"))
            continue
        classes = by_image.get(image_id, "")
        rows.append((image_id, str(path), int(label), classes, len(classes.split()), height, width, md5))
    _report(
        problems,
        image_dir,
        on_bad_image,
        "listed image(s) are missing or unreadable",
        "Restore the files, remove them from the CSV files",
    )
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS), pd.DataFrame(problems, columns=["ImageId", "problem"])


def _mask_areas(masks: pd.DataFrame, images: pd.DataFrame, masks_csv: Path) -> list[int]:
    """Pixels of every mask, decoded (and so validated) at its image's own size."""
    size = images.set_index("ImageId")[["height", "width"]]
    areas = []
    for rec in masks.itertuples(index=False):
        h, w = size.loc[rec.ImageId]
        where = f"{masks_csv} row {rec.row} (ImageId {rec.ImageId}, ClassId {rec.ClassId})"
        areas.append(int(rle_decode(rec.EncodedPixels, int(h), int(w), where).sum()))
    return areas


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
