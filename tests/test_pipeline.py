"""End to end: the real `dvc repro` on tiny synthetic data in a temporary git repository."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import yaml

from helpers import run

pytestmark = pytest.mark.slow

OUTPUTS = [
    "data/synthetic/train.csv",
    "data/synthetic/defect_and_no_defect.csv",
    "data/prepared/images.csv",
    "data/prepared/masks.csv",
    "data/split/train.csv",
    "data/split/val.csv",
    "data/split/test.csv",
    "models/trained.weights.h5",
    "models/model.json",
    "models/model.weights.h5",
    "models/model_meta.json",
    "models/openvino/model.xml",
    "data/predictions/test.csv",
    "data/predictions/val.csv",
    "data/evaluation/predictions.csv",
    "data/evaluation/false_positives.csv",
    "data/evaluation/false_negatives.csv",
    "metrics/data.json",
    "metrics/split.json",
    "metrics/train/metrics.json",
    "metrics/evaluate.json",
    "plots/samples.png",
    "plots/gallery_random.png",
    "plots/gallery_false_negatives.png",
    "plots/gallery_false_positives.png",
    "plots/confusion.json",
    "plots/roc.json",
    "plots/precision_recall.json",
    "plots/threshold_sweep.csv",
    "metrics/train/plots/metrics/train/loss.tsv",
    "metrics/train/plots/metrics/eval/loss.tsv",
]


def test_every_output_exists(pipeline):
    missing = [p for p in OUTPUTS if not (pipeline / p).is_file()]
    assert not missing


def test_metrics_are_consistent(pipeline):
    m = json.loads((pipeline / "metrics/evaluate.json").read_text())
    test = pd.read_csv(pipeline / "data/split/test.csv")
    predictions = pd.read_csv(pipeline / "data/predictions/test.csv")
    assert m["tp"] + m["tn"] + m["fp"] + m["fn"] == len(test) == len(predictions) == m["images"]
    assert m["tp"] + m["fn"] == test.label.sum()
    assert 0 <= m["accuracy"] <= 1 and m["threshold"] == 0.5
    assert sorted(predictions.ImageId) == sorted(test.ImageId)  # no dropped partial batch
    fp = pd.read_csv(pipeline / "data/evaluation/false_positives.csv")
    fn = pd.read_csv(pipeline / "data/evaluation/false_negatives.csv")
    assert (len(fp), len(fn)) == (m["fp"], m["fn"])
    data = json.loads((pipeline / "metrics/data.json").read_text())
    assert data["images"] == 60 == data["defective"] + data["clean"]
    splits = [pd.read_csv(pipeline / f"data/split/{s}.csv") for s in ("train", "val", "test")]
    assert sum(len(s) for s in splits) == 60
    epochs = pd.read_csv(pipeline / "metrics/train/plots/metrics/eval/loss.tsv", sep="\t")
    assert 1 <= len(epochs) <= 3


def test_second_repro_does_nothing(pipeline):
    out = run(["dvc", "repro"], pipeline).stdout
    assert "Running stage" not in out
    assert run(["dvc", "status"], pipeline).stdout.strip() == "Data and pipelines are up to date."


def test_threshold_change_reruns_only_export_and_evaluate(pipeline):
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["evaluate"]["threshold"] = 0.2
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = json.loads(run(["dvc", "status", "--json"], pipeline).stdout)
        # export's OpenVINO check counts decisions at the threshold; the Keras files it rewrites are
        # byte-identical, so predict does not rerun
        assert sorted(changed) == ["evaluate", "export"]
        out = run(["dvc", "repro"], pipeline).stdout
        assert "Running stage 'evaluate'" in out and "Running stage 'predict'" not in out
        assert json.loads((pipeline / "metrics/evaluate.json").read_text())["threshold"] == 0.2
        params_diff = run(["dvc", "params", "diff", "--json"], pipeline).stdout
        assert "evaluate.threshold" in params_diff
        metrics_diff = json.loads(run(["dvc", "metrics", "diff", "--json"], pipeline).stdout)
        assert metrics_diff["metrics/evaluate.json"]["threshold"] == {"old": 0.5, "new": 0.2, "diff": -0.3}
    finally:
        run(["git", "checkout", "--", "params.yaml"], pipeline)
        run(["dvc", "checkout", "-q"], pipeline, check=False)
        run(["dvc", "repro"], pipeline)


def test_plots_show_writes_html(pipeline, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], pipeline)
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Confusion matrix", "ROC", "Loss", "Accuracy", "gallery_false_negatives.png"):
        assert title in html


def test_forced_rerun_is_identical(pipeline):
    """One seed drives everything: rerunning every stage gives the same weights, SavedModel and metrics, so
    `dvc.lock` and every file in git stay as they were (`git status` clean)."""
    files = [
        "models/trained.weights.h5",
        "models/model.weights.h5",
        "metrics/evaluate.json",
        "metrics/train/metrics.json",
        "data/predictions/test.csv",
        "data/synthetic/train.csv",
        *(str(f.relative_to(pipeline)) for f in sorted((pipeline / "models/saved_model").rglob("*")) if f.is_file()),
    ]
    assert "models/saved_model/fingerprint.pb" in files
    before = {f: hashlib.md5((pipeline / f).read_bytes()).hexdigest() for f in files}
    run(["dvc", "repro", "--force"], pipeline)
    after = {f: hashlib.md5((pipeline / f).read_bytes()).hexdigest() for f in files}
    assert after == before
    assert run(["git", "status", "--porcelain"], pipeline).stdout == ""
