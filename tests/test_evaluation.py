"""The evaluate step on real JPEGs with given probabilities: threshold policy, metrics, plot data, galleries; with
defect types (train.target classes), and on a set with no clean images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.data.types import multi_hot
from steeldefect.evaluate.evaluation import add_baseline_comparison, evaluate, evaluate_baseline, write_curves

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


# --- train.target classes: per-type outputs; a set with no clean images ----------------------------------------

TYPES = (["1", "2", "3", "4"], ["scratch", "patch", "pit", "crack"])  # names other than the ClassIds
PLOTS = [  # what dvc.yaml declares: written in every mode
    "confusion.json",
    "roc.json",
    "precision_recall.json",
    "threshold_sweep.csv",
    "localization_dice.csv",
    "gallery_random.png",
    "gallery_false_negatives.png",
    "gallery_false_positives.png",
    "gallery_wrong_type.png",
    "type_confusion.json",
    "classes_roc",
    "classes_precision_recall",
]


def typed(df: pd.DataFrame, probability: bool = True) -> pd.DataFrame:
    """`df` with a p_<name> per type: higher on the image's true types, noisy enough for wrong top types."""
    rng = np.random.default_rng(1)
    y = multi_hot(df.classes, TYPES[0])
    df = df.assign(**{f"p_{n}": 0.4 * y[:, k] + rng.uniform(0, 0.6, len(df)) for k, n in enumerate(TYPES[1])})
    return df if probability else df.drop(columns="probability")


def run_types(tmp_path, data, clean: bool = True, **params):
    val, test, masks = data
    if not clean:  # every image defective: the model has no defect output
        val, test = val[val.label == 1], test[test.label == 1]
    out = tmp_path / "out"
    m = evaluate(
        defaults(evaluate={"gallery_size": 3, **params}).evaluate,
        0,
        typed(val, clean),
        typed(test, clean),
        masks,
        out / "metrics.json",
        out / "threshold.json",
        out / "plots",
        out / "results",
        class_names=dict(zip(*TYPES)),
        types=TYPES,
    )
    return m, out, typed(test, clean)


def _height(path) -> int:
    with Image.open(path) as im:
        return im.size[1]


def test_types_give_the_type_confusion_curves_thresholds_and_wrong_type_gallery(tmp_path, data):
    m, out, test = run_types(tmp_path, data, class_threshold="auto")
    y, prob = multi_hot(test.classes, TYPES[0]), test[[f"p_{n}" for n in TYPES[1]]].to_numpy()
    one = y.sum(1) == 1
    confusion = json.loads((out / "plots/type_confusion.json").read_text())
    assert confusion == [
        {"actual": TYPES[1][a], "predicted": TYPES[1][b]} for a, b in zip(y[one].argmax(1), prob[one].argmax(1))
    ]
    assert m["type_accuracy_images"] == len(confusion) > 0
    assert m["type_accuracy"] == pytest.approx(np.mean([r["actual"] == r["predicted"] for r in confusion]))
    assert sorted(p.name for p in (out / "plots/classes_roc").iterdir()) == sorted(f"{n}.json" for n in TYPES[1])
    for k, name in enumerate(TYPES[1]):
        roc = json.loads((out / f"plots/classes_roc/{name}.json").read_text())["roc"]
        if len(set(y[:, k])) == 2:
            fpr, tpr, _ = roc_curve(y[:, k], prob[:, k])
            assert [(r["fpr"], r["tpr"]) for r in roc] == list(zip(fpr, tpr))
        assert (out / f"plots/classes_precision_recall/{name}.json").is_file()
    thresholds = json.loads((out / "threshold.json").read_text())
    assert thresholds["threshold"] == 0.5  # the defect decision's, as before
    assert thresholds["class_thresholds"] == {n: m["classes"][n]["threshold"] for n in TYPES[1]}
    assert thresholds["class_threshold_choice"]["policy"] == "auto"
    results = pd.read_csv(out / "results/predictions.csv", keep_default_na=False)
    assert list(results.top_type) == [TYPES[1][k] for k in prob.argmax(1)]
    flagged = prob >= np.array(list(thresholds["class_thresholds"].values()))
    assert list(results.predicted_types) == [";".join(np.array(TYPES[1])[row]) for row in flagged]
    wrong = int((y.any(1) & (y[np.arange(len(y)), prob.argmax(1)] == 0)).sum())
    assert wrong > 0  # one tile per wrong image, up to gallery_size 3 (plots.gallery: 1 + 1.9 inches a row, 80 dpi)
    assert _height(out / "plots/gallery_wrong_type.png") == round((1 + 1.9 * min(wrong, 3)) * 80)


def test_a_set_with_no_clean_images_says_why_and_writes_every_plot(tmp_path, data):
    m, out, test = run_types(tmp_path, data, clean=False)
    assert m["defect_decision"]["applicable"] is False and "no clean images" in m["defect_decision"]["reason"]
    assert not {"accuracy", "roc_auc", "fp", "fn", "threshold", "threshold_choice", "recall_per_class"} & set(m)
    assert set(m["classes"]) == set(TYPES[1]) and m["type_accuracy"] is not None
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["defect_decision"] == m["defect_decision"]
    for name in PLOTS:
        assert (out / "plots" / name).exists(), name
    assert json.loads((out / "plots/confusion.json").read_text()) == []
    assert json.loads((out / "plots/roc.json").read_text()) == {"roc": []}
    assert (out / "plots/threshold_sweep.csv").read_text() == (
        "threshold,false_positives,false_negatives,chosen_threshold\n"
    )
    for name in ("gallery_false_negatives", "gallery_false_positives"):  # a picture saying why
        assert _height(out / "plots" / f"{name}.png") == round((1 + 1.9) * 80)
    thresholds = json.loads((out / "threshold.json").read_text())
    assert "threshold" not in thresholds and thresholds["defect_decision"] == m["defect_decision"]
    assert set(thresholds["class_thresholds"]) == set(TYPES[1])
    assert len(pd.read_csv(out / "results/predictions.csv")) == len(test)
    assert len(pd.read_csv(out / "results/false_negatives.csv")) == 0

    base = evaluate_baseline(
        defaults().evaluate, typed(data[0][data[0].label == 1], False), test, out / "b.json", out / "plots", TYPES
    )
    assert base["defect_decision"]["applicable"] is False
    assert json.loads((out / "plots/roc_baseline.json").read_text()) == {"roc": []}
    assert add_baseline_comparison(out / "metrics.json", base) is None
    vs = json.loads((out / "metrics.json").read_text())["vs_baseline"]
    assert set(vs) == {"classes", "classes_macro", "type_accuracy"} and vs["type_accuracy"] == 0


def test_the_defect_target_writes_the_type_plots_as_not_applicable(tmp_path, data):
    m, out = run(tmp_path, data, threshold=0.5)
    assert not {"classes", "classes_macro", "type_accuracy", "defect_decision"} & set(m)
    assert json.loads((out / "threshold.json").read_text()) == {"threshold": 0.5, "policy": "fixed"}
    for name in PLOTS:
        assert (out / "plots" / name).exists(), name
    assert json.loads((out / "plots/type_confusion.json").read_text()) == []
    for folder in ("classes_roc", "classes_precision_recall"):
        assert [p.name for p in (out / "plots" / folder).iterdir()] == ["not_applicable.json"]
        assert json.loads((out / "plots" / folder / "not_applicable.json").read_text()) == []
    assert _height(out / "plots/gallery_wrong_type.png") == round((1 + 1.9) * 80)
    assert "top_type" not in pd.read_csv(out / "results/predictions.csv")
