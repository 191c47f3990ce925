"""The evaluate step on real JPEGs with given probabilities: threshold policy, metrics, plot data, galleries."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.evaluate.evaluation import evaluate, write_curves

from helpers import defaults


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_dataset(defaults(synthesize={"n_images": 30}).synthesize, seed=5, out_dir=root / "data")
    images, masks, _, _ = prepare(root / "data", "fail", defaults().data)
    rng = np.random.default_rng(0)
    prob = np.clip(images.label * 0.6 + rng.uniform(0, 0.5, len(images)), 0, 1)  # overlapping classes
    images = images.assign(probability=prob)
    return images[:15].reset_index(drop=True), images[15:].reset_index(drop=True), masks


def run(tmp_path, data, **params):
    val, test, masks = data
    out = tmp_path / "out"
    m = evaluate(
        defaults(evaluate={"gallery_size": 3, **params}).evaluate,
        0,
        val,
        test,
        masks,
        out / "metrics.json",
        out / "threshold.json",
        out / "plots",
        out / "results",
    )
    return m, out


def test_fixed_threshold(tmp_path, data):
    m, out = run(tmp_path, data, threshold=0.5)
    test = data[1]
    pred = (test.probability >= 0.5).astype(int)
    assert m["fp"] == int(((pred == 1) & (test.label == 0)).sum()) and m["fn"] == int(
        ((pred == 0) & (test.label == 1)).sum()
    )
    assert m["threshold_choice"] == {"threshold": 0.5, "policy": "fixed"}
    assert json.loads((out / "threshold.json").read_text())["threshold"] == 0.5
    assert len(pd.read_csv(out / "results/false_negatives.csv")) == m["fn"]
    assert set(m["recall_per_class"]) <= {"1", "2", "3", "4"} and m["recall_per_class"]
    roc = (out / "plots/roc.json").read_text()
    assert "Infinity" not in roc and "NaN" not in roc
    sweep = pd.read_csv(out / "plots/threshold_sweep.csv")
    assert sweep.loc[sweep.chosen_threshold > 0, "threshold"].tolist() == [0.5]
    for name in ("gallery_random", "gallery_false_negatives", "gallery_false_positives"):
        with Image.open(out / "plots" / f"{name}.png") as im:
            assert im.size[0] > 100


def test_auto_threshold_reaches_target_recall_on_validation(tmp_path, data):
    m, _ = run(tmp_path, data, threshold="auto", target_recall=0.99)
    choice, val = m["threshold_choice"], data[0]
    assert choice["policy"] == "auto" and choice["target_reached"] and choice["val_recall"] >= 0.99
    flagged = val.probability >= choice["threshold"]
    assert flagged[val.label == 1].all()
    assert choice["threshold"] == val.probability[val.label == 1].min()  # highest threshold keeping every defect


def test_curves_come_from_dvclive_in_place_and_without_infinity(tmp_path):
    y, prob = np.array([0, 1, 1, 0, 1, 0]), np.array([0.1, 0.9, 0.4, 0.5, 0.8, 0.2])
    predicted = (prob >= 0.5).astype(int)
    write_curves(tmp_path, y, prob, suffix="_baseline", predicted=predicted)
    names = sorted(path.name for path in tmp_path.iterdir())  # no temporary dvclive folder left behind
    assert names == ["confusion.json", "precision_recall_baseline.json", "roc_baseline.json"]
    text = (tmp_path / "roc_baseline.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    fpr, tpr, thresholds = roc_curve(y, prob)
    roc = json.loads(text)["roc"]
    assert [(r["fpr"], r["tpr"]) for r in roc] == list(zip(fpr, tpr))
    assert [r["threshold"] for r in roc] == [1.0, *thresholds[1:]]  # scikit-learn's first threshold is inf
    precision, recall, _ = precision_recall_curve(y, prob)
    pr = json.loads((tmp_path / "precision_recall_baseline.json").read_text())["precision_recall"]
    assert [(r["precision"], r["recall"]) for r in pr] == list(zip(precision, recall))[: len(pr)]
    names = {0: "clean", 1: "defect"}
    confusion = json.loads((tmp_path / "confusion.json").read_text())
    assert confusion == [{"actual": names[a], "predicted": names[b]} for a, b in zip(y, predicted)]


def test_curves_of_one_class_are_empty(tmp_path):
    write_curves(tmp_path, np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]))
    assert json.loads((tmp_path / "roc.json").read_text()) == {"roc": []}
    assert json.loads((tmp_path / "precision_recall.json").read_text()) == {"precision_recall": []}
