"""The classical baseline: deterministic features, its stage in the pipeline, and the comparison with the deep
model (vs_baseline keys, the warning, sorting experiments by the difference)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steeldefect.data.dataset import split
from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import make_image
from steeldefect.data.types import multi_hot
from steeldefect.errors import UserError
from steeldefect.evaluate.baseline import classifier, features, image_features, run_baseline
from steeldefect.evaluate.evaluation import COMPARED, baseline_warning, compare_with_baseline

from helpers import SHARED_DATA, defaults, run, stage_cmd


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pd.DataFrame:
    """40 real synthetic 1600x256 JPEGs (about half defective): ImageId, path, label, classes (the defect types)."""
    folder = tmp_path_factory.mktemp("baseline_images")
    rows = []
    for i in range(40):
        img, masks = make_image(defaults().synthesize, seed=3, index=i)
        path = folder / f"img_{i:02d}.jpg"
        Image.fromarray(img).convert("RGB").save(path, "JPEG", quality=90)
        rows.append((path.name, str(path), int(bool(masks)), " ".join(map(str, sorted(masks)))))
    return pd.DataFrame(rows, columns=["ImageId", "path", "label", "classes"])


def test_features_are_deterministic_and_differ_between_images(images):
    first = features(images.path[:4], (128, 128))
    again = features(images.path[:4], (128, 128))
    assert first.shape == (4, 10 + 18 + 8 * 8 * 8 + 5) and first.dtype == np.float64
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


def test_lbp_histograms_are_shares_and_intensity_statistics_are_scaled():
    grey = np.random.default_rng(0).integers(0, 256, (64, 96), dtype=np.uint8)
    f = image_features(grey)
    assert f[:10].sum() == pytest.approx(1) and f[10:28].sum() == pytest.approx(1)
    assert f[-5] == pytest.approx(grey.mean() / 255, abs=1e-6)  # mean, then std and percentiles
    assert len(f) == 10 + 18 + 8 * (64 // 16) * (96 // 16) + 5


def test_run_baseline_is_seeded_and_scores_every_image(images):
    train, val, test = images[:24], images[24:32], images[32:]
    p = defaults(baseline={"max_iter": 30})
    a = run_baseline(train, val, test, p.baseline, 1, p.evaluate)
    b = run_baseline(train, val, test, p.baseline, 1, p.evaluate)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert list(a.test.ImageId) == list(test.ImageId) and list(a.val.ImageId) == list(val.ImageId)
    assert a.test.probability.between(0, 1).all()
    assert a.metrics["tp"] + a.metrics["tn"] + a.metrics["fp"] + a.metrics["fn"] == len(test)
    assert a.metrics["threshold_choice"] == {"threshold": 0.5, "policy": "fixed"}


def test_run_baseline_uses_evaluates_threshold_policy(images):
    train, val, test = images[:24], images[24:32], images[32:]
    p = defaults(baseline={"max_iter": 30}, evaluate={"threshold": "auto"})
    r = run_baseline(train, val, test, p.baseline, 1, p.evaluate)
    choice = r.metrics["threshold_choice"]
    assert choice["policy"] == "auto" and choice["threshold"] == r.metrics["threshold"]
    assert choice["threshold"] in set(r.val.probability)  # chosen among the validation probabilities


TYPES = (["1", "2", "3", "4"], ["roll", "pit", "scratch", "patch"])


def test_baseline_per_type_one_vs_rest(images):
    train, val, test = images[:24], images[24:32], images[32:]
    p = defaults(baseline={"max_iter": 30})
    r = run_baseline(train, val, test, p.baseline, 1, p.evaluate, TYPES)
    assert list(r.test.columns) == ["ImageId", "label", "probability", "p_roll", "p_pit", "p_scratch", "p_patch"]
    plain = run_baseline(train, val, test, p.baseline, 1, p.evaluate)
    pd.testing.assert_series_equal(r.test.probability, plain.test.probability)  # the defect part as without types
    # type 3 (scratch): a booster on "carries type 3" over the same features
    booster = classifier(p.baseline, 1).fit(features(train.path, (128, 128)), multi_hot(train.classes, TYPES[0])[:, 2])
    np.testing.assert_allclose(r.test.p_scratch, booster.predict_proba(features(test.path, (128, 128)))[:, 1])
    assert "2" not in " ".join(train.classes)  # no pit in training: its probability is that share, 0
    assert (r.test.p_pit == 0).all() and (r.val.p_pit == 0).all()
    assert set(r.metrics["classes"]) == set(TYPES[1]) and "classes_macro" in r.metrics and "roc_auc" in r.metrics
    keys = {"roc_auc", "average_precision", "precision", "recall", "f1", "threshold", "support"}
    assert set(r.metrics["classes"]["scratch"]) == keys


def test_baseline_on_a_set_with_no_clean_images_skips_the_defect_classifier(images):
    defective = images[images.label == 1]
    train, val, test = defective[:12], defective[12:15], defective[15:]
    p = defaults(baseline={"max_iter": 30})
    r = run_baseline(train, val, test, p.baseline, 1, p.evaluate, TYPES)
    assert list(r.test.columns) == ["ImageId", "label", "p_roll", "p_pit", "p_scratch", "p_patch"]
    assert r.metrics["defect_decision"]["applicable"] is False and "accuracy" not in r.metrics
    assert r.metrics["type_accuracy_images"] == len(test)
    with pytest.raises(UserError, match="train.target: classes"):  # train.target defect cannot learn from it
        run_baseline(train, val, test, p.baseline, 1, p.evaluate)


def test_compare_is_deep_minus_baseline():
    deep = {k: 0.9 for k in COMPARED} | {"roc_auc": None}
    base = {k: 0.7 for k in COMPARED}
    diff = compare_with_baseline(deep, base)
    assert diff["roc_auc"] is None and diff["balanced_accuracy"] == pytest.approx(0.2)
    assert baseline_warning(deep, base) is None


def test_warning_names_each_metric_where_the_deep_model_is_worse():
    deep = {"roc_auc": 0.78, "average_precision": 0.95, "balanced_accuracy": 0.62}
    base = {"roc_auc": 0.966, "average_precision": 0.944, "balanced_accuracy": 0.90}
    warning = baseline_warning(deep, base)
    assert warning.startswith("WARNING: the deep model is worse than the classical baseline")
    assert "ROC AUC 0.780 vs 0.966 (-0.186)" in warning and "balanced accuracy 0.620 vs 0.900" in warning
    assert "average precision" not in warning


@pytest.mark.slow
def test_stage_runs_in_the_pipeline(pipeline):
    status = json.loads(run(["dvc", "status", "--json"], pipeline).stdout)
    assert "baseline" not in status
    split_test = pd.read_csv(pipeline / "data/split/test.csv")
    probs = pd.read_csv(pipeline / "data/baseline/test.csv")
    assert list(probs.columns) == ["ImageId", "label", "probability"]
    assert list(probs.ImageId) == list(split_test.ImageId)
    assert len(pd.read_csv(pipeline / "data/baseline/val.csv")) == len(pd.read_csv(pipeline / "data/split/val.csv"))
    deep = json.loads((pipeline / "metrics/evaluate.json").read_text())
    base = json.loads((pipeline / "metrics/baseline.json").read_text())
    for key in ("roc_auc", "average_precision", "balanced_accuracy", "tp", "tn", "fp", "fn", "threshold_choice"):
        assert key in base
    assert base["tp"] + base["tn"] + base["fp"] + base["fn"] == len(split_test)
    assert set(deep["vs_baseline"]) == set(COMPARED)
    assert deep["vs_baseline"]["balanced_accuracy"] == pytest.approx(
        deep["balanced_accuracy"] - base["balanced_accuracy"], abs=1e-6
    )
    shown = run(["dvc", "metrics", "show", "--json"], pipeline).stdout
    assert "metrics/baseline.json" in shown and "vs_baseline" in shown
    plots = json.loads((pipeline / "plots/roc_baseline.json").read_text())["roc"]
    assert plots[0] == {"fpr": 0.0, "tpr": 0.0, "threshold": 1.0}


@pytest.mark.slow
def test_roc_and_precision_recall_plots_show_both_models(pipeline, tmp_path):
    # -o: the images of the plots go there, not into the shared pipeline project (left dirty otherwise)
    shown = json.loads(run(["dvc", "plots", "show", "--json", "-o", str(tmp_path / "plots")], pipeline).stdout)["data"]
    for title, stem in (("ROC", "roc"), ("Precision-recall", "precision_recall")):
        (plot,) = [p for name, p in shown.items() if name.startswith(title)]
        values = plot[0]["content"]["data"]["values"]
        assert {v["filename"] for v in values} == {f"{stem}.json", f"{stem}_baseline.json"}


def _evaluate_copy(pipeline: Path, tmp_path: Path, probability) -> tuple[str, dict]:
    """Run stages/evaluate.py in a copy of the pipeline whose deep test probabilities are replaced."""
    root = tmp_path / "copy"
    shutil.copytree(pipeline, root, symlinks=True, ignore=shutil.ignore_patterns(".dvc", ".git"))
    pred = pd.read_csv(root / "data/predictions/test.csv")
    pred.assign(probability=probability(pred.label)).to_csv(root / "data/predictions/test.csv", index=False)
    out = run(stage_cmd("evaluate"), root)
    return out.stderr, json.loads((root / "metrics/evaluate.json").read_text())


@pytest.mark.slow
def test_warning_fires_when_the_deep_model_is_made_worse(pipeline, tmp_path):
    stderr, m = _evaluate_copy(pipeline, tmp_path, lambda y: 1.0 - y)  # every image ranked the wrong way
    assert m["roc_auc"] == 0 and m["vs_baseline"]["roc_auc"] < 0
    assert "WARNING: the deep model is worse than the classical baseline" in stderr and "ROC AUC 0.000" in stderr


@pytest.mark.slow
def test_no_warning_when_the_deep_model_is_perfect(pipeline, tmp_path):
    stderr, m = _evaluate_copy(pipeline, tmp_path, lambda y: y.astype(float))
    assert m["roc_auc"] == 1 and m["vs_baseline"]["roc_auc"] >= 0
    assert "WARNING" not in stderr


@pytest.mark.slow
def test_experiments_sort_by_the_difference(pipeline):
    """Two experiments that change only the baseline (only baseline and evaluate rerun), sorted both ways."""
    for max_iter in (1, 100):
        run(["dvc", "exp", "run", "--temp", "-S", f"baseline.max_iter={max_iter}"], pipeline)
    try:
        key = "metrics/evaluate.json:vs_baseline.roc_auc"
        orders = {}
        for order in ("asc", "desc"):
            csv = run(["dvc", "exp", "show", "--csv", "--sort-by", key, "--sort-order", order], pipeline).stdout
            table = pd.read_csv(pd.io.common.StringIO(csv))
            orders[order] = table[table.typ.str.startswith("branch")]["vs_baseline.roc_auc"].tolist()
        assert len(orders["asc"]) == 2 and orders["asc"] == sorted(orders["asc"])
        assert orders["desc"] == orders["asc"][::-1]
    finally:
        run(["dvc", "exp", "remove", "--all-commits"], pipeline, check=False)


@pytest.mark.slow
def test_baseline_clears_0_95_on_magnetic_tile():
    """The issue's bar, on the seed-0 70/15/15 split of the real magnetic-tile images."""
    source = SHARED_DATA / "magnetic-tile"
    if not source.is_dir():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true and the real data {source} is missing", pytrace=False)
        pytest.skip(f"shared data {source} not present")
    images, _, _, _ = prepare(source, "fail", defaults().data)
    parts, _ = split(images, 0.15, 0.15, seed=0)
    p = defaults()
    result = run_baseline(parts["train"], parts["val"], parts["test"], p.baseline, p.seed, p.evaluate)
    assert result.metrics["roc_auc"] >= 0.95
