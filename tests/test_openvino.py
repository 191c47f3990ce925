"""The OpenVINO IR of the tiny pipeline: loads without this package, agrees with Keras, serves `steeldefect
predict --engine openvino`, and an IR beyond the limits is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.serve.cli import main
from steeldefect.serve.export import export
from steeldefect.serve.model_files import load_model
from steeldefect.serve.openvino_engine import IRRequest, OpenVINOEngine
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import image_dataset

from helpers import defaults, run, stage_cmd

pytestmark = pytest.mark.slow
TINY = defaults(train={"image_size": [64, 96], "backbone_layer": "conv2_block3_out", "head": {"dense_units": 8}}).train

PLAIN = """
import json, sys
import numpy as np
import openvino as ov
compiled = ov.Core().compile_model(sys.argv[1], "CPU")
probability = compiled(np.load(sys.argv[2]))["probability"].reshape(-1)
assert not [m for m in sys.modules if m.startswith("steeldefect")]
print(json.dumps(probability.tolist()))
"""


def val_paths(pipeline: Path) -> list[str]:
    return [str(pipeline / p) for p in pd.read_csv(pipeline / "data/split/val.csv").path]


def test_ir_loads_with_plain_openvino_within_recorded_tolerance(pipeline, tmp_path):
    meta = json.loads((pipeline / "models/model_meta.json").read_text())
    ir = meta["openvino"]
    assert ir["precision"] == defaults().export.openvino and ir["images_checked"] == len(val_paths(pipeline))
    assert ir["decisions_changed_share"] <= ir["max_changed"] and ir["max_probability_difference"] <= ir["tolerance"]
    paths = val_paths(pipeline)[:4]
    images = np.concatenate([b.numpy() for b in image_dataset(paths, meta["image_size"], batch_size=4)])
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN, str(pipeline / "models" / ir["path"]), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CI": "true"},  # no PYTHONPATH: this package is not importable from there
        check=True,
    )
    plain = np.array(json.loads(proc.stdout))
    keras = load_model(pipeline / "models").predict(images, verbose=0).reshape(-1)
    assert np.max(np.abs(plain - keras)) <= ir["tolerance"]


def test_engines_give_the_same_decisions(pipeline, tmp_path, capsys):
    paths = val_paths(pipeline) + [str(pipeline / p) for p in pd.read_csv(pipeline / "data/split/test.csv").path]
    models = str(pipeline / "models")
    tables = {}
    for engine in ("keras", "openvino", None):
        out = tmp_path / f"{engine}.csv"
        args = ["predict", *paths, "--model-dir", models, "--output", str(out), "--no-progress"]
        assert main(args + (["--engine", engine] if engine else [])) == 0
        tables[engine] = pd.read_csv(out, keep_default_na=False)
        said = capsys.readouterr().out
        assert ("(Keras)" if engine == "keras" else f"(OpenVINO {defaults().export.openvino} IR)") in said
        # the IR is checked on this CPU once, then the pass is read from the cache
        checked = {"keras": "", "openvino": "self-check on this CPU: passed", None: "earlier on this CPU (cached)"}
        assert checked[engine] in said
    keras, ov = tables["keras"], tables["openvino"]
    pd.testing.assert_frame_equal(tables[None], ov)  # the IR exists: openvino is the default
    columns = ["path", "probability", "predicted", "engine", "precision", "error"]
    assert list(keras.columns) == list(ov.columns) == columns
    assert set(keras.engine) == {"keras"} and set(ov.engine) == {"openvino"}
    assert set(keras.precision) == {"fp32"} and set(ov.precision) == {defaults().export.openvino}
    assert list(keras.path) == list(ov.path) == paths
    assert list(keras.predicted) == list(ov.predicted)
    tolerance = json.loads((pipeline / "models/model_meta.json").read_text())["openvino"]["tolerance"]
    assert np.max(np.abs(keras.probability - ov.probability)) <= tolerance
    # the predict stage stays on Keras: its probabilities are the command's with --engine keras
    stage = pd.read_csv(pipeline / "data/predictions/val.csv")
    np.testing.assert_allclose(stage.probability, keras.probability[: len(stage)], atol=1e-6)


def test_engine_openvino_without_ir_is_a_usage_error(pipeline, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(pipeline / "models", models, ignore=shutil.ignore_patterns("openvino"))
    args = ["predict", val_paths(pipeline)[0], "--model-dir", str(models), "--output", str(tmp_path / "p.csv")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--engine", "openvino"])
    assert exit_info.value.code == 2
    assert f"{models / 'openvino/model.xml'} not found" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0  # without the IR the default is keras
    assert "(Keras)" in capsys.readouterr().out


def test_ir_beyond_the_limit_is_refused_and_nothing_written(pipeline, tmp_path):
    """The real export stage, int8, with an absurd tolerance: it must fail before replacing any model file."""
    project = tmp_path / "project"
    for name in ("data/split", "data/synthetic", "models", "metrics/train"):
        shutil.copytree(pipeline / name, project / name)
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["export"].update(openvino="int8", openvino_tolerance=1e-12, openvino_calibration_images=8)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    before = {p.relative_to(project): p.read_bytes() for p in (project / "models").rglob("*") if p.is_file()}
    proc = run(stage_cmd("export"), project, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the OpenVINO int8 IR disagrees with the Keras model" in proc.stderr
    assert "export.openvino_tolerance = 1e-12" in proc.stderr and "nothing was exported" in proc.stderr
    after = {p.relative_to(project): p.read_bytes() for p in (project / "models").rglob("*") if p.is_file()}
    assert after == before  # nothing replaced, no temporary file left behind


def test_openvino_params():
    for key, value, allowed in [
        ("openvino", "fp16", "one of 'none', 'fp32', 'int8'"),
        ("openvino_max_changed", 1.5, "a share in [0, 1]"),
        ("openvino_tolerance", -1, "a number >= 0"),
        ("openvino_calibration_images", 0, "an integer >= 1"),
    ]:
        with pytest.raises(UserError, match=f"export.{key} = .* expected {re.escape(allowed)}"):
            defaults(export={key: value})


TELEMETRY = """
import steeldefect.serve.openvino_engine
import openvino
from openvino_telemetry import Telemetry
assert Telemetry().consent is False
"""


def test_importing_the_engine_declines_openvino_telemetry(tmp_path):
    """`import openvino` alone would make a client id in ~/intel and send an event, unless declined."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    proc = subprocess.run([sys.executable, "-c", TELEMETRY], env={**env, "HOME": str(tmp_path)}, capture_output=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "intel").exists()


def test_int8_export_records_its_check(tmp_path):
    """export() with an int8 request on a tiny model: the IR is written and its figures go into model_meta.json."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"img{i}.jpg"))
        Image.fromarray(rng.integers(0, 255, (40, 250), dtype=np.uint8)).convert("RGB").save(paths[-1])
    keras.utils.set_random_seed(3)
    model, _, _ = build_model(TINY, weights=None)
    model.save_weights(tmp_path / "trained.weights.h5")
    request = IRRequest("int8", paths[:4], paths, threshold=lambda prob: 0.5, max_changed=0.0, tolerance=0.5)
    export(TINY, tmp_path / "trained.weights.h5", tmp_path / "models", paths[:2], {}, False, request)
    meta = json.loads((tmp_path / "models/model_meta.json").read_text())["openvino"]
    assert meta["precision"] == "int8" and meta["calibration_images"] == 4 and meta["images_checked"] == 6
    assert meta["decisions_changed"] == 0 and meta["max_probability_difference"] <= 0.5
    ir = OpenVINOEngine(tmp_path / "models/openvino/model.xml")
    assert ir.input_shape == (None, *TINY.image_size, 3) and ir.names == ["probability"]
