"""Localization metrics of a mask model's test maps: Dice and IoU of the thresholded map against the true
target (`masks.target_map` of the image's union mask: the same target as in training), pointing accuracy, and
Dice across map thresholds. Computed on the test images that have masks; clean test images give the predicted
defect area where there is none."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steeldefect.data.masks import image_mask, target_map
from steeldefect.evaluate.metrics import dice_iou, pointing_hit

SWEEP = np.round(np.arange(0.05, 1.0, 0.05), 2)  # map thresholds of the Dice plot
DICE_COLUMNS = ["map_threshold", "dice", "iou"]


def targets(test: pd.DataFrame, masks: pd.DataFrame, maps: dict[str, np.ndarray], stride: int) -> dict[str, np.ndarray]:
    """{ImageId: true target on the map's grid} of the test images that have at least one mask. A target can be
    empty: a defect thinner than the downscale can vanish in the nearest resize to the input size."""
    out = {}
    for r in test[test.ImageId.isin(set(masks.ImageId))].itertuples():
        h, w = maps[r.ImageId].shape
        out[r.ImageId] = target_map(image_mask(masks, r.ImageId, r.height, r.width, (h * stride, w * stride)), stride)
    return out


def per_image(maps: dict[str, np.ndarray], true: dict[str, np.ndarray], threshold: float) -> pd.DataFrame:
    """One row per image with a target: ImageId, dice, iou, hit (map maximum inside the true target)."""
    rows = []
    for image_id, target in true.items():
        dice, iou = dice_iou(maps[image_id] >= threshold, target)
        rows.append({"ImageId": image_id, "dice": dice, "iou": iou, "hit": pointing_hit(maps[image_id], target)})
    return pd.DataFrame(rows, columns=["ImageId", "dice", "iou", "hit"])


def dice_per_class(scores: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """Mean Dice of the images having each defect class (an image with two classes counts for both)."""
    classes = test.set_index("ImageId").classes.astype(str).str.split()
    by_image = scores.assign(classes=scores.ImageId.map(classes)).explode("classes").dropna(subset=["classes"])
    return {str(k): float(v) for k, v in by_image.groupby("classes").dice.mean().items()}


def dice_sweep(maps: dict[str, np.ndarray], true: dict[str, np.ndarray], thresholds: Sequence[float] = SWEEP):
    """Mean Dice and IoU over the images with a target at each map threshold (a DataFrame of DICE_COLUMNS)."""
    rows = []
    for t in thresholds:
        scores = per_image(maps, true, t)
        rows.append({"map_threshold": float(t), "dice": scores.dice.mean(), "iou": scores.iou.mean()})
    return pd.DataFrame(rows, columns=DICE_COLUMNS).dropna()


def localization_metrics(
    test: pd.DataFrame, masks: pd.DataFrame, maps: dict[str, np.ndarray], stride: int, threshold: float
) -> tuple[dict, pd.DataFrame]:
    """(metrics, the Dice-across-thresholds table). `test` holds ImageId, label, classes, height, width for
    every test image; `maps` the test maps by ImageId. Dice, IoU and pointing accuracy are means over the test
    images with a mask that still covers a map cell at the input size (None when there is none; the others are
    counted in `masks_lost_at_input_size`); `clean_area_share` is the mean share of map cells >= `threshold` on
    clean test images (defect area predicted where there is none)."""
    missing = sorted(set(test.ImageId) - set(maps))
    if missing:
        raise ValueError(f"no defect map for {len(missing)} test images, e.g. {missing[0]}")
    with_mask = targets(test, masks, maps, stride)
    true = {image_id: t for image_id, t in with_mask.items() if t.any()}  # nothing to find or point at otherwise
    scores = per_image(maps, true, threshold)
    clean = test.ImageId[test.label == 0]
    mean = lambda values: float(np.mean(values)) if len(values) else None  # noqa: E731
    metrics = {
        "map_threshold": float(threshold),
        "map_stride": int(stride),
        "images_with_mask": len(scores),
        "masks_lost_at_input_size": len(with_mask) - len(true),
        "defective_without_mask": int(((test.label == 1) & ~test.ImageId.isin(with_mask)).sum()),
        "dice": mean(scores.dice),
        "iou": mean(scores.iou),
        "pointing_accuracy": mean(scores.hit),
        "dice_per_class": dice_per_class(scores, test),
        "clean_images": len(clean),
        "clean_area_share": mean([float(np.mean(maps[i] >= threshold)) for i in clean]),
    }
    return metrics, dice_sweep(maps, true)
