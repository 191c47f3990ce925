"""Stage evaluate: metrics, plots and galleries of the test predictions at the chosen threshold, localization
metrics for a mask model, per-type metrics with train.target classes, and the comparison with the classical
baseline."""

import sys

import pandas as pd

from steeldefect.data.types import read_types
from steeldefect.errors import paths, run
from steeldefect.evaluate.evaluation import add_baseline_comparison, evaluate, evaluate_baseline
from steeldefect.evaluate.types import summary
from steeldefect.params import load_params
from steeldefect.serve.maps import load_maps, load_type_maps

TEST_MAPS, VAL_MAPS = "test_maps.npz", "val_maps.npz"  # written by the predict stage for a mask model only


def main() -> None:
    a = paths(
        "predictions",
        "val",
        "test",
        "masks",
        "classes",
        "baseline",
        "metrics",
        "baseline_metrics",
        "threshold",
        "plots",
        "out",
    )
    p = load_params()
    read = lambda path: pd.read_csv(path, keep_default_na=False, dtype={"classes": str})  # noqa: E731
    split = {"val": read(a.val), "test": read(a.test)}
    # a split's images (path, classes, ...) with a model's probabilities (probability and / or p_<name>)
    scored = lambda folder, name: split[name].merge(  # noqa: E731
        read(folder / f"{name}.csv").drop(columns="label"), on="ImageId", validate="one_to_one"
    )
    classes = read(a.classes)
    types = read_types(a.classes) if p.train.target == "classes" else None
    maps, stride = load_maps(a.predictions / TEST_MAPS) if (a.predictions / TEST_MAPS).exists() else (None, None)
    type_maps = load_type_maps(a.predictions / TEST_MAPS) if maps is not None else None
    val_file = a.predictions / VAL_MAPS
    val_maps = (load_maps(val_file)[0], load_type_maps(val_file)) if maps is not None and val_file.exists() else None
    m = evaluate(
        p.evaluate,
        p.seed,
        scored(a.predictions, "val"),
        scored(a.predictions, "test"),
        read(a.masks),
        a.metrics,
        a.threshold,
        a.plots,
        a.out,
        maps,
        stride,
        dict(zip(classes.ClassId.astype(str), classes["name"].astype(str))),
        types,
        type_maps,
        val_maps,
    )
    if "defect_decision" in m:
        print(f"defect / clean metrics not applicable: {m['defect_decision']['reason']}")
    else:
        print(
            f"test accuracy {m['accuracy']:.3f} at threshold {m['threshold']:.3g}: "
            f"TP {m['tp']} TN {m['tn']} FP {m['fp']} FN {m['fn']}"
        )
    if types:
        print(f"types: {summary(m)}")
    if "localization" in m:
        loc = m["localization"]
        keys = ("dice", "iou", "pointing_accuracy", "mean_dice_pairs")
        show = {k: "n/a" if loc[k] is None else f"{loc[k]:.3f}" for k in keys}
        print(
            f"localization on {loc['images_with_mask']} test images with masks at map threshold "
            f"{loc['map_threshold']:g}, min area {loc['min_area']:g} px: Dice {show['dice']}, IoU {show['iou']}, "
            f"pointing {show['pointing_accuracy']}; mean Dice over {loc['pairs']} (image, map) pairs "
            f"{show['mean_dice_pairs']} (predicting nothing: {loc['empty_pairs_share'] or 0:.3f})"
        )
        if loc["map_choice"]["policy"] == "auto":
            listed = "; ".join(
                f"{n}: {c.get('map_threshold', 0.5):g}, {c.get('min_area', 0):g} px"
                for n, c in loc["map_choice"]["maps"].items()
            )
            print(f"map threshold and min area chosen on validation, by map: {listed}")
        if "classes" in loc:
            dice = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            listed = ", ".join(f"{n} {dice(c['dice'])} ({c['images']})" for n, c in loc["classes"].items())
            print(
                f"Dice per type (test images with the type): {listed}; mean Dice over {loc['type_pairs']} "
                f"(image, type) pairs {dice(loc['mean_dice_pairs_types'])}"
            )

    base = evaluate_baseline(
        p.evaluate, scored(a.baseline, "val"), scored(a.baseline, "test"), a.baseline_metrics, a.plots, types
    )
    if "defect_decision" not in base:
        print(f"baseline test accuracy {base['accuracy']:.3f} at threshold {base['threshold']:.3g}")
    if types:
        print(f"baseline types: {summary(base)}")
    warning = add_baseline_comparison(a.metrics, base)
    if warning:
        print(warning, file=sys.stderr)


if __name__ == "__main__":
    run(main)
