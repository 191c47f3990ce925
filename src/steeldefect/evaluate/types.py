"""Metrics per defect type (train.target classes), from scikit-learn.

Each type is scored one-vs-rest on every image ("carries type k" against the rest: other types and clean images),
so multi-label images count for each of their types. A type is predicted when its probability (column p_<name>)
is at or above its threshold. `evaluate.class_threshold` gives the thresholds:
- a number: the same threshold for every type (policy "fixed");
- a map {type name: number}: it must name every type, and only types (policy "map");
- "auto": per type, the threshold of best F1 on the validation split, among that type's validation probabilities;
  on a tie, the highest threshold (fewest false alarms). A type with no validation positives has no F1 to
  maximise: it gets 0.5, and its policy says so (policy "auto"; the rule and each type's F1 are in the metrics).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from steeldefect.data.types import columns, multi_hot
from steeldefect.errors import UserError

AUTO_RULE = "per type, the threshold of best F1 on the validation split (predicted at or above it); ties: the highest"
NO_POSITIVES = "no validation positives: 0.5"
Types = tuple[list[str], list[str]]  # (ClassIds, names) in ClassId order, as steeldefect.data.types.read_types


def truth_and_probabilities(df: pd.DataFrame, types: Types) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) truth (1 where image i carries type k, from the `classes` column) and (n, K) probabilities (p_<name>)."""
    class_ids, names = types
    missing = [c for c in columns(names) if c not in df]
    if missing:
        raise UserError(
            f"train.target is classes, but the predictions have no column {missing[0]} (one p_<name> per type of "
            "data/prepared/classes.csv): run the stages that write them (predict, baseline) again."
        )
    return multi_hot(df.classes, class_ids).astype(int), df[columns(names)].to_numpy(float)


def best_f1_threshold(y: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the best F1 among the thresholds `prob` holds; ties: the highest. `y` needs a positive."""
    candidates = np.unique(prob)[::-1]  # high to low: argmax takes the first best, the highest threshold
    predicted = prob[None, :] >= candidates[:, None]
    tp = (predicted & (y == 1)).sum(1)
    f1 = 2 * tp / (predicted.sum(1) + (y == 1).sum())  # 2 TP / (2 TP + FP + FN): equal F1s compare equal
    best = int(np.argmax(f1))
    return float(candidates[best]), float(f1[best])


def choose_thresholds(setting: object, names: list[str], y_val: np.ndarray, p_val: np.ndarray) -> tuple[dict, dict]:
    """({type name: threshold}, the policy as the metrics record it) for `evaluate.class_threshold` (module doc)."""
    if isinstance(setting, dict):
        unknown, missing = sorted(set(setting) - set(names)), [n for n in names if n not in setting]
        if unknown or missing:
            problem = (
                f"evaluate.class_threshold.{unknown[0]} names no defect type"
                if unknown
                else f"evaluate.class_threshold gives no threshold for type {missing[0]}"
            )
            raise UserError(
                f"params.yaml: {problem}. A map gives a threshold to every type of data/prepared/classes.csv, and "
                f"only to those: {', '.join(names)}. Or give one number for all types, or auto."
            )
        return {n: float(setting[n]) for n in names}, {"policy": "map"}
    if setting != "auto":
        return dict.fromkeys(names, float(setting)), {"policy": "fixed"}
    thresholds, per_type = {}, {}
    for k, name in enumerate(names):
        positives = int(y_val[:, k].sum())
        if positives:
            thresholds[name], f1 = best_f1_threshold(y_val[:, k], p_val[:, k])
            per_type[name] = {"policy": "best_f1", "val_f1": f1, "val_positives": positives}
        else:
            thresholds[name] = 0.5
            per_type[name] = {"policy": NO_POSITIVES, "val_f1": None, "val_positives": 0}
    return thresholds, {"policy": "auto", "rule": AUTO_RULE, "types": per_type}


def _defined(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def type_scores(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """One type's metrics: None where undefined (ROC AUC and AP with one class only; precision with nothing
    predicted, recall with no positive, F1 with neither), never a made-up value."""
    predicted, both = (prob >= threshold).astype(int), len(set(y)) == 2
    return {
        "roc_auc": float(skm.roc_auc_score(y, prob)) if both else None,
        "average_precision": float(skm.average_precision_score(y, prob)) if both else None,
        "precision": _defined(skm.precision_score(y, predicted, zero_division=np.nan)),
        "recall": _defined(skm.recall_score(y, predicted, zero_division=np.nan)),
        "f1": _defined(skm.f1_score(y, predicted, zero_division=np.nan)),
        "threshold": float(threshold),
        "support": int(y.sum()),
    }


def single_type(y: np.ndarray) -> np.ndarray:
    """The images carrying exactly one type: where the top type is right or wrong."""
    return y.sum(1) == 1


def type_metrics(setting: object, types: Types, val: pd.DataFrame, test: pd.DataFrame) -> dict:
    """classes.<name> (type_scores on test at the threshold chosen on val), classes_macro (mean ROC AUC and AP over
    the types where defined, and how many), type_accuracy (the share of test images with exactly one type whose top
    type, the highest p_<name>, is it) with its number of images, and class_threshold_choice."""
    names = types[1]
    thresholds, choice = choose_thresholds(setting, names, *truth_and_probabilities(val, types))
    y, prob = truth_and_probabilities(test, types)
    classes = {n: type_scores(y[:, k], prob[:, k], thresholds[n]) for k, n in enumerate(names)}
    counted = [m for m in classes.values() if m["roc_auc"] is not None]
    mean = lambda key: float(np.mean([m[key] for m in counted])) if counted else None  # noqa: E731
    one = single_type(y)
    return {
        "classes": classes,
        "classes_macro": {
            "roc_auc": mean("roc_auc"),
            "average_precision": mean("average_precision"),
            "types": len(names),
            "types_counted": len(counted),
        },
        "type_accuracy": float(skm.accuracy_score(y[one].argmax(1), prob[one].argmax(1))) if one.any() else None,
        "type_accuracy_images": int(one.sum()),
        "class_threshold_choice": choice,
    }


def summary(m: dict) -> str:
    """One line: type accuracy and macro ROC AUC, for the stages' output."""
    show = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    macro = m["classes_macro"]
    return (
        f"type accuracy {show(m['type_accuracy'])} on {m['type_accuracy_images']} single-type test images; "
        f"macro ROC AUC {show(macro['roc_auc'])} over {macro['types_counted']} of {macro['types']} types"
    )
