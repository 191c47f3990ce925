"""Real-data benchmark of the supervisions (run by hand, not in CI): image labels only against mask supervision
on whole images (the squash) and on crops, each from random init, on the same seeded stratified split, each
trained for the same wall-clock budget (the weights of the best validation epoch are kept).

The first row is the pipeline's classical baseline (steeldefect.evaluate.baseline) on the same split.
Prints per run: test balanced accuracy (threshold chosen on validation), ROC AUC, average precision, and for
mask supervision the mean Dice and pointing accuracy of the map on defective test images with masks (on the
map's grid: prediction >= 0.5 against `masks.target_map`).

    .venv/bin/python bench/bench_realdata.py --data ../shared/data/magnetic-tile --minutes 12
    .venv/bin/python bench/bench_realdata.py --data ../shared/data/severstal-sample --minutes 1
    .venv/bin/python bench/bench_realdata.py --data synthetic --runs crops  # the default synthetic data
    ... --set train.mask.seg_positive_weight=4 --set train.learning_rate=0.002   (recipe probes)
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml
from sklearn import metrics as skm

from steeldefect.data.dataset import split
from steeldefect.data.masks import image_mask, target_map
from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.evaluate.baseline import run_baseline
from steeldefect.evaluate.metrics import dice_iou, pointing_hit
from steeldefect.params import Params, load_params, map_stride, parse_params
from steeldefect.train import segtrain, training
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import image_dataset, mask_eval_dataset

# One recipe for all runs (cut, size, optimizer), chosen by short probes on magnetic-tile (docs/training.md,
# Supervision); the runs differ only in supervision and crops.
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the repository's: every run starts from it
P = load_params(PARAMS)
COMMON = {
    "epochs": 1000,  # the wall clock stops training
    "batch_size": 16,
    "image_size": [256, 320],  # about magnetic-tile's native size (median ~270x330)
    "backbone_layer": "conv2_block1_out",  # stride 4, the lightest cut: most steps per minute
    "learning_rate": 0.002,
    "optimizer": "adam",
    "augment": True,
    "patience": 20,
    "mask": {"seg_channels": 32, "seg_positive_weight": 3.0},
}
RUNS = {
    "image": {"supervision": "image", "freeze_backbone": False},
    "squash": {"supervision": "mask", "mask": {"crop_size": None}},
    "crops": {"supervision": "mask", "mask": {"crop_size": [96, 96], "crop_defect_share": 0.5}},
}


class WallClock(keras.callbacks.Callback):
    """Stops training at the end of the epoch after which another epoch would overrun `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start, self.epochs = time.perf_counter(), 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        elapsed = time.perf_counter() - self.start
        if elapsed + elapsed / self.epochs > self.seconds:
            self.model.stop_training = True


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


def predict(model: keras.Model, df: pd.DataFrame, masks: pd.DataFrame, p: Params) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, maps or None) of whole images at image_size."""
    t = p.train
    if t.supervision == "image":
        return model.predict(image_dataset(df.path, t.image_size, t.batch_size), verbose=0).ravel(), None
    out = model.predict(mask_eval_dataset(df, masks, t.image_size, map_stride(t), t.batch_size, t.mask), verbose=0)
    return out["probability"].ravel(), out["defect_map"][..., 0]


def best_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The threshold of the highest balanced accuracy on (y, prob)."""
    candidates = np.unique(prob)
    scores = [skm.balanced_accuracy_score(y, prob >= c) for c in candidates]
    return float(candidates[int(np.argmax(scores))])


def localization(maps: np.ndarray, df: pd.DataFrame, masks: pd.DataFrame, p: Params) -> dict:
    dice, hits = [], []
    for i, row in enumerate(df.itertuples(index=False)):
        if row.label == 1 and row.ImageId in set(masks.ImageId):
            true = target_map(
                image_mask(masks, row.ImageId, row.height, row.width, p.train.image_size), map_stride(p.train)
            )
            dice.append(dice_iou(maps[i] >= 0.5, true)[0])
            hits.append(pointing_hit(maps[i], true))
    return {"dice": float(np.mean(dice)), "pointing": float(np.mean(hits)), "images_with_masks": len(dice)}


def scores(name: str, parts: dict, val_prob: np.ndarray, prob: np.ndarray) -> dict:
    """Test balanced accuracy at the best validation threshold, ROC AUC and average precision."""
    y, threshold = parts["test"].label.to_numpy(), best_threshold(parts["val"].label.to_numpy(), val_prob)
    both = len(set(y)) == 2
    return {
        "run": name,
        "threshold": threshold,
        "balanced_accuracy": skm.balanced_accuracy_score(y, prob >= threshold),
        "roc_auc": skm.roc_auc_score(y, prob) if both else None,
        "average_precision": skm.average_precision_score(y, prob) if both else None,
    }


def run_classical(parts: dict, seed: int) -> dict:
    """The pipeline's baseline stage (texture features + gradient boosting, params.yaml's settings) on the split."""
    result = run_baseline(parts["train"], parts["val"], parts["test"], P.baseline, seed, P.evaluate)
    row = scores("baseline", parts, result.val.probability.to_numpy(), result.test.probability.to_numpy())
    return {**row, "train_seconds": round(result.feature_seconds + result.fit_seconds, 1)}


def run(name: str, parts: dict, masks: pd.DataFrame, raw: dict, seconds: float, work: Path) -> dict:
    p = parse_params(raw)
    weights, live = work / f"{name}.weights.h5", work / f"{name}-live"
    clock = WallClock(seconds)
    start = time.perf_counter()
    if p.train.supervision == "mask":
        segtrain.train(p.train, p.seed, parts["train"], parts["val"], masks, weights, live, callbacks=[clock])
    else:
        training.train(p.train, p.seed, parts["train"], parts["val"], weights, live, callbacks=[clock])
    trained = time.perf_counter() - start
    model = build_model(p.train, None)[0]
    model.load_weights(weights)
    val_prob, _ = predict(model, parts["val"], masks, p)
    prob, maps = predict(model, parts["test"], masks, p)
    result = {**scores(name, parts, val_prob, prob), "train_seconds": round(trained, 1), "epochs": clock.epochs}
    if maps is not None:
        result.update(localization(maps, parts["test"], masks, p))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a Severstal-layout folder, or 'synthetic' (the default data)")
    parser.add_argument("--minutes", type=float, default=12, help="training budget per run (wall clock)")
    parser.add_argument(
        "--runs", default="baseline,image,squash,crops", help=f"comma-separated, of baseline, {', '.join(RUNS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="params override for every run, KEY=YAML")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-realdata.") as work:
        work = Path(work)
        source = Path(args.data)
        if args.data == "synthetic":
            source = work / "synthetic"
            write_dataset(P.synthesize, seed=42, out_dir=source)
        images, masks, _, _ = prepare(source, "fail", P.data)
        parts, report = split(images, 0.15, 0.15, args.seed)
        print(f"{source}: {report['sizes']} images, defective {report['defective']}", flush=True)
        results = []
        for name in args.runs.split(","):
            if name == "baseline":
                results.append(run_classical(parts, args.seed))
                print(json.dumps(results[-1]), flush=True)
                continue
            raw = merge(yaml.safe_load(PARAMS.read_text()), {"seed": args.seed, "train": merge(COMMON, RUNS[name])})
            for text in args.set:
                raw = merge(raw, setting(text))
            results.append(run(name, parts, masks, raw, args.minutes * 60, work))
            print(json.dumps(results[-1]), flush=True)
    table = pd.DataFrame(results).round(3)
    print(table.to_markdown(index=False))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
