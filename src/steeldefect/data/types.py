"""Defect types (train.target classes): their names in ClassId order, as data/prepared/classes.csv lists them, the
per-type target of each image, and the names of the per-type probability columns (`p_<name>`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from steeldefect.errors import UserError

GIVEN_DEFECT = "classes_given_defect"  # the model output of the types' probabilities if the image is defective
PREFIX = "p_"  # the probability column of type NAME is p_NAME (predictions, baseline, `steeldefect predict`)


def read_types(path: Path) -> tuple[list[str], list[str]]:
    """(ClassIds, names) of data/prepared/classes.csv (columns ClassId, name), in ClassId order: the order of the
    model's `classes` output."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except OSError as e:
        raise UserError(f"{path}: cannot read the defect types ({e.strerror or e}); run the prepare stage.") from e
    if list(table.columns[:2]) != ["ClassId", "name"]:
        raise UserError(f"{path}: expected the columns ClassId, name; run the prepare stage again.")
    table = table.sort_values("ClassId", key=lambda s: s.astype(int))
    return list(table.ClassId), list(table["name"])


def columns(names: list[str]) -> list[str]:
    return [PREFIX + n for n in names]


def multi_hot(classes: pd.Series, class_ids: list[str]) -> np.ndarray:
    """(n, K) float32: 1 where image i carries type k. `classes` is the images table's column of space-separated
    ClassIds ("" for a clean image)."""
    index = {c: k for k, c in enumerate(class_ids)}
    out = np.zeros((len(classes), len(class_ids)), np.float32)
    for i, cs in enumerate(classes.fillna("").astype(str)):
        for c in cs.split():
            out[i, index[c]] = 1
    return out
