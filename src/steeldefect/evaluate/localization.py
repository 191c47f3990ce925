"""Localization metrics of a mask model's test maps: Dice and IoU of the thresholded map against the true
target (`masks.target_map` of the image's union mask: the same target as in training), pointing accuracy, and
Dice across map thresholds. Computed on the test images that have masks; clean test images give the predicted
defect area where there is none. `mean_dice_pairs` is Kaggle Severstal's metric: the mean Dice over (image, map)
pairs of every test image whose target is known, an empty prediction on an empty target scoring 1.

The predicted defect is the map's cells at or above the map threshold, without its connected regions (8-connected)
smaller than `min_area` pixels of the original image (`evaluate.min_area`, the rule `steeldefect predict` applies
to its defect list).

A model with types also has one map per type: `type_localization` scores each against the masks of that ClassId,
the same way (Dice and IoU over the test images carrying the type, `mean_dice_pairs` over every test image whose
masks are known, an image without the type an empty target), and gives Severstal's mean over all (image, type)
pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from steeldefect.data.masks import image_mask, resize_nearest, target_map, type_masks
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


def predicted(
    defect_map: np.ndarray, threshold: float, min_area: float = 0, cell_pixels: np.ndarray | None = None
) -> np.ndarray:
    """The map's cells >= `threshold`, without the 8-connected regions whose area (the sum of `cell_pixels`, the
    original image's pixels of each cell; default 1 each) is below `min_area`."""
    cells = np.asarray(defect_map) >= threshold
    if min_area <= 0 or not cells.any():
        return cells
    labels, _ = ndimage.label(cells, structure=np.ones((3, 3)))
    weights = None if cell_pixels is None else np.asarray(cell_pixels, float).ravel()
    return cells & (np.bincount(labels.ravel(), weights) >= min_area)[labels]


def pixels_per_cell(shape: Sequence[int], height: int, width: int) -> np.ndarray:
    """(h, w) counts of the original `height` x `width` image's pixels each cell of an (h, w) map covers, in the
    nearest resize of the map to the image (`masks.resize_nearest`, as `steeldefect predict` draws and measures
    its regions), so a region's area here is its area in the defect list."""
    rows = np.bincount(resize_nearest(np.arange(shape[0])[:, None], (height, 1))[:, 0], minlength=shape[0])
    cols = np.bincount(resize_nearest(np.arange(shape[1])[None, :], (1, width))[0], minlength=shape[1])
    return np.outer(rows, cols)


def cell_areas(test: pd.DataFrame, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{ImageId: `pixels_per_cell` of its map} for the images of `test`."""
    return {r.ImageId: pixels_per_cell(maps[r.ImageId].shape, r.height, r.width) for r in test.itertuples()}


def per_image(
    maps: dict[str, np.ndarray],
    true: dict[str, np.ndarray],
    threshold: float,
    min_area: float = 0,
    areas: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per image with a target: ImageId, dice, iou, hit (map maximum inside the true target)."""
    rows = []
    for image_id, target in true.items():
        cells = predicted(maps[image_id], threshold, min_area, (areas or {}).get(image_id))
        dice, iou = dice_iou(cells, target)
        rows.append({"ImageId": image_id, "dice": dice, "iou": iou, "hit": pointing_hit(maps[image_id], target)})
    return pd.DataFrame(rows, columns=["ImageId", "dice", "iou", "hit"])


def dice_per_class(scores: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """Mean Dice of the images having each defect class (an image with two classes counts for both)."""
    classes = test.set_index("ImageId").classes.astype(str).str.split()
    by_image = scores.assign(classes=scores.ImageId.map(classes)).explode("classes").dropna(subset=["classes"])
    return {str(k): float(v) for k, v in by_image.groupby("classes").dice.mean().items()}


def mean_dice_pairs(
    maps: dict[str, np.ndarray],
    true: dict[str, np.ndarray],
    threshold: float,
    min_area: float,
    areas: dict[str, np.ndarray],
) -> float | None:
    """Mean Dice over the (image, map) pairs of `true` (targets, empty ones included), as Kaggle Severstal scored
    it: an empty prediction on an empty target scores 1 (`dice_iou`); None without pairs."""
    scores = [dice_iou(predicted(maps[i], threshold, min_area, areas[i]), t)[0] for i, t in true.items()]
    return float(np.mean(scores)) if scores else None


def dice_sweep(
    maps: dict[str, np.ndarray],
    true: dict[str, np.ndarray],
    thresholds: Sequence[float] = SWEEP,
    min_area: float = 0,
    areas: dict[str, np.ndarray] | None = None,
):
    """Mean Dice and IoU over the images with a target at each map threshold (a DataFrame of DICE_COLUMNS)."""
    rows = []
    for t in thresholds:
        scores = per_image(maps, true, t, min_area, areas)
        rows.append({"map_threshold": float(t), "dice": scores.dice.mean(), "iou": scores.iou.mean()})
    return pd.DataFrame(rows, columns=DICE_COLUMNS).dropna()


def localization_metrics(
    test: pd.DataFrame,
    masks: pd.DataFrame,
    maps: dict[str, np.ndarray],
    stride: int,
    threshold: float,
    min_area: float = 0,
) -> tuple[dict, pd.DataFrame]:
    """(metrics, the Dice-across-thresholds table). `test` holds ImageId, label, classes, height, width for
    every test image; `maps` the test maps by ImageId. Dice, IoU and pointing accuracy are means over the test
    images with a mask that still covers a map cell at the input size (None when there is none; the others are
    counted in `masks_lost_at_input_size`); `clean_area_share` is the mean share of predicted defect cells on
    clean test images (defect area predicted where there is none). `mean_dice_pairs` counts the clean test images
    too (their target is empty), not the defective ones whose target is unknown (no mask) or lost at the input
    size; `empty_pairs_share` is the share of its pairs with an empty target: what predicting nothing scores."""
    missing = sorted(set(test.ImageId) - set(maps))
    if missing:
        raise ValueError(f"no defect map for {len(missing)} test images, e.g. {missing[0]}")
    with_mask, true, pairs = pair_targets(test, masks, maps, stride)
    areas = cell_areas(test, maps)
    scores = per_image(maps, true, threshold, min_area, areas)
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
        "clean_area_share": mean([float(np.mean(predicted(maps[i], threshold, min_area, areas[i]))) for i in clean]),
        "min_area": min_area,
        "mean_dice_pairs": mean_dice_pairs(maps, pairs, threshold, min_area, areas),
        "pairs": len(pairs),
        "empty_pairs_share": mean([not t.any() for t in pairs.values()]),
    }
    return metrics, dice_sweep(maps, true, min_area=min_area, areas=areas)


def pair_targets(
    test: pd.DataFrame, masks: pd.DataFrame, maps: dict[str, np.ndarray], stride: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(targets of the images with a mask, those of them that still cover a map cell, the (image, map) pairs of
    `mean_dice_pairs`: those and the clean images, whose target is empty) of the any-defect map."""
    with_mask = targets(test, masks, maps, stride)
    true = {image_id: t for image_id, t in with_mask.items() if t.any()}  # nothing to find or point at otherwise
    clean = test.ImageId[test.label == 0]
    return with_mask, true, {**{i: np.zeros_like(maps[i], bool) for i in clean if i not in with_mask}, **true}


def type_targets(
    test: pd.DataFrame,
    masks: pd.DataFrame,
    type_maps: dict[str, np.ndarray],
    types: tuple[list[str], list[str]],
    stride: int,
) -> dict[str, dict[str, np.ndarray]]:
    """{type name: {ImageId: target of that type on the map's grid}} over the images of the any-defect map's pairs
    (`pair_targets`: clean, or with a mask that covers a map cell); a target is empty where the image has no
    defect of the type. `types`: (ClassIds, names) in the maps' channel order."""
    class_ids, names = types
    out: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    for r in test[(test.label == 0) | test.ImageId.isin(set(masks.ImageId))].itertuples():
        h, w, _ = type_maps[r.ImageId].shape
        mask = type_masks(masks, r.ImageId, r.height, r.width, (h * stride, w * stride), class_ids)
        if r.label == 1 and not target_map(mask[..., 0], stride).any():
            continue  # its mask vanished at the input size, as `localization_metrics` leaves it out
        for k, name in enumerate(names):
            out[name][r.ImageId] = target_map(mask[..., 1 + k], stride)
    return out


def channel(type_maps: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """{ImageId: map of type k} from the (h, w, K) per-type maps."""
    return {i: m[..., k] for i, m in type_maps.items()}


def type_localization(
    test: pd.DataFrame,
    masks: pd.DataFrame,
    type_maps: dict[str, np.ndarray],
    types: tuple[list[str], list[str]],
    stride: int,
    thresholds: dict[str, float],
    min_areas: dict[str, float],
) -> dict:
    """Localization per defect type of the (h, w, K) `type_maps` by ImageId, `types` (ClassIds, names) in their
    channel order: `classes.<name>`: dice and iou (means over the test images whose mask of the type still covers a
    map cell; None without any), images (their number), mean_dice_pairs (over `type_targets`), map_threshold and
    min_area; `mean_dice_pairs_types`: the mean over all (image, type) pairs (Kaggle Severstal's metric);
    `type_pairs`: their number. `thresholds`, `min_areas`: {type name: value}."""
    areas = cell_areas(test, type_maps)
    mean = lambda values: float(np.mean(values)) if len(values) else None  # noqa: E731
    classes, every = {}, []
    for k, (name, true) in enumerate(type_targets(test, masks, type_maps, types, stride).items()):
        maps, limit = channel(type_maps, k), min_areas[name]
        pairs = [dice_iou(predicted(maps[i], thresholds[name], limit, areas[i]), t) for i, t in true.items()]
        found = [score for score, t in zip(pairs, true.values()) if t.any()]
        every += [d for d, _ in pairs]
        classes[name] = {
            "dice": mean([d for d, _ in found]),
            "iou": mean([i for _, i in found]),
            "images": len(found),
            "mean_dice_pairs": mean([d for d, _ in pairs]),
            "map_threshold": thresholds[name],
            "min_area": limit,
        }
    return {"classes": classes, "mean_dice_pairs_types": mean(every), "type_pairs": len(every)}
