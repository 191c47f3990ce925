"""Is a trained model degenerate? Checked on the validation split right after training.

A run can end "successfully" with a model that learned nothing: every image gets (almost) the same
probability, or the ranking is no better than chance. Such a run is flagged in the training metrics
(`degenerate: true`, with the validation ROC AUC and the spread of the probabilities) and by a warning that
names the params to look at.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

MIN_ROC_AUC = 0.55  # at or below: no better than chance (or worse)
MIN_SPREAD = 1e-3  # max - min probability below this: constant predictions
PARAMS_TO_CHECK = (
    "train.learning_rate (try 3-10x lower)",
    "train.head.normalize (batchnorm keeps the head independent of the features' scale)",
    "train.optimizer",
    "train.epochs / train.patience (too few to learn?)",
    "the labels (data/split/train.csv: both classes present?)",
)


def check(labels: np.ndarray, probability: np.ndarray) -> dict:
    """{'degenerate': bool, 'val_roc_auc': float or None (one class only), 'val_prob_spread': float,
    'reasons': [str]} for the validation labels (0 / 1) and predicted probabilities."""
    labels, probability = np.asarray(labels).ravel(), np.asarray(probability, dtype=np.float64).ravel()
    if not np.isfinite(probability).all():
        reason = f"{int((~np.isfinite(probability)).sum())} validation probabilities are not finite (training diverged)"
        return {"degenerate": True, "val_roc_auc": None, "val_prob_spread": None, "reasons": [reason]}
    spread = float(probability.max() - probability.min()) if len(probability) else 0.0
    auc = float(roc_auc_score(labels, probability)) if len(set(labels.tolist())) == 2 else None
    reasons = []
    if spread < MIN_SPREAD:
        reasons.append(f"constant predictions (every validation image gets probability {probability.mean():.3f})")
    if auc is not None and auc <= MIN_ROC_AUC:
        reasons.append(f"validation ROC AUC {auc:.3f} is no better than chance (<= {MIN_ROC_AUC})")
    return {"degenerate": bool(reasons), "val_roc_auc": auc, "val_prob_spread": spread, "reasons": reasons}


def warning(report: dict) -> str:
    """The text to print for a degenerate run."""
    lines = [
        "WARNING: degenerate training run: " + "; ".join(report["reasons"]) + ".",
        "This model is useless for prediction (flagged as degenerate: true in metrics/train/metrics.json).",
        "Params to look at:",
    ]
    return "\n".join(lines + [f"  - {p}" for p in PARAMS_TO_CHECK])


def macro_auc(labels: np.ndarray, probability: np.ndarray) -> float | None:
    """The mean ROC AUC over the columns (defect types) of (n, K) 0/1 labels and probabilities that have both
    classes; None when no column has."""
    aucs = [
        roc_auc_score(labels[:, k], probability[:, k])
        for k in range(labels.shape[1])
        if len(set(labels[:, k].tolist())) == 2 and np.isfinite(probability[:, k]).all()
    ]
    return float(np.mean(aucs)) if aucs else None
