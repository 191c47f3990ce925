"""The OpenVINO IR's self-check where it runs: export leaves a reference set beside the IR, `steeldefect predict`
scores it on each new CPU against the stored Keras probabilities with the export's limits, refuses an IR beyond
them (exit 2), records a pass per model and CPU, and says which engine and precision scored each row."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steeldefect.serve.cli import main
from steeldefect.serve.export import export_model
from steeldefect.serve.inference import predict_paths
from steeldefect.serve.openvino_engine import IRRequest, OpenVINOEngine, convert, reference_indices, save
from steeldefect.serve.selfcheck import self_check

from helpers import tiny_image_model

SIZE = (64, 96)
TOLERANCE = 1e-3


def middle(prob: np.ndarray) -> float:
    """A threshold policy like `auto`: the threshold is one of the validation probabilities."""
    return float(np.sort(prob)[len(prob) // 2])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny model exported with an fp32 IR checked on 24 images (the reference set takes 16 of them)."""
    root = tmp_path_factory.mktemp("selfcheck")
    (root / "images").mkdir()
    rng = np.random.default_rng(4)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 250, 3), dtype=np.uint8)).save(root / f"images/img{i:02d}.jpg")
    paths = sorted(str(p) for p in (root / "images").iterdir())
    request = IRRequest("fp32", [], paths, threshold=middle, max_changed=0.0, tolerance=TOLERANCE, batch_size=4)
    export_model(
        tiny_image_model(SIZE, seed=5),
        SIZE,
        root / "models",
        paths[:2],
        {"image_size": list(SIZE), "batch_size": 4},
        False,
        request,
    )
    return root, paths


def predict(models: Path, paths: list[str], out: Path, *engine: str) -> int:
    return main(["predict", *paths, "--model-dir", str(models), "--output", str(out), "--no-progress", *engine])


def copy_models(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root / "models", tmp_path / "models")
    return tmp_path / "models"


def test_reference_indices_near_the_threshold_and_spread():
    prob = np.linspace(0, 1, 41)  # steps of 0.025; the threshold 0.5 is one of them
    chosen = reference_indices(prob, 0.5, margin=0.01)
    assert list(chosen) == sorted(chosen) and len(set(chosen)) == 16
    near = [0.4, 0.425, 0.45, 0.475, 0.525, 0.55, 0.575, 0.6]  # the 8 closest, 0.5 itself (a tie) left out
    assert set(np.round(near, 3)) <= set(np.round(prob[chosen], 3)) and 20 not in chosen
    assert {0, 40} <= set(chosen)  # the spread reaches both ends
    assert list(reference_indices(prob[:10], 0.1, margin=0.0)) == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # fewer: all but ties


def test_export_writes_the_reference_set(project):
    root, paths = project
    ref_dir = root / "models/openvino/reference"
    table = pd.read_csv(ref_dir / "reference.csv")
    assert list(table.columns) == ["file", "keras_probability", "threshold", "tolerance", "max_changed"]
    assert len(table) == 16 and (table.tolerance == TOLERANCE).all() and (table.max_changed == 0).all()
    assert json.loads((root / "models/model_meta.json").read_text())["openvino"]["reference_images"] == 16
    keras_prob = predict_paths(tiny_image_model(SIZE, seed=5), paths, 4, SIZE)
    threshold = middle(keras_prob)
    assert (table.threshold == threshold).all() and (np.abs(table.keras_probability - threshold) > 0).all()
    for row in table.itertuples():
        (i,) = [i for i, p in enumerate(paths) if Path(p).name == row.file.split("-", 1)[1]]  # 00-img07.jpg
        assert (ref_dir / row.file).read_bytes() == Path(paths[i]).read_bytes()
        assert row.keras_probability == pytest.approx(keras_prob[i], abs=1e-7)


def test_self_check_passes_once_per_cpu_then_is_cached(project, tmp_path, capsys, cache_dir):
    root, paths = project
    models = root / "models"
    assert predict(models, paths[:3], tmp_path / "p.csv", "--engine", "openvino") == 0
    said = capsys.readouterr().out
    assert "self-check on this CPU: passed (max difference " in said and ", 0 of 16 decisions changed)" in said
    (entry,) = (cache_dir / "selfcheck").iterdir()
    mtime = entry.stat().st_mtime_ns
    assert json.loads(entry.read_text())["passed"] is True
    assert predict(models, paths[:3], tmp_path / "p.csv") == 0  # the IR exists: openvino by default
    assert "self-check: passed earlier on this CPU (cached)" in capsys.readouterr().out
    assert entry.stat().st_mtime_ns == mtime and len(list(entry.parent.iterdir())) == 1  # not scored again
    assert main(["cache", "info"]) == 0 and "selfcheck     1 entries" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(table.columns) == ["path", "probability", "predicted", "engine", "precision", "error"]
    assert (table.engine == "openvino").all() and (table.precision == "fp32").all()
    # another CPU (its signature given, as cpu_signature() would report it there) misses the cache
    engine = OpenVINOEngine(models / "openvino/model.xml")
    said = self_check(engine, models / "openvino", SIZE, 4, cpu={"cpu": ["another CPU"], "openvino": "x"})
    assert said.startswith("self-check on this CPU: passed") and len(list(entry.parent.iterdir())) == 2
    assert self_check(engine, models / "openvino", SIZE, 4, cpu={"cpu": ["another CPU"], "openvino": "x"}).endswith(
        "(cached)"
    )


def test_keras_rows_say_keras_and_run_no_self_check(project, tmp_path, capsys, cache_dir):
    root, paths = project
    assert predict(root / "models", paths[:2], tmp_path / "p.csv", "--engine", "keras") == 0
    assert "self-check" not in capsys.readouterr().out and not (cache_dir / "selfcheck").exists()
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(table.engine) == ["keras"] * 2 and list(table.precision) == ["fp32"] * 2


def refused(models: Path, paths: list[str], tmp_path: Path, capsys) -> str:
    """Predict with the IR: it must exit 2 before writing anything or recording a pass; returns the message."""
    with pytest.raises(SystemExit) as exit_info:
        predict(models, paths[:2], tmp_path / "p.csv")
    assert exit_info.value.code == 2 and not (tmp_path / "p.csv").exists()
    return " ".join(capsys.readouterr().err.split())


def test_an_ir_of_another_model_is_refused(project, tmp_path, capsys, cache_dir):
    root, paths = project
    models = copy_models(root, tmp_path)
    other = tiny_image_model(SIZE, seed=5)
    other.layers[-1].bias.assign([0.5])  # another model: every probability moves by about 0.1
    save(convert(other, SIZE), models / "openvino/model.xml")
    err = refused(models, paths, tmp_path, capsys)
    assert f"{models / 'openvino/model.xml'}: the OpenVINO IR disagrees with the Keras model on this CPU" in err
    assert float(re.search(r"largest probability difference ([\d.e-]+) ", err)[1]) > 0.05
    assert f"(limit export.openvino_tolerance = {TOLERANCE:g})" in err
    assert "of 16 decisions changed" in err and "--engine keras" in err and "export.openvino: fp32" in err
    assert not list((cache_dir / "selfcheck").glob("*.json"))  # a failure is not recorded


def test_reference_probabilities_beyond_the_tolerance_are_refused(project, tmp_path, capsys):
    root, paths = project
    models = copy_models(root, tmp_path)
    csv = models / "openvino/reference/reference.csv"
    table = pd.read_csv(csv)
    table.loc[3, "keras_probability"] += 2 * TOLERANCE
    table.to_csv(csv, index=False)
    err = refused(models, paths, tmp_path, capsys)
    assert "largest probability difference 0.002 (limit export.openvino_tolerance = 0.001)" in err


def test_an_ir_without_reference_set_is_refused(project, tmp_path, capsys):
    root, paths = project
    models = copy_models(root, tmp_path)
    shutil.rmtree(models / "openvino/reference")
    err = refused(models, paths, tmp_path, capsys)
    assert f"{models / 'openvino/reference/reference.csv'}: not found" in err and "`dvc repro export`" in err


def test_a_cache_folder_that_cannot_be_used_stops_the_run(project, tmp_path, capsys, monkeypatch):
    root, paths = project
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("STEELDEFECT_CACHE_DIR", str(tmp_path / "not-a-folder"))
    err = refused(root / "models", paths, tmp_path, capsys)
    assert "cache folder" in err and "cannot be used" in err and "or predict with --engine keras." in err
