"""The map threshold and the minimum defect area the localization metrics and `steeldefect predict` use:
`evaluate.map_threshold` and `evaluate.min_area`, each one number for every map, a map from type name to number
(a model with per-type maps), or `auto`: chosen on the validation split, map by map (each type's map of a model
with types; else the any-defect map), by the rule AUTO_RULE. With types the any-defect map takes the smallest of
the types' values: a cell or region counts as defect there when it would for some type."""

from __future__ import annotations

import numpy as np
import pandas as pd

from steeldefect.errors import UserError
from steeldefect.evaluate.localization import (
    SWEEP,
    cell_areas,
    channel,
    dice_sweep,
    mean_dice_pairs,
    pair_targets,
    type_targets,
)
from steeldefect.params import EvaluateParams

AREA_CELLS = (0, 1, 2, 4, 8, 16, 32)  # min_area auto: the candidates, in map cells of the median image
AUTO_RULE = (
    "per map on the validation split: map_threshold, the threshold of the Dice plot's grid (0.05 to 0.95) with "
    "the highest mean Dice over the images whose target covers a map cell (lowest on ties); then min_area, of "
    f"{', '.join(map(str, AREA_CELLS))} map cells of the median image, the one with the highest mean Dice over "
    "the (image, map) pairs, clean images included (smallest on ties)"
)
NO_TARGETS = "no validation image with this map's defect: 0.5 and 0 kept"


def by_type(setting: float | dict[str, float], key: str, names: list[str] | None) -> tuple[float, dict | None]:
    """(the any-defect map's value, {type name: value}, None without types) of `evaluate.<key>` (map_threshold or
    min_area) when it is not auto: one number for every map, or a map from type name to number naming every type of
    `names` and only those, whose smallest value the any-defect map uses."""
    if not isinstance(setting, dict):
        return float(setting), dict.fromkeys(names, float(setting)) if names else None
    unknown = sorted(set(setting) - set(names or []))
    missing = [n for n in names or [] if n not in setting]
    if not names or unknown or missing:
        problem = (
            " is a map by type name, but the model has no map per type (train.target: classes with masks)"
            if not names
            else f".{unknown[0]} names no defect type"
            if unknown
            else f" gives no value for type {missing[0]}"
        )
        raise UserError(
            f"params.yaml: evaluate.{key}{problem}. A map gives a value to every type of data/prepared/classes.csv, "
            f"and only to those{': ' + ', '.join(names) if names else ''}; or give one number for every map."
        )
    return min(setting.values()), {n: float(setting[n]) for n in names}


def best_threshold(maps: dict, true: dict) -> tuple[float, float] | None:
    """(threshold of SWEEP, mean Dice) with the highest mean Dice over `true`'s images (the first on ties); None
    without images."""
    sweep = dice_sweep(maps, true, SWEEP)
    if sweep.empty:
        return None
    best = int(np.argmax(sweep.dice.to_numpy()))
    return float(sweep.map_threshold.iloc[best]), float(sweep.dice.iloc[best])


def best_min_area(maps: dict, pairs: dict, threshold: float, areas: dict) -> tuple[float, float]:
    """(min area of AREA_CELLS x the median cell's pixels, mean Dice over `pairs`) with the highest mean Dice (the
    smallest on ties)."""
    cell = float(np.median([a.mean() for a in areas.values()]))
    scores = [(mean_dice_pairs(maps, pairs, threshold, k * cell, areas), k * cell) for k in AREA_CELLS]
    best = max(range(len(scores)), key=lambda i: (scores[i][0], -i))
    return round(scores[best][1], 1), scores[best][0]


def choose_maps(
    p: EvaluateParams,
    val: pd.DataFrame,
    masks: pd.DataFrame,
    maps: dict | None,
    type_maps: dict | None,
    types: tuple[list[str], list[str]] | None,
    stride: int,
) -> tuple[tuple[float, dict | None], tuple[float, dict | None], dict]:
    """((any-defect map threshold, {type name: threshold} or None), (the same for min_area), the choice as the
    metrics record it) for the test maps. `val`, `maps`, `type_maps`: the validation images and their maps, needed
    only for `auto`; `types` with `type_maps` when the model has a map per type."""
    names = types[1] if types and type_maps is not None else None
    auto = {key: getattr(p, key) == "auto" for key in ("map_threshold", "min_area")}
    given = {key: None if auto[key] else by_type(getattr(p, key), key, names) for key in auto}
    if not any(auto.values()):
        return given["map_threshold"], given["min_area"], {"policy": "given"}
    if maps is None:
        raise UserError(
            "params.yaml: evaluate.map_threshold or evaluate.min_area is auto, but there are no validation maps "
            "(data/predictions/val_maps.npz); rerun `dvc repro predict`."
        )
    areas = cell_areas(val, maps)
    if names:
        per_type = type_targets(val, masks, type_maps, types, stride)
        channels = {n: (channel(type_maps, k), per_type[n]) for k, n in enumerate(names)}
    else:
        _, _, pairs = pair_targets(val, masks, maps, stride)
        channels = {"defect": (maps, pairs)}
    chosen, record = {}, {}
    for name, (m, pairs) in channels.items():
        true = {i: t for i, t in pairs.items() if t.any()}
        fixed = {key: None if auto[key] else (given[key][1] or {}).get(name, given[key][0]) for key in auto}
        best = best_threshold(m, true) if auto["map_threshold"] else None
        if auto["map_threshold"] and best is None:
            chosen[name], record[name] = (0.5, fixed["min_area"] or 0.0), {"policy": NO_TARGETS}
            continue
        threshold = best[0] if best else fixed["map_threshold"]
        area, score = best_min_area(m, pairs, threshold, areas) if auto["min_area"] else (fixed["min_area"], None)
        chosen[name] = (threshold, area)
        record[name] = {"map_threshold": threshold, "val_dice": best[1] if best else None, "min_area": area}
        record[name] |= {"val_mean_dice_pairs": score, "val_images": len(true)}
    if names:
        thresholds = {n: chosen[n][0] for n in names}
        min_areas = {n: chosen[n][1] for n in names}
        result = (min(thresholds.values()), thresholds), (min(min_areas.values()), min_areas)
    else:
        result = (chosen["defect"][0], None), (chosen["defect"][1], None)
    return *result, {"policy": "auto", "rule": AUTO_RULE, "maps": record}
