"""Evaluation of the test predictions: metrics, plot data, mistake lists and galleries."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from dvclive import Live

from steeldefect import atomic
from steeldefect.data.dataset import class_label, load_masks
from steeldefect.data.masks import resize_nearest
from steeldefect.evaluate.localization import DICE_COLUMNS, localization_metrics
from steeldefect.evaluate.metrics import (
    binary_metrics,
    pick_threshold,
    recall_per_class,
    scored_metrics,
    threshold_sweep,
)
from steeldefect.evaluate.plots import Tile, gallery
from steeldefect.params import EvaluateParams


def _label(v: int) -> str:
    return "defect" if v else "clean"


def _tiles(df: pd.DataFrame, masks: pd.DataFrame, with_masks: bool, outlines: dict | None = None) -> list[Tile]:
    return [
        Tile(
            r.path,
            f"{r.ImageId}  true: {_label(r.label)}{f' ({r.shown})' if r.shown else ''} / pred: {_label(r.predicted)}"
            f"  (p = {r.probability:.3f})",
            load_masks(masks, r.ImageId, r.height, r.width) if with_masks else {},
            resize_nearest(outlines[r.ImageId], (r.height, r.width)) if outlines is not None else None,
        )
        for r in df.itertuples()
    ]


def evaluate_localization(
    p: EvaluateParams, test: pd.DataFrame, masks: pd.DataFrame, maps: dict | None, stride: int | None, plots_dir: Path
) -> tuple[dict | None, dict | None, str]:
    """(localization metrics, {ImageId: map cells >= the map threshold} for the galleries' outlines, a note for
    the galleries' titles) of a mask model, and plots/localization_dice.csv, the Dice plot's data. Without maps
    (an image model): (None, None, "") and only the CSV's header, so the plot exists for DVC either way."""
    if maps is None:
        atomic.write_text(plots_dir / "localization_dice.csv", ",".join(DICE_COLUMNS) + "\n")
        return None, None, ""
    metrics, sweep = localization_metrics(test, masks, maps, stride, p.map_threshold)
    atomic.write_text(plots_dir / "localization_dice.csv", sweep.to_csv(index=False))
    outlines = {image_id: m >= p.map_threshold for image_id, m in maps.items()}
    return metrics, outlines, f"; predicted map >= {p.map_threshold:g} outlined in yellow"


def evaluate(
    p: EvaluateParams,
    seed: int,
    val: pd.DataFrame,
    test: pd.DataFrame,
    masks: pd.DataFrame,
    metrics_path: Path,
    threshold_path: Path,
    plots_dir: Path,
    results_dir: Path,
    maps: dict | None = None,
    map_stride: int | None = None,
    class_names: dict[str, str] | None = None,
) -> dict:
    """`val` holds ImageId, label, probability; `test` also holds path, classes, height, width. `maps`: a mask
    model's test maps by ImageId (at `map_stride`), for the localization metrics and the galleries' outlines.
    `class_names` (ClassId -> name, data/prepared/classes.csv) names the classes in per-class metrics and titles."""
    names = class_names or {}
    shown = test.classes.astype(str).str.split().apply(lambda cs: ", ".join(class_label(c, names) for c in cs))
    test = test.assign(shown=shown)
    choice = pick_threshold(p, val)
    y, prob = test.label.to_numpy(), test.probability.to_numpy()
    test = test.assign(predicted=(prob >= choice["threshold"]).astype(int))
    metrics = {
        **binary_metrics(y, prob, choice["threshold"]),
        "threshold_choice": choice,
        "recall_per_class": _named(recall_per_class(test, test.predicted.to_numpy()), names),
    }
    write_results(test, results_dir)
    write_curves(plots_dir, y, prob, predicted=test.predicted.to_numpy())
    atomic.write_text(
        plots_dir / "threshold_sweep.csv", threshold_sweep(y, prob, choice["threshold"]).to_csv(index=False)
    )
    localization, outlines, note = evaluate_localization(p, test, masks, maps, map_stride, plots_dir)
    if localization is not None:  # threshold.json also gives the command its default map threshold
        localization["dice_per_class"] = _named(localization["dice_per_class"], names)
        metrics["localization"], choice = localization, {**choice, "map_threshold": p.map_threshold}
    write_galleries(test, masks, p.gallery_size, seed, choice["threshold"], outlines, note, plots_dir)
    atomic.write_json(threshold_path, choice)
    atomic.write_json(metrics_path, metrics)
    return metrics


def _named(per_class: dict, names: dict[str, str]) -> dict:
    return {names.get(k, k): v for k, v in per_class.items()}


def mistakes(test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false positives, most confident first; false negatives, most confidently missed first)."""
    fp = test[(test.predicted == 1) & (test.label == 0)].sort_values("probability", ascending=False)
    fn = test[(test.predicted == 0) & (test.label == 1)].sort_values("probability")
    return fp, fn


def write_results(test: pd.DataFrame, results_dir: Path) -> None:
    """predictions.csv, false_positives.csv and false_negatives.csv in `results_dir`, replaced whole."""
    fp, fn = mistakes(test)
    columns = ["ImageId", "label", "classes", "probability", "predicted"]
    with atomic.atomic_dir(results_dir) as tmp:
        test[columns].to_csv(tmp / "predictions.csv", index=False)
        fp[columns].to_csv(tmp / "false_positives.csv", index=False)
        fn[columns].to_csv(tmp / "false_negatives.csv", index=False)


def write_curves(
    plots_dir: Path, y: np.ndarray, prob: np.ndarray, suffix: str = "", predicted: np.ndarray | None = None
) -> None:
    """roc{suffix}.json and precision_recall{suffix}.json in `plots_dir` (and with `predicted`, confusion.json),
    written by dvclive's `log_sklearn_plot` into a temporary folder outside the project (so that `dvc exp run`
    does not `git add` it), then copied into place. scikit-learn's ROC starts at threshold inf, which dvclive
    writes as `Infinity` (not JSON: Vega rejects it), so it becomes 1. With one class only there is no curve:
    the two files hold an empty list."""
    both = len(set(y)) == 2
    with tempfile.TemporaryDirectory(prefix="steeldefect-curves.") as tmp:
        with Live(tmp, dvcyaml=False, save_dvc_exp=False) as live:
            if both:
                live.log_sklearn_plot("roc", y, prob, name=f"roc{suffix}")
                live.log_sklearn_plot("precision_recall", y, prob, name=f"precision_recall{suffix}")
            if predicted is not None:
                actual, said = [_label(v) for v in y], [_label(v) for v in predicted]
                live.log_sklearn_plot("confusion_matrix", actual, said, name="confusion")
        written = Path(live.plots_dir) / "sklearn"
        if both:
            roc = written / f"roc{suffix}.json"
            points = [{**r, "threshold": min(r["threshold"], 1.0)} for r in json.loads(roc.read_text())["roc"]]
            roc.write_text(json.dumps({"roc": points}, indent=4))
        for path in written.glob("*.json"):
            atomic.write_text(plots_dir / path.name, path.read_text())
    if not both:
        atomic.write_json(plots_dir / f"roc{suffix}.json", {"roc": []})
        atomic.write_json(plots_dir / f"precision_recall{suffix}.json", {"precision_recall": []})


def write_galleries(
    test: pd.DataFrame,
    masks: pd.DataFrame,
    n: int,
    seed: int,
    threshold: float,
    outlines: dict | None,
    note: str,
    plots_dir: Path,
) -> None:
    """Three PNGs of up to `n` test images each: a random sample, the false negatives, the false positives."""
    fp, fn = mistakes(test)
    sample = test.sample(n=min(n, len(test)), random_state=seed).sort_values("ImageId")
    gallery(
        _tiles(sample, masks, with_masks=outlines is not None, outlines=outlines),
        plots_dir / "gallery_random.png",
        f"Random test images (threshold {threshold:.3g}{'; true mask overlaid' if note else ''}{note})",
    )
    gallery(
        _tiles(fn.head(n), masks, with_masks=True, outlines=outlines),
        plots_dir / "gallery_false_negatives.png",
        f"Missed defects: {len(fn)} false negatives (showing {min(n, len(fn))}, true mask overlaid{note})",
        empty="No false negatives: every defective test image was flagged.",
    )
    gallery(
        _tiles(fp.head(n), masks, with_masks=False),
        plots_dir / "gallery_false_positives.png",
        f"False alarms: {len(fp)} false positives (showing {min(n, len(fp))})",
        empty="No false positives: no clean test image was flagged.",
    )


# Deep model against the classical baseline (stage `baseline`, steeldefect.evaluate.baseline).
COMPARED = ("roc_auc", "average_precision", "balanced_accuracy", "accuracy", "precision", "recall", "specificity", "f1")
NAMES = {"roc_auc": "ROC AUC", "average_precision": "average precision", "balanced_accuracy": "balanced accuracy"}


def compare_with_baseline(deep: dict, baseline: dict) -> dict:
    """Deep model minus baseline for each metric in COMPARED (None where either is missing)."""
    return {
        k: None if deep.get(k) is None or baseline.get(k) is None else round(deep[k] - baseline[k], 6) for k in COMPARED
    }


def baseline_warning(deep: dict, baseline: dict) -> str | None:
    """A warning naming each headline metric (NAMES) on which the deep model is below the baseline, or None."""
    diff = compare_with_baseline(deep, baseline)
    worse = [
        f"{name} {deep[k]:.3f} vs {baseline[k]:.3f} ({diff[k]:+.3f})"
        for k, name in NAMES.items()
        if diff[k] is not None and diff[k] < 0
    ]
    if not worse:
        return None
    return (
        "WARNING: the deep model is worse than the classical baseline (texture features + gradient boosting, "
        f"metrics/baseline.json) on the test split: {'; '.join(worse)}. Train longer, use pretrained weights, or "
        "keep the baseline."
    )


def evaluate_baseline(
    p: EvaluateParams, val: pd.DataFrame, test: pd.DataFrame, metrics_path: Path, plots_dir: Path
) -> dict:
    """The baseline's metrics (same threshold policy as the deep model's) and its ROC / precision-recall data."""
    metrics = scored_metrics(p, val, test)
    write_curves(plots_dir, test.label.to_numpy(), test.probability.to_numpy(), suffix="_baseline")
    atomic.write_json(metrics_path, metrics)
    return metrics


def add_baseline_comparison(metrics_path: Path, baseline: dict) -> str | None:
    """Write `vs_baseline` (deep minus baseline) into the deep model's metrics file; return the warning, if any."""
    deep = json.loads(Path(metrics_path).read_text())
    atomic.write_json(metrics_path, {**deep, "vs_baseline": compare_with_baseline(deep, baseline)})
    return baseline_warning(deep, baseline)
