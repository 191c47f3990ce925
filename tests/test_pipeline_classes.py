"""End to end with train.target classes: `dvc exp run` on type folders with a clean folder and without one, then
`steeldefect predict` with both engines on the exported model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import BIN, TINY_PARAMS, make_project, merge, run, type_folders

pytestmark = pytest.mark.slow

TYPES = ["band", "pit", "scratch"]
PARAMS = merge(TINY_PARAMS, {"train": {"image_size": [64, 64], "epochs": 10}, "export": {"saved_model": False}})


def metrics_shown(root: Path) -> dict:
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root).stdout)
    return {k: v["data"] for k, v in next(iter(shown.values()))["data"].items()}


@pytest.fixture(scope="module")
def with_clean(tmp_path_factory) -> Path:
    """Type folders and a clean folder, trained with a threshold per type chosen on validation."""
    tmp = tmp_path_factory.mktemp("classes")
    tree = type_folders(tmp / "types", clean=True)
    (tmp / "project").mkdir()
    root = make_project(tmp / "project", PARAMS)
    own_cache = {"STEELDEFECT_CACHE_DIR": str(tmp / "cache")}  # not the session's: test_runtime counts its entries
    auto = ["-S", "evaluate.class_threshold=auto"]
    run(["dvc", "exp", "run", "-S", f"data.source={tree}", "-S", "train.target=classes", *auto], root, env=own_cache)
    return root


def test_every_type_has_its_metrics_beside_the_defect_decision(with_clean):
    shown = metrics_shown(with_clean)["metrics/evaluate.json"]  # dvc leaves out null values: the file has them all
    assert {n for n in TYPES if shown["classes"][n].get("roc_auc") is not None} == set(TYPES)
    evaluate = json.loads((with_clean / "metrics/evaluate.json").read_text())
    assert set(evaluate["classes"]) == set(TYPES)
    for name in TYPES:
        keys = {"roc_auc", "average_precision", "precision", "recall", "f1", "threshold", "support"}
        assert keys <= set(evaluate["classes"][name]) and evaluate["classes"][name]["support"] > 0
    assert evaluate["class_threshold_choice"]["policy"] == "auto"
    assert 0 <= evaluate["type_accuracy"] <= 1 and evaluate["classes_macro"]["types_counted"] == 3
    assert evaluate["tp"] + evaluate["fn"] > 0 and evaluate["fp"] + evaluate["tn"] > 0  # clean images: the decision
    assert set(evaluate["vs_baseline"]["classes"]) == set(TYPES)
    predictions = pd.read_csv(with_clean / "data/predictions/test.csv")
    assert [f"p_{n}" for n in TYPES] == [c for c in predictions.columns if c.startswith("p_")]
    assert "probability" in predictions.columns
    plots = json.loads(run(["dvc", "plots", "show", "--json"], with_clean).stdout)["data"]
    assert any(k.startswith("Defect types") for k in plots), sorted(plots)
    assert any("classes_roc" in k for k in plots), sorted(plots)


@pytest.mark.parametrize("engine", ["keras", "openvino"])
def test_the_command_applies_the_chosen_threshold_per_type(with_clean, engine, tmp_path):
    images = pd.read_csv(with_clean / "data/split/test.csv").path
    out = tmp_path / "predictions.csv"
    cmd = [str(BIN / "steeldefect"), "predict", *images, "--model-dir", "models", "--output", str(out)]
    run([*cmd, "--engine", engine, "--no-progress"], with_clean)
    table = pd.read_csv(out, keep_default_na=False)
    thresholds = json.loads((with_clean / "models/threshold.json").read_text())["class_thresholds"]
    assert set(thresholds) == set(TYPES) and len(set(thresholds.values())) > 1  # chosen per type
    for i, row in table.iterrows():
        listed = {n for n in TYPES if row[f"p_{n}"] >= thresholds[n]}
        assert set(filter(None, str(row["classes"]).split(";"))) == listed, i
    assert "probability" in table.columns and (table.engine == engine).all()


def test_type_folders_without_a_clean_folder_run_every_stage(tmp_path):
    tree = type_folders(tmp_path / "types")
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", PARAMS)
    refused = run(["dvc", "exp", "run", "-S", f"data.source={tree}"], root, check=False)
    assert refused.returncode != 0 and "train.target: classes" in refused.stdout + refused.stderr
    lean = ["-S", "export.openvino=none"]  # the IR of a model with no defect probability: tests/test_types_serve.py
    run(["dvc", "exp", "run", "-S", f"data.source={tree}", "-S", "train.target=classes", *lean], root)
    shown = metrics_shown(root)
    assert shown["metrics/data.json"]["has_clean_images"] is False
    evaluate = shown["metrics/evaluate.json"]
    assert evaluate["defect_decision"]["applicable"] is False and "clean" in evaluate["defect_decision"]["reason"]
    assert "accuracy" not in evaluate and "fp" not in evaluate  # not applicable: not made up
    assert set(evaluate["classes"]) == set(TYPES) and evaluate["type_accuracy"] is not None
    predictions = pd.read_csv(root / "data/predictions/test.csv")
    assert "probability" not in predictions.columns and {f"p_{n}" for n in TYPES} <= set(predictions.columns)
