"""Serving a model with defect types (train.target classes): the `classes` output (one probability per type) beside
the defect probability, or alone for a set with no clean images, through export (model_meta.json, the SavedModel,
the OpenVINO IR and its reference set), the predict stage and `steeldefect predict` with both engines and per-type
thresholds."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.serve.cli import main
from steeldefect.serve.export import export, export_model, model_meta
from steeldefect.serve.inference import predict_all
from steeldefect.serve.model_files import SAVED_MODEL, load_model
from steeldefect.serve.openvino_engine import IRRequest, reference_indices
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import image_dataset

from helpers import defaults, repo_params, stage_cmd

SIZE = (64, 96)
NAMES = ["pit", "scratch", "patch"]  # classes.csv's names, in ClassId order: the order of the `classes` output
TOLERANCE = 1e-3
P_COLUMNS = ["p_pit", "p_scratch", "p_patch"]
PARAMS = defaults(train={"target": "classes", "image_size": list(SIZE), "batch_size": 2})


def classes_model(defect: bool, seed: int = 7) -> keras.Model:
    """A seeded one-convolution model with the outputs of build_model(types=3, defect): `classes` (N, 3) and, with
    `defect`, `probability` (N, 1)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SIZE, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu")(keras.layers.Rescaling(1 / 128)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = {"classes": keras.layers.Dense(len(NAMES), activation="sigmoid", name="classes")(x)}
    if defect:
        outputs["probability"] = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inputs, outputs)
    kernel, _ = model.get_layer("classes").get_weights()  # steeper, and off 0.5: types differ between images
    model.get_layer("classes").set_weights([kernel * 10, np.array([-1, 0.5, 1], np.float32)])
    return model


def meta_for(defect: bool) -> dict:
    """model_meta.json's content as the export stage makes it, for a training split with or without clean images."""
    train = pd.DataFrame({"md5": ["a", "b"], "label": [0 if defect else 1, 1]})
    return model_meta(PARAMS, train, NAMES)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Eight JPEGs and two exported classes models with SavedModel and fp32 IR: `with_defect` (a probability too)
    and `types_only` (a set with no clean images)."""
    root = tmp_path_factory.mktemp("types")
    rng = np.random.default_rng(8)
    (root / "images").mkdir()
    for i in range(8):
        pixels = rng.integers(0, 255, (40, 250, 3)) * (i + 1) // 8  # from dark to bright: the types' outputs vary
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"images/img{i}.jpg")
    paths = sorted(str(p) for p in (root / "images").iterdir())
    for name, defect in (("with_defect", True), ("types_only", False)):
        request = IRRequest("fp32", [], paths, threshold=lambda _: 0.5, max_changed=0.0, tolerance=TOLERANCE)
        export_model(classes_model(defect), SIZE, root / name, paths[:2], meta_for(defect), True, request)
    return root, paths


def predict(models: Path, paths: list[str], out: Path, *args: str) -> int:
    return main(["predict", *paths, "--model-dir", str(models), "--output", str(out), "--no-progress", *args])


def test_model_meta_records_the_types(project):
    root, _ = project
    both, alone = (json.loads((root / name / "model_meta.json").read_text()) for name in ("with_defect", "types_only"))
    assert (both["target"], both["classes"], both["defect_output"]) == ("classes", NAMES, True)
    assert (alone["target"], alone["classes"], alone["defect_output"]) == ("classes", NAMES, False)
    assert sorted(both["saved_model"]["outputs"]) == ["classes", "probability"]
    assert (
        list(alone["saved_model"]["outputs"]) == ["classes"]
        and "[None, 3]" in alone["saved_model"]["outputs"]["classes"]
    )
    assert "probability" in both["output"] and "no defect probability" in alone["output"]
    assert "class_thresholds" in alone["decision"] and "predicted = 1" not in alone["decision"]
    # the IR check: decisions on the defect probability when there is one, else on each type at 0.5
    assert (both["openvino"]["decisions_on"], alone["openvino"]["decisions_on"]) == ("probability", "classes")
    assert alone["openvino"]["threshold_keras"] == 0.5 and alone["openvino"]["decisions_changed"] == 0
    assert alone["openvino"]["max_probability_difference"] <= TOLERANCE
    assert "target" not in model_meta(defaults(), pd.DataFrame({"md5": ["a"]}))  # train.target defect: as before


def test_reference_set_has_a_column_per_type(project):
    root, paths = project
    for name, first in (("with_defect", ["keras_probability"]), ("types_only", [])):
        table = pd.read_csv(root / name / "openvino/reference/reference.csv")
        types = ["keras_" + c for c in P_COLUMNS]
        assert list(table.columns) == ["file", *first, *types, "threshold", "tolerance", "max_changed"]
        keras_classes = predict_all(load_model(root / name), paths, 2, SIZE).classes
        rows = [[Path(p).name for p in paths].index(f.split("-", 1)[1]) for f in table.file]  # 00-img3.jpg: img3
        np.testing.assert_allclose(table[types], keras_classes[rows], rtol=0, atol=1e-7)
    # without a defect probability the images are chosen on the types, at 0.5: an image's closest type decides
    prob = np.array([[0.9, 0.1], [0.52, 0.99], [0.2, 0.3], [0.7, 0.3]])
    assert list(reference_indices(prob, 0.5, margin=0.0, n=2)) == [1, 2]  # 1 nearest, 2 of the lowest top type
    assert list(reference_indices(prob, 0.5, margin=0.03, n=2)) == [2, 3]  # 1 is within the margin: left out


@pytest.mark.parametrize("model", ["with_defect", "types_only"])
def test_both_engines_write_the_type_columns(project, tmp_path, capsys, model):
    root, paths = project
    missing = str(tmp_path / "missing.jpg")
    tables = {}
    for engine in ("keras", "openvino"):
        assert predict(root / model, [*paths, missing], tmp_path / f"{engine}.csv", "--engine", engine) == 1
        tables[engine] = pd.read_csv(tmp_path / f"{engine}.csv", keep_default_na=False, dtype={"classes": str})
        said = capsys.readouterr().out
        assert "class thresholds pit: 0.5, scratch: 0.5, patch: 0.5 from default" in said
        assert ("predicted defect" in said) == (model == "with_defect") and "by predicted type: pit: " in said
    keras_table, ov = tables["keras"], tables["openvino"]
    defect = ["probability", "predicted"] if model == "with_defect" else []
    columns = ["path", *defect, *P_COLUMNS, "classes", "engine", "precision", "error"]
    assert list(keras_table.columns) == list(ov.columns) == columns
    good = keras_table.error == ""
    assert (keras_table[~good][P_COLUMNS] == "").all(axis=None) and list(keras_table[~good].classes) == [""]
    got = keras_table[good][P_COLUMNS].astype(float).to_numpy()
    np.testing.assert_allclose(got, classes_model(model == "with_defect").predict(image_batch(paths))["classes"], 1e-5)
    np.testing.assert_allclose(ov[good][P_COLUMNS].astype(float).to_numpy(), got, rtol=0, atol=TOLERANCE)
    listed = [";".join(n for n, p in zip(NAMES, row) if p >= 0.5) for row in got]
    assert list(keras_table.classes[good]) == list(ov.classes[good]) == listed
    assert len(set(listed)) > 1, listed  # the images differ in their types


def image_batch(paths: list[str]) -> np.ndarray:
    return np.concatenate([b.numpy() for b in image_dataset(paths, SIZE, batch_size=len(paths))])


def constant_model(tmp_path: Path, paths: list[str], defect: bool = True) -> Path:
    """An exported classes model whose type probabilities are 0.6, 0.3 and 0.8 on every image."""
    model = classes_model(defect)
    kernel, _ = model.get_layer("classes").get_weights()
    logits = np.log(np.array([0.6, 0.3, 0.8]) / (1 - np.array([0.6, 0.3, 0.8])))
    model.get_layer("classes").set_weights([np.zeros_like(kernel), logits.astype(np.float32)])
    export_model(model, SIZE, tmp_path / "models", paths[:1], meta_for(defect), saved_model=False)
    return tmp_path / "models"


def test_per_type_thresholds_from_the_evaluate_file_and_override(project, tmp_path, capsys):
    _, paths = project
    models, out = constant_model(tmp_path, paths), tmp_path / "p.csv"

    def listed(*args: str) -> set[str]:
        assert predict(models, paths[:2], out, *args) == 0
        table = pd.read_csv(out, keep_default_na=False)
        np.testing.assert_allclose(table.p_pit, 0.6, atol=1e-6)
        return set(table.classes)

    assert listed() == {"pit;patch"}  # 0.5 for each type
    thresholds = {"pit": 0.7, "scratch": 0.2, "patch": 0.5}
    (models / "threshold.json").write_text(json.dumps({"threshold": 0.5, "class_thresholds": thresholds}))
    assert listed() == {"scratch;patch"}  # pit at 0.6 < its 0.7: not listed
    assert (
        f"class thresholds pit: 0.7, scratch: 0.2, patch: 0.5 from {models / 'threshold.json'}"
        in capsys.readouterr().out
    )
    assert listed("--class-threshold", "0.25") == {"pit;scratch;patch"}
    assert "from --class-threshold" in capsys.readouterr().out
    assert listed("--class-threshold", "0.9") == {""}


@pytest.mark.parametrize(
    "content",
    [{"class_thresholds": {"pit": 0.7, "scratch": 2, "patch": 0.5}}, {"class_thresholds": {"pit": 0.7}}, "[1]"],
)
def test_a_bad_class_thresholds_file_is_a_usage_error(project, tmp_path, capsys, content):
    _, paths = project
    models = constant_model(tmp_path, paths, defect=False)  # only the per-type thresholds are read
    (models / "threshold.json").write_text(json.dumps(content))
    with pytest.raises(SystemExit) as e:
        predict(models, paths[:1], tmp_path / "p.csv")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{models / 'threshold.json'}: cannot read the per-type thresholds" in err
    assert not (tmp_path / "p.csv").exists()


def test_a_threshold_option_the_model_cannot_use_is_a_usage_error(project, tmp_path, capsys):
    root, paths = project
    with pytest.raises(SystemExit) as e:
        predict(root / "types_only", paths[:1], tmp_path / "p.csv", "--engine", "keras", "--threshold", "0.3")
    assert e.value.code == 2 and "has no defect probability" in capsys.readouterr().err


def test_no_readable_image_still_gives_every_column(project, tmp_path, capsys):
    root, _ = project
    out = tmp_path / "p.csv"
    assert predict(root / "types_only", [str(tmp_path / "missing.jpg")], out, "--engine", "keras") == 1
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", *P_COLUMNS, "classes", "engine", "precision", "error"]
    assert list(table.iloc[0][[*P_COLUMNS, "classes"]]) == [""] * 4 and table.error[0] == "file not found"
    assert "by predicted type: pit: 0, scratch: 0, patch: 0 (0 with none), 1 unreadable" in capsys.readouterr().out


def test_saved_model_serves_the_classes_output_like_keras(project):
    root, paths = project
    images = tf.constant([Path(p).read_bytes() for p in paths])
    for name, outputs in (("with_defect", ["classes", "probability"]), ("types_only", ["classes"])):
        served = tf.saved_model.load(str(root / name / SAVED_MODEL)).signatures["serving_default"](images)
        assert sorted(served) == outputs and served["classes"].shape == (len(paths), 3)
        expected = predict_all(load_model(root / name), paths, 2, SIZE)
        np.testing.assert_allclose(served["classes"].numpy(), expected.classes, rtol=0, atol=1e-5)


def test_self_check_catches_a_tampered_type_probability(project, tmp_path, capsys):
    root, paths = project
    models = tmp_path / "models"
    shutil.copytree(root / "types_only", models)
    assert predict(models, paths[:1], tmp_path / "p.csv") == 0  # openvino: its IR exists
    assert "self-check on this CPU: passed" in capsys.readouterr().out
    csv = models / "openvino/reference/reference.csv"
    table = pd.read_csv(csv)
    table.loc[3, "keras_p_scratch"] += 2 * TOLERANCE
    table.to_csv(csv, index=False)  # another reference file: another cache key, checked again
    with pytest.raises(SystemExit) as e:
        predict(models, paths[:1], tmp_path / "p.csv")
    err = " ".join(capsys.readouterr().err.split())
    assert e.value.code == 2 and "largest probability difference 0.002 (limit export.openvino_tolerance = 0.001)" in err
    assert "decisions changed at threshold 0.5 on each defect type" in err


def map_classes_model() -> keras.Model:
    """A fully convolutional mask model with types: `classes`, `defect_map`, `type_maps` (stride 4), `probability`."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu")(keras.layers.Rescaling(1 / 128)(inputs))
    defect_map = keras.layers.Conv2D(1, 1, activation="sigmoid", name="defect_map")(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(
        inputs,
        {
            "classes": keras.layers.Dense(len(NAMES), activation="sigmoid", name="classes")(pooled),
            "probability": keras.layers.Dense(1, activation="sigmoid", name="probability")(pooled),
            "defect_map": defect_map,
            "type_maps": keras.layers.Conv2D(len(NAMES), 1, activation="sigmoid", name="type_maps")(x),
        },
    )


@pytest.mark.parametrize(("reference", "shape"), [("keras_maps.npy", (16, 24)), ("keras_type_maps.npy", (16, 24, 3))])
def test_the_self_check_compares_a_mask_model_maps_too(project, tmp_path, capsys, reference, shape):
    """Both the any-defect map and the per-type maps are in the reference set; a change to either is caught."""
    _, paths = project
    request = IRRequest("fp32", [], paths, threshold=lambda _: 0.5, max_changed=0.0, tolerance=TOLERANCE)
    models = tmp_path / "models"
    meta = {"image_size": list(SIZE), "batch_size": 2, "classes": NAMES}
    export_model(map_classes_model(), SIZE, models, paths[:2], meta, False, request)
    maps = models / "openvino/reference" / reference
    assert np.load(maps).shape == (len(pd.read_csv(maps.with_name("reference.csv"))), *shape)
    np.save(maps, np.load(maps) + 2 * TOLERANCE)
    with pytest.raises(SystemExit) as e:
        predict(models, paths[:1], tmp_path / "p.csv")
    assert e.value.code == 2 and "largest probability difference 0.002" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("engine", ["keras", "openvino"])
def test_a_mask_model_with_types_lists_and_draws_each_type(project, tmp_path, capsys, engine):
    """--defects: one row per region of each type's map, named by its type, at the per-type map thresholds of
    threshold.json; --maps: each type in its colour, with a legend strip below the image."""
    from steeldefect.serve.maps import LEGEND_LINE
    from steeldefect.serve.regions import defect_table

    _, paths = project
    models, shown = tmp_path / "models", paths[:3]
    request = IRRequest("fp32", [], paths, threshold=lambda _: 0.5, max_changed=0.0, tolerance=TOLERANCE)
    meta = {"image_size": list(SIZE), "batch_size": 2, "classes": NAMES}
    export_model(map_classes_model(), SIZE, models, paths[:2], meta, False, request)
    out = map_classes_model().predict(image_batch(shown), verbose=0)
    # each type's median: about half of its cells count, so every type has regions
    thresholds = {n: float(np.median(out["type_maps"][..., k])) for k, n in enumerate(NAMES)}
    (models / "threshold.json").write_text(json.dumps({"threshold": 0.5, "map_threshold": thresholds, "min_area": 0}))
    defects, maps_dir = tmp_path / "defects.csv", tmp_path / "maps"
    args = ("--engine", engine, "--defects", str(defects), "--maps", str(maps_dir))
    assert predict(models, shown, tmp_path / "p.csv", *args) == 0
    said = capsys.readouterr().out
    assert "map threshold " + ", ".join(f"{n}: {t:g}" for n, t in thresholds.items()) in said
    table = pd.read_csv(defects)
    assert set(table.type) == set(NAMES)
    if engine == "keras":  # the same rows as the defect list of the Keras model's own type maps
        expected = defect_table(
            shown, list(out["defect_map"][..., 0]), thresholds, 0, None, None, list(out["type_maps"]), NAMES
        )
        pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    for path in shown:
        with Image.open(path) as im, Image.open(maps_dir / f"{Path(path).stem}_map.png") as overlay:
            assert overlay.size == (im.width, im.height + LEGEND_LINE)


def test_export_builds_the_types_model_from_the_meta(project, tmp_path):
    """export(): build_model with the number of types of meta's classes and its defect_output, trained weights
    loaded; weights of another number of types are refused."""
    _, paths = project
    train = {"image_size": list(SIZE), "backbone_layer": "conv2_block3_out", "head": {"dense_units": 4}}
    p = defaults(train={**train, "target": "classes"}).train
    model, _, _ = build_model(p, weights=None, types=3, defect=False)
    model.save_weights(tmp_path / "w.weights.h5")
    meta = {"image_size": list(SIZE), "classes": NAMES, "defect_output": False, "target": "classes"}
    export(p, tmp_path / "w.weights.h5", tmp_path / "models", paths[:2], meta, saved_model=False)
    result = predict_all(load_model(tmp_path / "models"), paths, 2)
    assert result.probability is None and result.classes.shape == (len(paths), 3)
    np.testing.assert_array_equal(result.classes, predict_all(model, paths, 2).classes)
    with pytest.raises(UserError, match="do not fit the model the params describe with the 2 defect types"):
        export(p, tmp_path / "w.weights.h5", tmp_path / "other", paths[:1], {**meta, "classes": NAMES[:2]}, False)


def test_predict_stage_writes_a_column_per_type(project, tmp_path, monkeypatch):
    """stages/predict.py (in this process, with dvc.yaml's arguments): ImageId, label, [probability,] p_<name>."""
    root, paths = project
    (tmp_path / "data/split").mkdir(parents=True)
    split = pd.DataFrame({"ImageId": [Path(p).name for p in paths], "label": 1, "path": paths})
    for name in ("val", "test"):
        split.to_csv(tmp_path / f"data/split/{name}.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"train": {"batch_size": 3}})))
    monkeypatch.chdir(tmp_path)
    for model, first in (("with_defect", ["probability"]), ("types_only", [])):
        shutil.rmtree(tmp_path / "models", ignore_errors=True)
        shutil.copytree(root / model, tmp_path / "models")
        monkeypatch.setattr(sys, "argv", stage_cmd("predict")[1:])
        runpy.run_path(stage_cmd("predict")[1], run_name="__main__")
        table = pd.read_csv(tmp_path / "data/predictions/test.csv")
        assert list(table.columns) == ["ImageId", "label", *first, *P_COLUMNS]
        expected = predict_all(load_model(root / model), paths, 2, SIZE).classes
        np.testing.assert_allclose(table[P_COLUMNS].to_numpy(), expected, rtol=0, atol=1e-6)
