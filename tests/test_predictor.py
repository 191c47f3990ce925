"""The inference session (serve/predictor.py): image bytes predict as their files do, the result is data and notices,
the line side imports no training code, and an OpenVINO setting that does not compile is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.serve.export import export_model
from steeldefect.serve.openvino_engine import IR_DIR, IR_XML, IRRequest, OpenVINOEngine
from steeldefect.serve.predictor import Predictor

from helpers import tiny_image_model

SIZE = (64, 96)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny model (no training) exported with an fp32 IR and its reference set, and 6 JPEGs."""
    root = tmp_path_factory.mktemp("predictor")
    (root / "images").mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 250, 3), dtype=np.uint8)).save(root / f"images/img{i}.jpg")
    paths = sorted(str(p) for p in (root / "images").iterdir())
    request = IRRequest("fp32", [], paths, threshold=lambda p: 0.5, max_changed=0.5, tolerance=1e-3, batch_size=4)
    meta = {"image_size": list(SIZE), "batch_size": 4}
    export_model(tiny_image_model(SIZE, seed=3), SIZE, root / "models", paths[:2], meta, False, request)
    return root / "models", paths


def test_bytes_predict_as_their_files(models):
    folder, paths = models
    predictor = Predictor(folder, "keras")
    assert predictor.outputs == ["probability"] and predictor.threshold == 0.5 and predictor.engine == "keras"
    assert any(n.startswith("threshold 0.5 from default") for n in predictor.notices)
    from_files = predictor.predict(paths)
    data = [Path(p).read_bytes() for p in paths] + [b"", b"not an image"]
    from_bytes = predictor.predict(data, names=[*paths, "empty", "garbage"])
    assert list(from_bytes.table.columns) == ["path", "probability", "predicted", "engine", "precision", "error"]
    pd.testing.assert_frame_equal(from_bytes.table[: len(paths)], from_files.table)
    assert from_bytes.failed == [6, 7] and "not a readable image" in from_bytes.table.error[7]
    assert from_bytes.summary.endswith(", 2 unreadable") and not from_files.failed
    assert predictor.predict(data[:1]).table.path[0] == "image 0"  # bytes without names
    decoded = [predictor.decode(d) for d in data]  # as the service decodes each request before its batch
    assert [d is None for d in decoded] == [False] * len(paths) + [True, True]
    ahead = predictor.predict(data, names=[*paths, "empty", "garbage"], decoded=decoded)
    pd.testing.assert_frame_equal(ahead.table, from_bytes.table)


def test_version_is_the_exports_and_both_engines_agree(models):
    folder, paths = models
    keras, ir = Predictor(folder, "keras"), Predictor(folder)
    assert ir.engine == "openvino" and ir.precision == "fp32" and ir.notices[0].startswith("self-check")
    assert keras.version == ir.version and len(keras.version) == 16
    a, b = keras.predict(paths).table, ir.predict(paths).table
    assert np.allclose(a.probability, b.probability, atol=1e-3) and set(b.engine) == {"openvino"}


def test_unsupported_openvino_setting_is_refused_by_name(models):
    """A real compile with a precision hint OpenVINO does not know: a UserError naming it, no traceback."""
    folder, _ = models
    with pytest.raises(UserError, match=r"INFERENCE_PRECISION_HINT=no-such-precision .*Wrong value") as e:
        OpenVINOEngine(folder / IR_DIR / IR_XML, config={"INFERENCE_PRECISION_HINT": "no-such-precision"})
    assert "--engine keras" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"PERFORMANCE_HINT=FASTEST"):
        OpenVINOEngine(folder / IR_DIR / IR_XML, hint="FASTEST")


LINE_SIDE = """
import json, sys
from pathlib import Path
from steeldefect.serve.cli import main
from steeldefect.serve.predictor import Predictor
folder, out, *paths = sys.argv[1:]
code = main(["predict", *paths, "--model-dir", folder, "--output", out, "--no-progress", "--engine", "openvino"])
table = Predictor(folder).predict([Path(p).read_bytes() for p in paths]).table
print(json.dumps({"code": code, "probability": table.probability.tolist(),
                  "train": [m for m in sys.modules if m.startswith("steeldefect.train")]}))
"""


def test_the_line_side_imports_no_training_code(models, tmp_path):
    """`steeldefect predict` on the OpenVINO IR (self-check included), then a Predictor on image bytes, in a fresh
    process: no steeldefect.train module is ever imported."""
    folder, paths = models
    out = tmp_path / "predictions.csv"
    proc = subprocess.run(
        [sys.executable, "-c", LINE_SIDE, str(folder), str(out), *paths], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["code"] == 0 and said["train"] == []
    assert np.allclose(pd.read_csv(out).probability, said["probability"], atol=1e-6)
