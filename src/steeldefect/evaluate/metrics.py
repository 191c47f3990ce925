"""Classification metrics (scikit-learn) and the data behind the evaluation plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from steeldefect.evaluate.types import Types, type_metrics
from steeldefect.params import EvaluateParams

SWEEP_COLUMNS = ["threshold", "false_positives", "false_negatives", "chosen_threshold"]

# a set with no clean images: the model gives no defect probability (predictions without a probability column)
NOT_APPLICABLE = {
    "applicable": False,
    "reason": (
        "the data has no clean images, so the model gives no defect probability (no probability column in the "
        "predictions): the defect / clean metrics (accuracy, false positives and negatives, ROC AUC, average "
        "precision, the threshold and vs_baseline of these) do not apply; the per-type metrics (classes, "
        "classes_macro, type_accuracy) evaluate the model"
    ),
}


def binary_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """Metrics at `threshold` (predicted defective when prob >= threshold); positive class = defect."""
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    both = len(set(y)) == 2
    return {
        "images": len(y),
        "threshold": float(threshold),
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "specificity": skm.recall_score(y, pred, pos_label=0, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "roc_auc": skm.roc_auc_score(y, prob) if both else None,
        "average_precision": skm.average_precision_score(y, prob) if both else None,
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "fp_rate": fp / max(fp + tn, 1),
        "fn_rate": fn / max(fn + tp, 1),
    }


def recall_per_class(df: pd.DataFrame, pred: np.ndarray) -> dict[str, float | None]:
    """Among images with a class-k defect (from the masks), the share predicted defective."""
    classes = df.classes.fillna("").astype(str).str.split()
    out = {}
    for k in sorted({c for cs in classes for c in cs}, key=int):
        has = classes.apply(lambda cs, k=k: k in cs).to_numpy()
        out[k] = float(pred[has].mean()) if has.any() else None
    return out


def choose_threshold(y: np.ndarray, prob: np.ndarray, target_recall: float) -> tuple[float, float, bool]:
    """The highest threshold (fewest false positives) whose defect recall on (y, prob) reaches the target.
    Returns (threshold, recall reached, target reached); when unreachable, the threshold of best recall."""
    candidates = np.unique(prob)[::-1]  # high to low: recall grows, false positives grow
    for t in candidates:
        recall = float(((prob >= t) & (y == 1)).sum() / max((y == 1).sum(), 1))
        if recall >= target_recall:
            return float(t), recall, True
    t = float(candidates[-1]) if len(candidates) else 0.5
    return t, float(((prob >= t) & (y == 1)).sum() / max((y == 1).sum(), 1)), False


def threshold_sweep(y: np.ndarray, prob: np.ndarray, chosen: float, steps: int = 101) -> pd.DataFrame:
    """False positives and false negatives against threshold; `chosen` marks the threshold in use."""
    grid = np.unique(np.append(np.linspace(0, 1, steps), chosen))
    fp = [int(((prob >= t) & (y == 0)).sum()) for t in grid]
    fn = [int(((prob < t) & (y == 1)).sum()) for t in grid]
    top = max(max(fp), max(fn), 1)
    return pd.DataFrame(dict(zip(SWEEP_COLUMNS, [grid, fp, fn, [top if t == chosen else 0 for t in grid]])))


def dice_iou(predicted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks of one shape. Both empty counts as a perfect match (1.0, 1.0)."""
    predicted, true = np.asarray(predicted, bool), np.asarray(true, bool)
    overlap, total = np.logical_and(predicted, true).sum(), predicted.sum() + true.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * overlap / total), float(overlap / (total - overlap))


def pointing_hit(defect_map: np.ndarray, true: np.ndarray) -> bool:
    """Whether the defect map's maximum (the first one, in row-major order) falls inside the true mask; both
    arrays on the same grid."""
    return bool(np.asarray(true, bool).flat[int(np.argmax(defect_map))])


def pick_threshold(p: EvaluateParams, val: pd.DataFrame) -> dict:
    """The threshold in use and why: the number from params, or "auto" chosen on the validation split."""
    if p.threshold != "auto":
        return {"threshold": float(p.threshold), "policy": "fixed"}
    t, recall, reached = choose_threshold(val.label.to_numpy(), val.probability.to_numpy(), p.target_recall)
    return {
        "threshold": t,
        "policy": "auto",
        "target_recall": p.target_recall,
        "val_recall": recall,
        "target_reached": reached,
    }


def scored_metrics(p: EvaluateParams, val: pd.DataFrame, test: pd.DataFrame, types: Types | None = None) -> dict:
    """Metrics on `test` at the thresholds chosen on `val`, as evaluate's: the defect decision where the frames hold
    a probability column (else defect_decision says why it does not apply), and with `types` (train.target
    classes; the frames then hold classes and p_<name>) the per-type metrics of steeldefect.evaluate.types."""
    if "probability" in test:
        choice = pick_threshold(p, val)
        out = {
            **binary_metrics(test.label.to_numpy(), test.probability.to_numpy(), choice["threshold"]),
            "threshold_choice": choice,
        }
    else:
        out = {"defect_decision": NOT_APPLICABLE}
    return out | (type_metrics(p.class_threshold, types, val, test) if types else {})
