"""Export round trip and safe loading of model.json + weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.export import MODEL_JSON, MODEL_WEIGHTS, export, load_model
from steeldefect.inference import predict_paths
from steeldefect.model import build_model
from steeldefect.params import HeadParams, TrainParams

TINY = TrainParams(image_size=(64, 96), backbone_layer="conv2_block3_out", head=HeadParams(dense_units=8))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 250), dtype=np.uint8)).convert("RGB").save(path)
        paths.append(str(path))
    model, _, _ = build_model(TINY, weights=None)
    model.save_weights(root / "trained.weights.h5")
    export(TINY, root / "trained.weights.h5", root / "models", paths[:2], {"image_size": [64, 96]})
    return root, model, paths


def test_export_round_trip(exported):
    root, model, paths = exported
    assert {p.name for p in (root / "models").iterdir()} == {MODEL_JSON, MODEL_WEIGHTS, "model_meta.json"}
    reloaded = load_model(root / "models")
    np.testing.assert_array_equal(predict_paths(reloaded, paths, 2), predict_paths(model, paths, 2))


def test_predict_keeps_last_partial_batch(exported):
    root, _, paths = exported
    assert len(predict_paths(load_model(root / "models"), paths, batch_size=2)) == 5


def test_lambda_layer_is_refused(exported, tmp_path):
    root, _, _ = exported
    config = json.loads((root / "models" / MODEL_JSON).read_text())
    config["config"]["layers"].append(
        {
            "class_name": "Lambda",
            "module": "keras.layers",
            "name": "evil",
            "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {"code": "print(1)"}}},
            "inbound_nodes": [],
        }
    )
    (tmp_path / MODEL_JSON).write_text(json.dumps(config))
    (tmp_path / MODEL_WEIGHTS).write_bytes((root / "models" / MODEL_WEIGHTS).read_bytes())
    with pytest.raises(UserError, match="refused to load"):
        load_model(tmp_path)


def test_mismatched_weights_are_refused(exported, tmp_path):
    root, _, _ = exported
    other, _, _ = build_model(dataclasses.replace(TINY, head=HeadParams(dense_units=4)), weights=None)
    (tmp_path / MODEL_JSON).write_text((root / "models" / MODEL_JSON).read_text())
    other.save_weights(tmp_path / MODEL_WEIGHTS)
    with pytest.raises(UserError, match="do not match the architecture"):
        load_model(tmp_path)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="run the export stage first"):
        load_model(tmp_path)
