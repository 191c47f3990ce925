"""Real-data benchmark under a fair protocol (run by hand, alone, not in CI): one training recipe from random
init (or self-pretrained on the training split's images), a wall-clock budget, a learning curve, and the
pipeline's texture baseline on the same seeded stratified split.

The protocol:
- alone: it refuses to start when the 1-minute load average is 1.5 or more (`--force` runs anyway and marks
  the result `loaded=1`); the load is printed at the start and at the end;
- the budget (`--minutes`) counts training (and pretraining) time only; the curve's evaluations pause the
  clock. A recipe's epochs come from the budget and its measured seconds per epoch, so `train.epochs` of the
  RESULT line reproduces the run in the pipeline (`dvc exp run -S seed=<seed> -S train.epochs=<epochs> ...`);
- the curve: validation and test ROC AUC of the current weights, about 30 times per run, against minutes,
  appended to `<out>/curves.csv` (one file for all recipes and seeds) and drawn to `<out>/curves.png` with
  the baseline as a line per seed;
- the result is the model the pipeline would keep (best validation epoch): test ROC AUC, average precision,
  balanced accuracy at the best validation threshold, mean Dice of the map (mask recipes), on whole images.
The last line printed is `RESULT key=value ...`.

    .venv/bin/python bench/bench_realdata.py --data ../shared/data/magnetic-tile --recipe best --minutes 60 --seed 0
    .venv/bin/python bench/bench_realdata.py --data ../shared/data/magnetic-tile --recipe mask --minutes 15 --seed 1
    .venv/bin/python bench/bench_realdata.py --data ../shared/data/magnetic-tile --recipe types --target classes \
        --minutes 60 --seed 0   (also one probability per defect type: type_accuracy=, classes_macro_auc= and the
        baseline's per-type figures on the RESULT line; the curve adds the types' macro ROC AUC)
    .venv/bin/python bench/bench_realdata.py --plot  # redraw <out>/curves.png from <out>/curves.csv
    ... --set train.learning_rate=0.002   (a params override for probes)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml
from sklearn import metrics as skm

from steeldefect.data.dataset import split
from steeldefect.data.prepare import prepare
from steeldefect.data.types import columns, multi_hot
from steeldefect.evaluate.baseline import run_baseline
from steeldefect.evaluate.localization import localization_metrics, type_localization
from steeldefect.evaluate.types import Types, single_type, truth_and_probabilities, type_metrics
from steeldefect.params import Params, load_params, map_stride, parse_params
from steeldefect.train import segtrain, training
from steeldefect.train.health import macro_auc
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import image_dataset, mask_eval_dataset
from steeldefect.train.training import typed

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"  # every recipe starts from the repository's params
P = load_params(PARAMS)

# Recipes: params overrides, and the seconds an epoch takes on this 2-core machine alone (from the recipe's
# RESULT line), which turn a budget into train.epochs. `pretrain_share`: the part of the budget spent on
# self-supervised pretraining (pretrain.epochs from `pretrain_seconds_per_epoch`).
IMAGE_LONG = {
    "train": {
        "supervision": "image",
        "image_size": [128, 128],  # the texture baseline's resolution
        "backbone_layer": "conv2_block3_out",  # stage-2 cut: stride 4, many steps per minute
        "freeze_backbone": False,
        "batch_size": 32,
        "learning_rate": 0.002,
        "optimizer": "adam",
        "schedule": "cosine",
        "augment": True,  # flips, quarter turns, brightness, contrast
        "patience": 1000,  # the budget stops training, not early stopping
    }
}
MASK = {
    "train": {
        "supervision": "mask",
        "image_size": [256, 320],  # about magnetic-tile's native size (median ~270x330)
        "backbone_layer": "conv2_block3_out",
        "batch_size": 16,
        "learning_rate": 0.002,
        "schedule": "cosine",
        "augment": True,
        "patience": 1000,
        "mask": {
            "crop_size": [96, 96],
            "crop_defect_share": 0.5,
            "seg_channels": 32,
            "seg_positive_weight": 3.0,
            "seg_loss": "dice_bce",
            "whole_image_epochs": 3,
        },
    }
}
RECIPES = {
    "image": {"params": IMAGE_LONG, "seconds_per_epoch": 22.0},
    # IMAGE_LONG cut after stage 3 (stride 8, a receptive field of ~100 px against ~35): which type a defect is
    # needs more of its shape than whether there is one (docs/performance.md, "Defect types"); AMD EPYC Zen 5 figure
    "types": {
        "params": {"train": {**IMAGE_LONG["train"], "backbone_layer": "conv3_block4_out"}},
        "seconds_per_epoch": 29.0,
    },
    "mask": {"params": MASK, "seconds_per_epoch": 20.0, "reserve_seconds": 120},  # reserve: whole-image epochs
    # MASK with a map per defect type (train.target: classes): the `localize` preset (conf/preset/localize.yaml)
    "localize": {
        # 320x256: magnetic-tile's median image is 324 high, 270 wide (the `mask` recipe's 256x320 squashes it
        # across); what `train.image_size: auto` gives it
        "params": {"train": {**MASK["train"], "target": "classes", "image_size": [320, 256]}},
        "seconds_per_epoch": 21.0,
        "reserve_seconds": 120,
    },
    "pretrain": {  # IMAGE_LONG from the self-pretrained backbone
        "params": {
            "train": {**IMAGE_LONG["train"], "weights": "pretrained"},
            "pretrain": {"batch_size": 32, "learning_rate": 0.001, "patch_size": 16, "mask_ratio": 0.5},
        },
        "seconds_per_epoch": 22.0,
        "pretrain_share": 0.33,
        "pretrain_seconds_per_epoch": 20.0,
    },
}
BEST = "image"  # the recipe of the `scratch` preset (conf/preset/scratch.yaml)


class Clock:
    """Training seconds: wall time minus the pauses of the curve's evaluations."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


class Budget(keras.callbacks.Callback):
    """Stops training at the end of the epoch after which another epoch would overrun `seconds` on `clock`."""

    def __init__(self, clock: Clock, seconds: float):
        super().__init__()
        self.clock, self.seconds, self.epochs = clock, seconds, 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        elapsed = self.clock.seconds()
        if elapsed + elapsed / self.epochs > self.seconds:
            self.model.stop_training = True


class Curve(keras.callbacks.Callback):
    """Every `every` training seconds (at an epoch end), the validation and test ROC AUC of the current weights;
    the clock is paused meanwhile."""

    def __init__(self, clock: Clock, every: float, parts: dict, masks: pd.DataFrame, p: Params, class_ids: list):
        super().__init__()
        self.clock, self.every, self.parts, self.masks, self.p = clock, every, parts, masks, p
        self.class_ids, self.offset, self.next, self.rows = class_ids, 0.0, every, []

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock.seconds()
        if now < self.next:
            return
        self.next = now + self.every
        paused = time.perf_counter()
        row = {"minutes": round((self.offset + now) / 60, 2), "epoch": epoch + 1}
        for name in ("val", "test"):
            out = predict(self.model, self.parts[name], self.masks, self.p)
            row[f"{name}_auc"] = round(auc(self.parts[name].label, out["probability"]), 4)
            if "classes" in out:
                truth = multi_hot(self.parts[name].classes, self.class_ids)
                row[f"{name}_classes_auc"] = round(macro_auc(truth, out["classes"]) or float("nan"), 4)
            if "defect_map" in out and name == "test":
                row["test_dice"] = round(localize(out["defect_map"], self.parts[name], self.masks, self.p)["dice"], 4)
        self.rows.append(row)
        logging.info("curve %s", row)
        self.clock.paused += time.perf_counter() - paused


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def setting(text: str) -> dict:
    """ "train.mask.crop_size=[96, 96]" -> {"train": {"mask": {"crop_size": [96, 96]}}}"""
    key, value = text.split("=", 1)
    out = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def auc(y, prob) -> float:
    return float(skm.roc_auc_score(y, prob)) if len(set(y)) == 2 else float("nan")


def predict(model: keras.Model, df: pd.DataFrame, masks: pd.DataFrame, p: Params) -> dict[str, np.ndarray]:
    """The outputs of whole images at image_size: `probability` (n,), and `classes` (n, K) of a classes model,
    `defect_map` (n, h, w) of a mask model."""
    t = p.train
    if t.supervision == "image":
        out = model.predict(image_dataset(df.path, t.image_size, t.batch_size), verbose=0)
    else:
        out = model.predict(mask_eval_dataset(df, masks, t.image_size, map_stride(t), t.batch_size, t.mask), verbose=0)
    out = dict(out) if isinstance(out, dict) else {"probability": out}
    if "defect_map" in out:
        out["defect_map"] = out["defect_map"][..., 0]
    return {**out, "probability": out["probability"].ravel()}


def best_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The threshold of the highest balanced accuracy on (y, prob)."""
    candidates = np.unique(prob)
    scores = [skm.balanced_accuracy_score(y, prob >= c) for c in candidates]
    return float(candidates[int(np.argmax(scores))])


def localize(
    maps: np.ndarray,
    df: pd.DataFrame,
    masks: pd.DataFrame,
    p: Params,
    type_maps: np.ndarray | None = None,
    types: Types | None = None,
) -> dict:
    """The evaluate stage's localization metrics of the maps (n, h, w) of `df`'s images, at the params' map
    threshold and minimum area: `dice` (mean over the defective images with a mask), `mean_dice_pairs` (Severstal's,
    clean images included), `empty_pairs_share` (what predicting nothing scores); with `type_maps` (n, h, w, K)
    of `types`, `dice_<name>` per type and `mean_dice_pairs_types` (over (image, type) pairs)."""
    stride, e = map_stride(p.train), p.evaluate
    m, _ = localization_metrics(df, masks, dict(zip(df.ImageId, maps)), stride, e.map_threshold, e.min_area)
    out = {k: m[k] for k in ("dice", "mean_dice_pairs", "empty_pairs_share")}
    if type_maps is not None and types:
        per = dict.fromkeys(types[1], e.map_threshold), dict.fromkeys(types[1], e.min_area)
        t = type_localization(df, masks, dict(zip(df.ImageId, type_maps)), types, stride, *per)
        out |= {f"dice_{n}": c["dice"] for n, c in t["classes"].items()}
        out["mean_dice_pairs_types"] = t["mean_dice_pairs_types"]
    return {k: float("nan") if v is None else v for k, v in out.items()}


def scores(parts: dict, val_prob: np.ndarray, prob: np.ndarray) -> dict:
    """Test ROC AUC, average precision, balanced accuracy at the best validation threshold."""
    y, threshold = parts["test"].label.to_numpy(), best_threshold(parts["val"].label.to_numpy(), val_prob)
    return {
        "auc": auc(y, prob),
        "ap": float(skm.average_precision_score(y, prob)),
        "bacc": float(skm.balanced_accuracy_score(y, prob >= threshold)),
    }


def pretrain(p: Params, parts: dict, work: Path, clock: Clock, seconds: float) -> Path:
    from steeldefect.train.pretrain import pretrain as run_pretrain  # only this recipe needs it

    out = work / "pretrained.weights.h5"
    paths = list(parts["train"].path)  # the training split only: validation and test stay unseen
    run_pretrain(p.pretrain, p.train, p.seed, paths, out, work / "pretrain-live", callbacks=[Budget(clock, seconds)])
    return out


def type_scores(parts: dict, types: Types, val_prob: np.ndarray, prob: np.ndarray) -> dict:
    """type_accuracy (top type on single-type test images) and classes_macro_auc on the test split; prints the
    per-type figures and the confusion of types."""
    val, test = (parts[n].assign(**dict(zip(columns(types[1]), p.T))) for n, p in (("val", val_prob), ("test", prob)))
    m = type_metrics(P.evaluate.class_threshold, types, val, test)
    report_types("model", m, types, test)
    return brief(m)


def report_types(who: str, m: dict, types: Types, test: pd.DataFrame) -> None:
    """Prints `who`'s per-type ROC AUC, AP and F1 and the confusion of single-type test images (rows: true type,
    columns: top type), so the model's and the baseline's figures can be read side by side."""
    y, prob = truth_and_probabilities(test, types)
    one = single_type(y)
    confusion = skm.confusion_matrix(y[one].argmax(1), prob[one].argmax(1), labels=range(len(types[1])))
    print(f"{who} per type (test):", flush=True)
    for k, name in enumerate(types[1]):
        c = m["classes"][name]
        print(
            f"  {name:>12}: roc_auc {c['roc_auc']} ap {c['average_precision']} f1 {c['f1']} support {c['support']}"
            f" | top type of its single-type images: {' '.join(f'{v:3d}' for v in confusion[k])}",
            flush=True,
        )


def brief(m: dict) -> dict:
    return {"type_accuracy": m["type_accuracy"], "classes_macro_auc": m["classes_macro"]["roc_auc"]}


def run(
    recipe: str,
    parts: dict,
    masks: pd.DataFrame,
    raw: dict,
    minutes: float,
    work: Path,
    types: Types | None,
    seconds_per_epoch: float | None = None,
    keep: Path | None = None,
) -> tuple[dict, list]:
    spec, clock, class_ids = RECIPES[recipe], Clock(), types[0] if types else []
    spec = {**spec, "seconds_per_epoch": seconds_per_epoch or spec["seconds_per_epoch"]}
    budget, share = minutes * 60, spec.get("pretrain_share", 0)
    if share:
        pre_epochs = max(1, int(budget * share / spec["pretrain_seconds_per_epoch"]))
        raw = merge(raw, {"pretrain": {"epochs": pre_epochs}})
    epochs = max(1, int((budget * (1 - share) - spec.get("reserve_seconds", 0)) / spec["seconds_per_epoch"]))
    raw = merge(raw, {"train": {"epochs": epochs}})
    p = parse_params(merge(raw, {"train": {"weights": None}}) if share else raw)
    pre_seconds = 0.0
    if share:
        weights = pretrain(p, parts, work, clock, budget * share)
        pre_seconds = clock.seconds()
        p = parse_params(merge(raw, {"train": {"weights": str(weights)}}))
    train_clock = Clock()
    curve = Curve(train_clock, budget / 30, parts, masks, p, class_ids)
    curve.offset = pre_seconds
    stop = Budget(train_clock, budget - pre_seconds)
    callbacks = [stop, curve]
    weights, live = work / f"{recipe}.weights.h5", work / f"{recipe}-live"
    if p.train.supervision == "mask":
        segtrain.train(
            p.train,
            p.seed,
            parts["train"],
            parts["val"],
            masks,
            weights,
            live,
            callbacks=callbacks,
            class_ids=class_ids,
        )
    else:
        training.train(
            p.train, p.seed, parts["train"], parts["val"], weights, live, callbacks=callbacks, class_ids=class_ids
        )
    trained = pre_seconds + train_clock.seconds()
    if keep:
        shutil.copyfile(weights, keep)
    model = build_model(p.train, None, len(class_ids), bool((parts["train"].label == 0).any()))[0]
    model.load_weights(weights)
    val, test = (predict(model, parts[n], masks, p) for n in ("val", "test"))
    result = {
        **scores(parts, val["probability"], test["probability"]),
        **(type_scores(parts, types, val["classes"], test["classes"]) if types else {}),
        **(
            localize(test["defect_map"], parts["test"], masks, p, test.get("type_maps"), types)
            if "defect_map" in test
            else {"dice": float("nan")}
        ),
        "minutes": round(trained / 60, 1),
        "train.epochs": epochs,
        "epochs_run": stop.epochs,
    }
    if share:
        result["pretrain.epochs"] = p.pretrain.epochs
    return result, curve.rows


def plot(out: Path) -> None:
    """curves.png from curves.csv: test ROC AUC (solid) and validation (dotted) against minutes, one colour per
    recipe, the texture baseline as a dashed line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(out / "curves.csv")
    df = df.assign(target=df.target.fillna("defect")) if "target" in df else df.assign(target="defect")
    with_dice = "test_dice" in df and df.test_dice.notna().any()
    fig, axes = plt.subplots(1, 2 if with_dice else 1, figsize=(15 if with_dice else 8, 5), squeeze=False)
    ax = axes[0, 0]
    df = df.assign(run=(df.epoch.diff().fillna(-1) <= 0).cumsum())  # runs are appended whole: a new one restarts
    runs = df.groupby(["recipe", "budget", "seed", "target", "run"], sort=True)
    colours = dict(zip(runs.groups, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for (recipe, budget, seed, target, run_id), run_df in runs:
        kwargs = {"color": colours[recipe, budget, seed, target, run_id], "marker": "o" if seed == 0 else "s"}
        kwargs["markersize"] = 3
        types = f", target {target} (last epoch {run_df.epoch.max()})" if target != "defect" else ""
        label = f"{recipe}, {budget:g}-min budget, split seed {seed}{types}: test"
        ax.plot(run_df.minutes, run_df.test_auc, label=label, **kwargs)
        ax.plot(run_df.minutes, run_df.val_auc, linestyle=":", alpha=0.6, **kwargs)
        if with_dice and run_df.test_dice.notna().any():
            axes[0, 1].plot(run_df.minutes, run_df.test_dice, label=label.removesuffix(": test"), **kwargs)
    bases = df.groupby("seed").baseline_auc.first()
    for seed, base in bases.items():
        top = base == bases.max()  # its label above its line, the others' below theirs: no overlap
        ax.axhline(base, color="black", linestyle="--", linewidth=1, alpha=0.8 if top else 0.5)
        va = "bottom" if top else "top"
        where = {"xy": (0.01, base), "xycoords": ("axes fraction", "data"), "fontsize": 8, "va": va}
        ax.annotate(f"texture baseline, split seed {seed}: {base:.3f}", **where)
    ax.axhline(0.95, color="red", linewidth=0.8, alpha=0.5)
    ax.annotate("goal 0.95", xy=(0.01, 0.95), xycoords=("axes fraction", "data"), fontsize=8, va="top", color="red")
    ax.set(xlabel="training minutes on 2 idle CPU cores (pretraining included)", ylabel="ROC AUC (dotted: val)")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("magnetic-tile from random init: deep model against the texture baseline")
    if with_dice:
        dice_ax = axes[0, 1]
        dice_ax.axhline(0.5, color="red", linewidth=0.8, alpha=0.5)
        dice_ax.set(xlabel="training minutes on 2 idle CPU cores", ylabel="test Dice (defective images with a mask)")
        dice_ax.set_ylim(0, 1)
        dice_ax.grid(alpha=0.3)
        dice_ax.legend(fontsize=8, loc="upper left")
        dice_ax.set_title("mask recipes: Dice of the map at map threshold 0.5 (goal 0.50 in red)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a data folder the pipeline reads (any layout of docs/data.md)")
    parser.add_argument("--recipe", default="best", help=f"one of {', '.join(RECIPES)}, or best (= {BEST})")
    parser.add_argument("--minutes", type=float, default=15, help="the budget: training + pretraining minutes")
    parser.add_argument("--seed", type=int, default=0, help="the split and training seed")
    parser.add_argument("--target", choices=("defect", "classes"), help="train.target (default: the recipe's)")
    parser.add_argument(
        "--seconds-per-epoch",
        type=float,
        help="the training seconds per epoch that turn the budget into train.epochs, where this machine is slower or "
        "faster than the recipe's measured figure (a cosine schedule then still ends within the budget)",
    )
    parser.add_argument("--set", action="append", default=[], help="params override, KEY=YAML")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "realdata", help="curves.csv and curves.png")
    parser.add_argument("--keep-weights", type=Path, help="copy the trained weights (.weights.h5) here")
    parser.add_argument("--force", action="store_true", help="run even if the machine is busy (result marked)")
    parser.add_argument("--plot", action="store_true", help="only redraw curves.png")
    args = parser.parse_args()
    if args.plot:
        return plot(args.out)
    recipe = BEST if args.recipe == "best" else args.recipe
    raw = merge(yaml.safe_load(PARAMS.read_text()), {"seed": args.seed, **RECIPES[recipe]["params"]})
    args.target = args.target or raw["train"]["target"]
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f}", flush=True)
    if load >= 1.5 and not args.force:
        raise SystemExit(f"load average {load:.2f} >= 1.5: a benchmark runs alone (wait, or --force)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-realdata.") as work:
        work = Path(work)
        images, masks, _, data = prepare(Path(args.data), "fail", P.data)
        names = data["class_names"]  # ClassId -> name
        types = (
            (sorted(names, key=int), [names[c] for c in sorted(names, key=int)]) if args.target == "classes" else None
        )
        parts, report = split(images, P.split.test_size, P.split.val_size, args.seed)
        print(f"{args.data}: {report['sizes']} images, defective {report['defective']}", flush=True)
        # defective images without a type train the defect probability only (training.check_target)
        untyped = int(((parts["train"].label == 1) & ~typed(parts["train"])).sum()) if types else 0
        base = run_baseline(parts["train"], parts["val"], parts["test"], P.baseline, args.seed, P.evaluate, types)
        baseline = scores(parts, base.val.probability.to_numpy(), base.test.probability.to_numpy())
        if types:
            baseline.update(brief(base.metrics))
            assert (base.test.ImageId.to_numpy() == parts["test"].ImageId.to_numpy()).all()
            probs = {c: base.test[c].to_numpy() for c in columns(types[1])}
            report_types("baseline", base.metrics, types, parts["test"].assign(**probs))
        print(f"baseline: {baseline}", flush=True)
        raw = merge(raw, {"train": {"target": args.target}})
        for text in args.set:
            raw = merge(raw, setting(text))
        result, rows = run(
            recipe, parts, masks, raw, args.minutes, work, types, args.seconds_per_epoch, args.keep_weights
        )
    load_end = os.getloadavg()[0]
    curve = pd.DataFrame(rows).assign(recipe=recipe, seed=args.seed, budget=args.minutes, baseline_auc=baseline["auc"])
    curve = curve.assign(target=args.target)
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "curves.csv"
    curve = pd.concat([pd.read_csv(csv), curve]) if csv.exists() else curve  # the columns of both
    curve.to_csv(csv, index=False)
    plot(args.out)
    print(f"load average at end: {load_end:.2f}; curve appended to {csv}", flush=True)
    fields = {
        "recipe": recipe,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()},
        "baseline_auc": round(baseline["auc"], 4),
        "baseline_ap": round(baseline["ap"], 4),
        **{f"baseline_{k}": round(baseline[k], 4) for k in ("type_accuracy", "classes_macro_auc") if k in baseline},
        "target": args.target,
        "seed": args.seed,
        "budget": args.minutes,
        "load_start": round(load, 2),
        "load_end": round(load_end, 2),
        **({"loaded": 1} if load >= 1.5 else {}),
        **({"set": ";".join(args.set)} if args.set else {}),
        **({"untyped_train": untyped} if types else {}),
        **({"seconds_per_epoch": args.seconds_per_epoch} if args.seconds_per_epoch else {}),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


if __name__ == "__main__":
    main()
