"""Export round trip, safe loading of model.json + weights, the metadata and the serving SavedModel."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.serve.cli import predict
from steeldefect.serve.export import export, model_meta
from steeldefect.serve.inference import predict_paths
from steeldefect.serve.model_files import MODEL_JSON, MODEL_META, MODEL_WEIGHTS, SAVED_MODEL, load_model
from steeldefect.serve.openvino_engine import IR_DIR
from steeldefect.train.model import build_model

from helpers import defaults, run_clean_python

TINY = defaults(train={"image_size": [64, 96], "backbone_layer": "conv2_block3_out", "head": {"dense_units": 8}}).train


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
    # exactly the outputs: no temporary folder left behind
    assert {p.name for p in (root / "models").iterdir()} == {MODEL_JSON, MODEL_WEIGHTS, MODEL_META, SAVED_MODEL, IR_DIR}
    reloaded = load_model(root / "models")
    np.testing.assert_array_equal(predict_paths(reloaded, paths, 2), predict_paths(model, paths, 2))
    meta = json.loads((root / "models" / MODEL_META).read_text())
    assert (meta["supervision"], meta["map_stride"]) == ("image", None)  # read from the model's outputs


def test_predict_keeps_last_partial_batch(exported):
    root, _, paths = exported
    assert len(predict_paths(load_model(root / "models"), paths, batch_size=2)) == 5


def test_predict_paths_names_unreadable_images(exported):
    root, _, paths = exported
    with pytest.raises(UserError, match=r"1 of 3 images cannot be predicted: .*nowhere\.jpg: file not found"):
        predict_paths(load_model(root / "models"), [paths[0], str(root / "nowhere.jpg"), paths[1]], 2)


SERVE = """
import json, sys
sys.modules["steeldefect"] = None  # prove the SavedModel needs neither this package
sys.modules["keras"] = None  # nor Keras
import tensorflow as tf

loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
images = tf.constant([open(path, "rb").read() for path in sys.argv[2:]])
print(json.dumps({
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in serve.structured_input_signature[1].items()},
    "outputs": sorted(serve.structured_outputs),
    "probability": serve(images)["probability"].numpy().tolist(),
}))
"""


@pytest.mark.slow  # a second TensorFlow process
def test_saved_model_serves_jpeg_bytes_like_the_command(exported, tmp_path):
    root, _, paths = exported
    assert predict(paths, root / "models", tmp_path / "out.csv", progress=False) == 0
    expected = pd.read_csv(tmp_path / "out.csv").probability.to_numpy()
    served = run_clean_python(SERVE, str(root / "models" / SAVED_MODEL), *paths)
    assert served["inputs"] == {"image_bytes": ["string", [None]]}
    assert served["outputs"] == ["probability"]  # an image model has no defect map
    np.testing.assert_allclose(served["probability"], expected, rtol=0, atol=1e-5)


def test_saved_model_can_be_disabled(exported, tmp_path):
    root, _, paths = exported
    export(TINY, root / "trained.weights.h5", tmp_path, paths[:2], {"image_size": [64, 96]}, saved_model=False)
    assert [p.name for p in (tmp_path / SAVED_MODEL).iterdir()] == ["README.txt"]
    assert "export.saved_model is false" in (tmp_path / SAVED_MODEL / "README.txt").read_text()
    assert "export.openvino is none" in (tmp_path / IR_DIR / "README.txt").read_text()  # no IR asked for
    assert {p.name for p in tmp_path.iterdir()} == {MODEL_JSON, MODEL_WEIGHTS, MODEL_META, SAVED_MODEL, IR_DIR}


def test_model_meta_says_what_inference_needs():
    train = pd.DataFrame({"md5": ["b", "a"]})
    meta = model_meta(defaults(), train)
    assert meta["image_size"] == [128, 800]
    assert meta["class_meaning"] == {"0": "clean", "1": "defect"}
    assert meta["batch_size"] == defaults().train.batch_size
    assert meta["saved_model"]["signature"] == "serving_default"
    assert "threshold" not in meta  # the evaluate stage writes it (threshold.json)
    assert json.loads(json.dumps(meta)) == meta
    assert model_meta(defaults(export={"saved_model": False}), train)["saved_model"] is None


def test_export_params():
    assert defaults().export.saved_model is True
    assert defaults(export={"saved_model": False}).export.saved_model is False
    with pytest.raises(UserError, match="export.saved_model"):
        defaults(export={"saved_model": "yes"})


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
    smaller = dataclasses.replace(TINY, head=dataclasses.replace(TINY.head, dense_units=4))
    other, _, _ = build_model(smaller, weights=None)
    (tmp_path / MODEL_JSON).write_text((root / "models" / MODEL_JSON).read_text())
    other.save_weights(tmp_path / MODEL_WEIGHTS)
    with pytest.raises(UserError, match="do not match the architecture"):
        load_model(tmp_path)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="run the export stage first"):
        load_model(tmp_path)
