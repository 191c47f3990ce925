"""Evaluation of the test predictions: metrics, plot data, mistake lists and galleries, per defect type too."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from dvclive import Live

from steeldefect import atomic
from steeldefect.data.dataset import class_label, load_masks
from steeldefect.data.masks import resize_nearest
from steeldefect.data.types import PREFIX
from steeldefect.evaluate.localization import (
    DICE_COLUMNS,
    cell_areas,
    localization_metrics,
    predicted,
    type_localization,
)
from steeldefect.evaluate.map_choice import choose_maps
from steeldefect.evaluate.metrics import SWEEP_COLUMNS, recall_per_class, scored_metrics, threshold_sweep
from steeldefect.evaluate.plots import Tile, gallery
from steeldefect.evaluate.types import Types, single_type, truth_and_probabilities
from steeldefect.params import EvaluateParams

# the picture of a gallery that does not apply
NO_DEFECT_DECISION = "Not applicable: the data has no clean images,\nso the model gives no defect probability."
NO_TYPES = "Not applicable: train.target is defect (one probability,\nno defect types); set train.target: classes."


def _label(v: int) -> str:
    return "defect" if v else "clean"


def _title(r) -> str:
    """True label and types; the defect decision where there is one; the top type with train.target classes."""
    title = f"{r.ImageId}  true: {_label(r.label)}{f' ({r.shown})' if r.shown else ''}"
    if hasattr(r, "predicted"):
        title += f" / pred: {_label(r.predicted)}  (p = {r.probability:.3f})"
    if hasattr(r, "top_type"):
        title += f" / top type: {r.top_shown}  (p = {r.top_probability:.3f})"
    return title


def _tiles(df: pd.DataFrame, masks: pd.DataFrame, with_masks: bool, outlines: dict | None = None) -> list[Tile]:
    return [
        Tile(
            r.path,
            _title(r),
            load_masks(masks, r.ImageId, r.height, r.width) if with_masks else {},
            resize_nearest(outlines[r.ImageId], (r.height, r.width)) if outlines is not None else None,
        )
        for r in df.itertuples()
    ]


def evaluate_localization(
    p: EvaluateParams,
    test: pd.DataFrame,
    masks: pd.DataFrame,
    maps: dict | None,
    stride: int | None,
    plots_dir: Path,
    type_maps: dict | None = None,
    types: Types | None = None,
    val: pd.DataFrame | None = None,
    val_maps: tuple[dict, dict | None] | None = None,
) -> tuple[dict | None, dict | None, str, dict]:
    """(localization metrics, {ImageId: map cells >= the map threshold} for the galleries' outlines, a note for
    the galleries' titles, {map_threshold, min_area} for models/threshold.json) of a mask model, and
    plots/localization_dice.csv, the Dice plot's data. Without maps (an image model): (None, None, "", {}) and only
    the CSV's header, so the plot exists for DVC either way. With `type_maps` (a mask model with `types`) the
    metrics also hold each type's (`type_localization`). `val`, `val_maps` (its maps and per-type maps): for
    evaluate.map_threshold / min_area auto (`map_choice`)."""
    if maps is None:
        atomic.write_text(plots_dir / "localization_dice.csv", ",".join(DICE_COLUMNS) + "\n")
        return None, None, "", {}
    with_types = types if type_maps is not None else None
    (threshold, thresholds), (min_area, min_areas), choice = choose_maps(
        p, val, masks, *(val_maps or (None, None)), with_types, stride
    )
    metrics, sweep = localization_metrics(test, masks, maps, stride, threshold, min_area)
    metrics["map_choice"] = choice
    if with_types:
        metrics.update(type_localization(test, masks, type_maps, types, stride, thresholds, min_areas))
    atomic.write_text(plots_dir / "localization_dice.csv", sweep.to_csv(index=False))
    areas = cell_areas(test, maps)
    outlines = {i: predicted(m, threshold, min_area, areas[i]) for i, m in maps.items() if i in areas}
    smallest = f", regions of {min_area:g} px or more" if min_area > 0 else ""
    chosen = {"map_threshold": thresholds or threshold, "min_area": min_areas or min_area}
    return metrics, outlines, f"; predicted map >= {threshold:g}{smallest} outlined in yellow", chosen


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
    types: Types | None = None,
    type_maps: dict | None = None,
    val_maps: tuple[dict, dict | None] | None = None,
) -> dict:
    """`val` and `test` hold ImageId, label and probability (none for a set with no clean images); `test` also
    holds path, classes, height, width. `maps`: a mask model's test maps by ImageId (at `map_stride`), for the
    localization metrics and the galleries' outlines; `type_maps`: its per-type maps (h, w, K) with `types`;
    `val_maps`: (maps, per-type maps) of `val` (then with classes, height, width), for map_threshold / min_area auto.
    `class_names` (ClassId -> name, data/prepared/classes.csv) names the classes in per-class metrics and titles.
    `types` (ClassIds, names; train.target classes): both frames also hold classes and p_<name>, for the per-type
    metrics, thresholds and plots. Without a probability column (a set with no clean images) the defect / clean
    metrics do not apply: metrics/evaluate.json says why, and their plots are written with no data."""
    names = class_names or {}
    shown = test.classes.astype(str).str.split().apply(lambda cs: ", ".join(class_label(c, names) for c in cs))
    test = test.assign(shown=shown)
    metrics = scored_metrics(p, val, test, types)
    if "probability" in test:
        choice = metrics["threshold_choice"]
        y, prob = test.label.to_numpy(), test.probability.to_numpy()
        test = test.assign(predicted=(prob >= choice["threshold"]).astype(int))
        metrics["recall_per_class"] = _named(recall_per_class(test, test.predicted.to_numpy()), names)
        write_curves(plots_dir, y, prob, predicted=test.predicted.to_numpy())
        sweep = threshold_sweep(y, prob, choice["threshold"])
    else:
        choice = {"defect_decision": metrics["defect_decision"]}
        write_empty_curves(plots_dir)
        atomic.write_json(plots_dir / "confusion.json", [])
        sweep = pd.DataFrame(columns=SWEEP_COLUMNS)
    atomic.write_text(plots_dir / "threshold_sweep.csv", sweep.to_csv(index=False))
    if types:
        thresholds = {n: m["threshold"] for n, m in metrics["classes"].items()}
        choice = {**choice, "class_thresholds": thresholds, "class_threshold_choice": metrics["class_threshold_choice"]}
        test = with_types(test, types, thresholds, names)
    write_type_plots(plots_dir, test, types)
    write_results(test, results_dir)
    localization, outlines, note, chosen = evaluate_localization(
        p, test, masks, maps, map_stride, plots_dir, type_maps, types, val, val_maps
    )
    if localization is not None:  # threshold.json also gives the command its default map threshold
        localization["dice_per_class"] = _named(localization["dice_per_class"], names)
        metrics["localization"] = localization
        choice = {**choice, **chosen}
    write_galleries(test, masks, p.gallery_size, seed, choice.get("threshold"), outlines, note, plots_dir)
    write_wrong_type_gallery(test, masks, p.gallery_size, outlines, note, plots_dir)
    atomic.write_json(threshold_path, choice)
    atomic.write_json(metrics_path, metrics)
    return metrics


def with_types(test: pd.DataFrame, types: Types, thresholds: dict[str, float], names: dict[str, str]) -> pd.DataFrame:
    """`test` with top_type (the type of highest probability), top_probability, top_shown (its label in titles),
    predicted_types (the types at or above their thresholds, joined by ";") and wrong_type (a defect with a true
    type whose top type is not among its true types: right defect, wrong type)."""
    class_ids, type_names = types
    y, prob = truth_and_probabilities(test, types)
    top = prob.argmax(1)
    at = prob >= np.array([thresholds[n] for n in type_names])
    return test.assign(
        top_type=[type_names[k] for k in top],
        top_probability=prob.max(1),
        top_shown=[class_label(class_ids[k], names) for k in top],
        predicted_types=[";".join(n for n, a in zip(type_names, row) if a) for row in at],
        wrong_type=y.any(1) & (y[np.arange(len(y)), top] == 0),
    )


def _named(per_class: dict, names: dict[str, str]) -> dict:
    return {names.get(k, k): v for k, v in per_class.items()}


def mistakes(test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false positives, most confident first; false negatives, most confidently missed first); none without a
    defect decision."""
    if "predicted" not in test:
        return test[:0], test[:0]
    fp = test[(test.predicted == 1) & (test.label == 0)].sort_values("probability", ascending=False)
    fn = test[(test.predicted == 0) & (test.label == 1)].sort_values("probability")
    return fp, fn


def write_results(test: pd.DataFrame, results_dir: Path) -> None:
    """predictions.csv, false_positives.csv and false_negatives.csv in `results_dir`, replaced whole."""
    fp, fn = mistakes(test)
    extra = [c for c in test if c.startswith(PREFIX)] + ["top_type", "predicted_types"]
    columns = [c for c in ["ImageId", "label", "classes", "probability", "predicted", *extra] if c in test]
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
        write_empty_curves(plots_dir, suffix)


def write_empty_curves(plots_dir: Path, suffix: str = "") -> None:
    """roc{suffix}.json and precision_recall{suffix}.json with no points: one class only, or no probability."""
    atomic.write_json(plots_dir / f"roc{suffix}.json", {"roc": []})
    atomic.write_json(plots_dir / f"precision_recall{suffix}.json", {"precision_recall": []})


def write_type_plots(plots_dir: Path, test: pd.DataFrame, types: Types | None) -> None:
    """type_confusion.json: the rows of a DVC confusion plot (actual = true type, predicted = top type) of the test
    images with exactly one type; classes_roc/<name>.json and classes_precision_recall/<name>.json: each type's
    curves (write_curves, one-vs-rest), folders DVC draws as one plot per file. Without types (train.target
    defect): an empty confusion, and each folder holds only not_applicable.json, an empty list."""
    rows, curves = [], {}
    if types:
        names = types[1]
        y, prob = truth_and_probabilities(test, types)
        one = single_type(y)
        rows = [{"actual": names[a], "predicted": names[b]} for a, b in zip(y[one].argmax(1), prob[one].argmax(1))]
        curves = {name.replace("/", "_"): (y[:, k], prob[:, k]) for k, name in enumerate(names)}
    atomic.write_json(plots_dir / "type_confusion.json", rows)
    with (
        atomic.atomic_dir(plots_dir / "classes_roc") as roc,
        atomic.atomic_dir(plots_dir / "classes_precision_recall") as pr,
        tempfile.TemporaryDirectory(prefix="steeldefect-type-curves.") as tmp,
    ):
        for stem, (y_k, prob_k) in curves.items():
            write_curves(Path(tmp), y_k, prob_k)
            shutil.move(Path(tmp) / "roc.json", roc / f"{stem}.json")
            shutil.move(Path(tmp) / "precision_recall.json", pr / f"{stem}.json")
        if not curves:
            for folder in (roc, pr):
                atomic.write_json(folder / "not_applicable.json", [])


def write_galleries(
    test: pd.DataFrame,
    masks: pd.DataFrame,
    n: int,
    seed: int,
    threshold: float | None,
    outlines: dict | None,
    note: str,
    plots_dir: Path,
) -> None:
    """Three PNGs of up to `n` test images each: a random sample, the false negatives, the false positives.
    Without a defect decision (threshold None) the last two say why they do not apply."""
    fp, fn = mistakes(test)
    sample = test.sample(n=min(n, len(test)), random_state=seed).sort_values("ImageId")
    decided = threshold is not None
    decision = f"threshold {threshold:.3g}" if decided else "no defect decision"
    gallery(
        _tiles(sample, masks, with_masks=outlines is not None, outlines=outlines),
        plots_dir / "gallery_random.png",
        f"Random test images ({decision}{'; true mask overlaid' if note else ''}{note})",
    )
    if not decided:
        for name, title in (("gallery_false_negatives", "Missed defects"), ("gallery_false_positives", "False alarms")):
            gallery([], plots_dir / f"{name}.png", f"{title}: not applicable", empty=NO_DEFECT_DECISION)
        return
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


def write_wrong_type_gallery(
    test: pd.DataFrame, masks: pd.DataFrame, n: int, outlines: dict | None, note: str, plots_dir: Path
) -> None:
    """gallery_wrong_type.png: up to `n` test images of right defect, wrong type (with_types), the most confident
    top type first, true mask overlaid; without types (train.target defect) a picture saying it does not apply."""
    path = plots_dir / "gallery_wrong_type.png"
    if "wrong_type" not in test:
        gallery([], path, "Right defect, wrong type", empty=NO_TYPES)
        return
    wrong = test[test.wrong_type].sort_values("top_probability", ascending=False)
    gallery(
        _tiles(wrong.head(n), masks, with_masks=True, outlines=outlines),
        path,
        f"Right defect, wrong type: {len(wrong)} test images whose top type is none of their true types "
        f"(showing {min(n, len(wrong))}, true mask overlaid{note})",
        empty="No wrong types: the top type of every defect is one of its true types.",
    )


# Deep model against the classical baseline (stage `baseline`, steeldefect.evaluate.baseline).
COMPARED = ("roc_auc", "average_precision", "balanced_accuracy", "accuracy", "precision", "recall", "specificity", "f1")
TYPE_COMPARED = ("roc_auc", "average_precision")  # per type (classes.<name>) and classes_macro
NAMES = {"roc_auc": "ROC AUC", "average_precision": "average precision", "balanced_accuracy": "balanced accuracy"}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def compare_with_baseline(deep: dict, baseline: dict) -> dict:
    """Deep model minus baseline (None where either is missing): each metric in COMPARED where the deep model has a
    defect decision; with types, TYPE_COMPARED per type (classes.<name>) and of classes_macro, and type_accuracy."""
    out = {} if "defect_decision" in deep else {k: _minus(deep.get(k), baseline.get(k)) for k in COMPARED}
    if "classes" in deep:  # the baseline was scored with the same types
        out["classes"] = {
            n: {k: _minus(m[k], baseline["classes"][n][k]) for k in TYPE_COMPARED} for n, m in deep["classes"].items()
        }
        macro = baseline["classes_macro"]
        out["classes_macro"] = {k: _minus(deep["classes_macro"][k], macro[k]) for k in TYPE_COMPARED}
        out["type_accuracy"] = _minus(deep["type_accuracy"], baseline["type_accuracy"])
    return out


def baseline_warning(deep: dict, baseline: dict) -> str | None:
    """A warning naming each headline metric (NAMES) on which the deep model is below the baseline, or None."""
    diff = compare_with_baseline(deep, baseline)
    worse = [
        f"{name} {deep[k]:.3f} vs {baseline[k]:.3f} ({diff[k]:+.3f})"
        for k, name in NAMES.items()
        if diff.get(k) is not None and diff[k] < 0
    ]
    if not worse:
        return None
    return (
        "WARNING: the deep model is worse than the classical baseline (texture features + gradient boosting, "
        f"metrics/baseline.json) on the test split: {'; '.join(worse)}. Train longer, use pretrained weights, or "
        "keep the baseline."
    )


def evaluate_baseline(
    p: EvaluateParams,
    val: pd.DataFrame,
    test: pd.DataFrame,
    metrics_path: Path,
    plots_dir: Path,
    types: Types | None = None,
) -> dict:
    """The baseline's metrics (same threshold policies as the deep model's, per type too with `types`) and its ROC /
    precision-recall data (with no points when it has no defect probability)."""
    metrics = scored_metrics(p, val, test, types)
    if "probability" in test:
        write_curves(plots_dir, test.label.to_numpy(), test.probability.to_numpy(), suffix="_baseline")
    else:
        write_empty_curves(plots_dir, "_baseline")
    atomic.write_json(metrics_path, metrics)
    return metrics


def add_baseline_comparison(metrics_path: Path, baseline: dict) -> str | None:
    """Write `vs_baseline` (deep minus baseline) into the deep model's metrics file; return the warning, if any."""
    deep = json.loads(Path(metrics_path).read_text())
    atomic.write_json(metrics_path, {**deep, "vs_baseline": compare_with_baseline(deep, baseline)})
    return baseline_warning(deep, baseline)
