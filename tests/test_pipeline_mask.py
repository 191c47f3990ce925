"""End to end with `train.supervision: mask` and `train.target: classes`: the real `dvc repro` on tiny synthetic data
gives localization metrics, the Dice plot, the test maps (any defect, and one per type), and an exported model the
command uses with `--maps`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from steeldefect.params import load_params
from steeldefect.train.model import build_model

from helpers import TINY_PARAMS, merge, reproduced_project, run

pytestmark = pytest.mark.slow

MASK_PARAMS = merge(
    TINY_PARAMS, {"train": {"supervision": "mask", "target": "classes", "mask": {"crop_size": [64, 128]}}}
)


@pytest.fixture(scope="module")
def mask_pipeline(tmp_path_factory) -> Path:
    return reproduced_project(tmp_path_factory.mktemp("mask_pipeline"), MASK_PARAMS)


def test_localization_metrics_and_plot(mask_pipeline, tmp_path):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], mask_pipeline).stdout)
    metrics = next(iter(shown.values()))["data"]["metrics/evaluate.json"]["data"]
    loc = metrics["localization"]
    test = pd.read_csv(mask_pipeline / "data/split/test.csv")
    # every synthetic defect has a mask; a tiny one can vanish in the resize to 64x400
    assert loc["images_with_mask"] + loc["masks_lost_at_input_size"] == int(test.label.sum())
    assert loc["images_with_mask"] > 0 and loc["defective_without_mask"] == 0
    assert 0 <= loc["dice"] <= 1 and 0 <= loc["iou"] <= loc["dice"] and 0 <= loc["pointing_accuracy"] <= 1
    assert loc["map_stride"] == 8 and loc["map_threshold"] == 0.5
    sweep = pd.read_csv(mask_pipeline / "plots/localization_dice.csv")
    assert len(sweep) == 19 and sweep.dice.between(0, 1).all()
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], mask_pipeline)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "Localization" in html and "map_threshold" in html
    meta = json.loads((mask_pipeline / "models/model_meta.json").read_text())
    assert (meta["supervision"], meta["map_stride"], meta["map_size"]) == ("mask", 8, [8, 50])
    # per type: Dice over the test images with that type, Severstal's mean over (image, type) pairs
    assert list(loc["classes"]) == meta["classes"] and loc["type_pairs"] == len(meta["classes"]) * loc["pairs"]
    assert sum(c["images"] for c in loc["classes"].values()) >= loc["images_with_mask"]
    for c in loc["classes"].values():
        assert c["images"] == 0 or 0 <= c["dice"] <= 1
        assert 0 <= c["mean_dice_pairs"] <= 1 and (c["map_threshold"], c["min_area"]) == (0.5, 0)
    assert 0 <= loc["mean_dice_pairs_types"] <= 1


def test_the_train_stage_writes_the_map_models_weights(mask_pipeline):
    metrics = json.loads((mask_pipeline / "metrics/train/metrics.json").read_text())
    assert metrics["epochs_run"] >= 1 and "probability_auc" in metrics["eval"] and "type_maps_loss" in metrics["eval"]
    names = json.loads((mask_pipeline / "models/model_meta.json").read_text())["classes"]
    model = build_model(load_params(mask_pipeline / "params.yaml").train, None, types=len(names))[0]
    model.load_weights(mask_pipeline / "models/trained.weights.h5")  # maps, probability and types


def test_the_predict_stage_keeps_a_map_per_type(mask_pipeline):
    meta = json.loads((mask_pipeline / "models/model_meta.json").read_text())
    assert len(meta["classes"]) == 4 and "type_maps" in meta  # the built-in data's four types
    with np.load(mask_pipeline / "data/predictions/test_maps.npz") as maps:
        assert maps["type_maps"].shape == (*maps["maps"].shape, 4)
        assert 0 <= maps["type_maps"].min() and maps["type_maps"].max() <= 1
    val = pd.read_csv(mask_pipeline / "data/split/val.csv")
    with np.load(mask_pipeline / "data/predictions/val_maps.npz") as maps:  # for map thresholds chosen on them
        assert list(maps["image_ids"]) == list(val.ImageId) and maps["type_maps"].shape[-1] == 4


def test_map_thresholds_chosen_on_validation_reach_the_command(mask_pipeline, tmp_path):
    """evaluate.map_threshold and min_area auto: one value per type in metrics and models/threshold.json."""
    project = tmp_path / "project"
    shutil.copytree(mask_pipeline, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"] |= {"map_threshold": "auto", "min_area": "auto"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "evaluate"], project)
    loc = json.loads((project / "metrics/evaluate.json").read_text())["localization"]
    names = json.loads((project / "models/model_meta.json").read_text())["classes"]
    assert loc["map_choice"]["policy"] == "auto" and list(loc["map_choice"]["maps"]) == names
    chosen = json.loads((project / "models/threshold.json").read_text())
    assert set(chosen["map_threshold"]) == set(chosen["min_area"]) == set(names)
    assert {n: c["map_threshold"] for n, c in loc["classes"].items()} == chosen["map_threshold"]
    assert loc["map_threshold"] == min(chosen["map_threshold"].values())


def test_map_threshold_change_reruns_only_evaluate(mask_pipeline):
    params = yaml.safe_load((mask_pipeline / "params.yaml").read_text())
    params["evaluate"]["map_threshold"] = 0.3
    (mask_pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert sorted(json.loads(run(["dvc", "status", "--json"], mask_pipeline).stdout)) == ["evaluate"]
    finally:
        run(["git", "checkout", "--", "params.yaml"], mask_pipeline)


def test_the_command_draws_maps_with_the_exported_model(mask_pipeline, tmp_path):
    test = pd.read_csv(mask_pipeline / "data/split/test.csv").head(3)
    paths = [str(mask_pipeline / p) if not Path(p).is_absolute() else p for p in test.path]
    out = tmp_path / "p.csv"
    steeldefect = Path(sys.executable).parent / "steeldefect"
    cmd = [str(steeldefect), "predict", *paths, "--model-dir", "models", "--output", str(out), "--no-progress"]
    run([*cmd, "--maps", str(tmp_path / "maps"), "--defects", str(tmp_path / "defects.csv")], mask_pipeline)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(f"{Path(p).stem}_map.png" for p in paths)
    names = json.loads((mask_pipeline / "models/model_meta.json").read_text())["classes"]
    assert set(pd.read_csv(tmp_path / "defects.csv").type) <= set(names)  # one row per region of each type's map
    for p in paths:  # each type in its colour, a legend strip below the image
        with Image.open(p) as im, Image.open(tmp_path / f"maps/{Path(p).stem}_map.png") as overlay:
            assert overlay.width == im.width and overlay.height > im.height
    df = pd.read_csv(out)
    assert df.defect_area_share.between(0, 1).all() and len(df) == 3
    # the same probabilities as the predict stage
    stage = pd.read_csv(mask_pipeline / "data/predictions/test.csv").set_index("ImageId").probability
    expected = stage[[Path(p).name for p in paths]].to_numpy()
    assert abs(df.probability.to_numpy() - expected).max() < 1e-5  # other batches: float round-off only
