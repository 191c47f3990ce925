"""Prepare (one checked row per image) and split (seeded, stratified train / val / test)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from steeldefect.data.severstal import MasksCsv, read_labels, read_masks, rle_decode
from steeldefect.errors import UserError

IMAGE_COLUMNS = ["ImageId", "path", "label", "classes", "n_masks", "height", "width", "md5"]


def resolve_source(source: str, data_dir: Path = Path("data")) -> Path:
    """`synthetic` is data/synthetic; other relative paths are taken from data/ too; absolute stay."""
    return data_dir / source


def _check_image(path: Path) -> tuple[int, int, str]:
    """(height, width, md5) of a JPEG that decodes; raises OSError/ValueError if it does not."""
    data = path.read_bytes()
    with Image.open(path) as im:
        im.load()
        width, height = im.size
    return height, width, hashlib.md5(data).hexdigest()


def prepare(source: Path, on_bad_image: str = "fail") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Read and check a Severstal-layout folder.

    Returns (images, masks, excluded, data metrics): one row per image (IMAGE_COLUMNS), one row per non-empty
    mask (ImageId, ClassId, EncodedPixels, area), the images left out (ImageId, problem) and the data
    metrics. Every missing or undecodable image is found before reporting: with on_bad_image "fail" they are
    all listed in one UserError, with "skip" they are left out (with their masks) and listed in `excluded`.
    """
    masks_csv, labels_csv = source / "train.csv", source / "defect_and_no_defect.csv"
    image_dir = source / "train_images"
    for p in (masks_csv, image_dir):
        if not p.exists():
            raise UserError(
                f"{p}: not found. data.source must be a folder holding train_images/ and train.csv "
                "(and optionally defect_and_no_defect.csv), or 'synthetic'."
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
    derived_clean = int(images.ImageId.isin(derived).sum())
    return images, masks, excluded, data_metrics(images, masks, excluded, derived_clean)


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
    if problems and on_bad_image == "fail":
        listing = "; ".join(f"{i}: {why}" for i, why in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(
            f"{image_dir}: {len(problems)} listed image(s) are missing or unreadable: {listing}{more}. "
            "Restore the files, remove them from the CSV files, or set prepare.on_bad_image: skip."
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


def data_metrics(images: pd.DataFrame, masks: pd.DataFrame, excluded: pd.DataFrame, derived_clean: int) -> dict:
    """What the notebook printed about the data, as numbers DVC can diff."""
    tables = exploration_tables(images, masks)
    sizes = tables["image_sizes"].sort_values("images", ascending=False)
    return {
        "images": len(images),
        "defective": int(images.label.sum()),
        "clean": int((images.label == 0).sum()),
        "masks": len(masks),
        "images_per_class": {str(k): int(v) for k, v in masks.groupby("ClassId").ImageId.nunique().items()},
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


def exploration_tables(images: pd.DataFrame, masks: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Plot data for the data exploration: masks per image, defect area per class, image sizes."""
    pixels = images.set_index("ImageId").loc[masks.ImageId, ["height", "width"]].prod(axis=1).to_numpy()
    area = masks.assign(area_share=masks.area / pixels).groupby("ClassId")
    return {
        "masks_per_image": images.n_masks.value_counts().sort_index().rename_axis("masks").reset_index(name="images"),
        "defect_area": pd.DataFrame(
            {
                "class": [f"class {k}" for k in area.groups],
                "mean_area_share": area.area_share.mean().round(5).to_numpy(),
            }
        ),
        "image_sizes": images.groupby(["width", "height"]).size().reset_index(name="images"),
    }


def split(images: pd.DataFrame, test_size: float, val_size: float, seed: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """Seeded split stratified by label and, where each stratum is big enough, by defect-class combination.

    Returns ({"train", "val", "test"} -> rows of `images`, report). Strata with fewer than 3 images are
    folded into their label's stratum (named in the report)."""
    combo = images.label.astype(str) + ":" + images.classes.fillna("")
    counts = combo.value_counts()
    rare = sorted(counts[counts < 3].index)
    strata = combo.where(~combo.isin(rare), images.label.astype(str))
    report = {"stratified_by": "label and defect classes", "folded_strata": rare}
    try:
        rest, test = train_test_split(images, test_size=test_size, stratify=strata, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_size / (1 - test_size), stratify=strata[rest.index], random_state=seed
        )
    except ValueError:
        report = {"stratified_by": "label only (defect-class strata too small)", "folded_strata": []}
        try:
            rest, test = train_test_split(images, test_size=test_size, stratify=images.label, random_state=seed)
            train, val = train_test_split(
                rest, test_size=val_size / (1 - test_size), stratify=rest.label, random_state=seed
            )
        except ValueError as e:
            raise UserError(
                f"split: cannot stratify {len(images)} images ({int(images.label.sum())} defective) "
                f"into test {test_size} / val {val_size}: {e}. Use more images or other sizes."
            ) from e
    parts = {"train": train, "val": val, "test": test}
    report["sizes"] = {k: len(v) for k, v in parts.items()}
    report["defective"] = {k: int(v.label.sum()) for k, v in parts.items()}
    return {k: v.sort_values("ImageId").reset_index(drop=True) for k, v in parts.items()}, report


def load_masks(masks: pd.DataFrame, image_id: str, height: int, width: int) -> dict[int, np.ndarray]:
    """{ClassId: bool mask} for one image from the prepared masks table."""
    rows = masks[masks.ImageId == image_id]
    return {int(r.ClassId): rle_decode(r.EncodedPixels, height, width) for r in rows.itertuples(index=False)}


def pick_samples(images: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to n images for a figure: defective ones round-robin over defect-class combinations (about two
    thirds, fewer if there are not enough), then clean ones."""
    shuffled = images.sample(frac=1, random_state=seed)
    clean = shuffled[shuffled.label == 0]
    groups = [g for _, g in shuffled[shuffled.label == 1].groupby("classes", sort=True)]
    picked = [g.iloc[i] for i in range(n) for g in groups if i < len(g)][: n - min(n // 3, len(clean))]
    clean = clean.head(n - len(picked))
    return pd.concat([pd.DataFrame(picked), clean]).head(n)
