"""The `steeldefect predict` command: one row per image, unreadable images reported, exit codes, threshold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from steeldefect.serve.cli import expand_images, main
from steeldefect.serve.export import export
from steeldefect.serve.inference import predict_files, predict_paths
from steeldefect.serve.model_files import load_model
from steeldefect.serve.predictor import resolve_threshold
from steeldefect.train.model import build_model

from helpers import REPO, defaults, run

TINY = defaults(train={"image_size": [64, 96], "backbone_layer": "conv2_block3_out", "head": {"dense_units": 8}}).train
STEELDEFECT = Path(sys.executable).parent / "steeldefect"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny exported model (batch size 2 recorded in its metadata) and a folder of 5 good JPEGs."""
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        pixels = rng.integers(0, 255, (40, 250), dtype=np.uint8)
        Image.fromarray(pixels).convert("RGB").save(images / f"img{i}.jpg")
    keras.utils.set_random_seed(1)  # the same tiny model on every run
    model, _, _ = build_model(TINY, weights=None)
    model.save_weights(root / "trained.weights.h5")
    meta = {"image_size": [64, 96], "batch_size": 2}
    export(TINY, root / "trained.weights.h5", root / "models", [str(images / "img0.jpg")], meta, saved_model=False)
    good = sorted(str(p) for p in images.iterdir())
    return root, good


RTOL = 1e-5  # relative: the same arithmetic, in other batches


def caffe(x: np.ndarray) -> np.ndarray:
    return x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)


def independent_probabilities(root: Path, paths: list[str], preprocess=caffe) -> np.ndarray:
    """The trained weights (not the exported files) in a model built here, on images read here, decoded by
    TensorFlow's JPEG decoder (PIL's differs by a grey level here and there, which moves the tiny random model's
    probabilities by up to 14 %), resized (bilinear, antialiased) and preprocessed by hand as
    resnet50.preprocess_input documents: RGB -> BGR, minus the ImageNet channel means."""
    model, _, _ = build_model(TINY, weights=None)
    model.load_weights(root / "trained.weights.h5")
    rgb = [tf.io.decode_jpeg(Path(path).read_bytes(), channels=3) for path in paths]
    x = np.stack([tf.image.resize(image, TINY.image_size, method="bilinear", antialias=True) for image in rgb])
    return model(preprocess(x), training=False).numpy()[:, 0]


def test_independent_probabilities_tell_a_wrong_preprocessing(project):
    """The comparison below can fail: with the notebook's preprocessing (x / 255) the probabilities move by far
    more than the tolerance."""
    root, good = project
    right = independent_probabilities(root, good)
    wrong = independent_probabilities(root, good, preprocess=lambda x: x / 255)
    assert (np.abs(wrong - right) > 100 * RTOL * right).all(), (right, wrong)


@pytest.fixture
def with_bad(project, tmp_path):
    """A folder holding the good images and bad.jpg (garbage bytes), and a missing path."""
    _, good = project
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in good:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    (folder / "bad.jpg").write_bytes(np.random.default_rng(2).bytes(3000))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder, tmp_path / "missing.jpg"


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"path": str, "error": str})


def test_bad_and_missing_images_get_error_rows_and_exit_code_1(project, with_bad, tmp_path):
    root, good = project
    folder, missing = with_bad
    out = tmp_path / "out" / "predictions.csv"
    proc = run(
        [str(STEELDEFECT), "predict", str(folder), str(missing), "--model-dir", str(root / "models")]
        + ["--output", str(out)],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    df = read(out)
    assert list(df.columns) == ["path", "probability", "predicted", "engine", "precision", "error"]
    assert (df.engine == "keras").all() and (df.precision == "fp32").all()  # this model has no IR
    names = [Path(p).name for p in df.path]
    assert names == ["bad.jpg", "img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg", "missing.jpg"]
    failed = df[df.error != ""]
    assert list(failed.path) == [str(folder / "bad.jpg"), str(missing)]
    assert (failed.probability == "").all() and (failed.predicted == "").all()
    assert "not a readable image" in failed.error.iloc[0] and failed.error.iloc[1] == "file not found"
    assert "bad.jpg" in proc.stderr and "missing.jpg" in proc.stderr

    ok = df[df.error == ""]
    prob = ok.probability.astype(float).to_numpy(np.float32)
    # what the trained weights give on images decoded and preprocessed here, without the package's code path
    np.testing.assert_allclose(prob, independent_probabilities(root, good), rtol=RTOL)
    assert list(ok.predicted.astype(int)) == [int(p >= 0.5) for p in prob]
    assert "threshold 0.5 from default" in proc.stdout


def test_good_images_only_exit_code_0(project, tmp_path, capsys):
    root, good = project
    out = tmp_path / "predictions.csv"
    assert main(["predict", *good, "--model-dir", str(root / "models"), "--output", str(out), "--no-progress"]) == 0
    df = read(out)
    assert list(df.path) == good and (df.error == "").all()
    assert "5 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 0, "wrote"),
        (["--threshold", "2"], 2, "--threshold: 2 is not in [0, 1]"),
        (["--model-dir", "nowhere"], 2, "error: --model-dir nowhere: no such folder"),
    ],
)
def test_exit_codes_of_the_command(project, tmp_path, args, code, message):
    """The installed command in its own process: 0 when every image was predicted, 2 for bad arguments or no
    model folder (1 above; 3, an unexpected error, in test_errors.py). `steeldefect --help` lists them."""
    root, good = project
    out = tmp_path / "predictions.csv"
    cmd = [str(STEELDEFECT), "predict", *good, "--model-dir", str(root / "models"), "--output", str(out), *args]
    proc = run(cmd, cwd=tmp_path, check=False)
    assert proc.returncode == code and message in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert out.exists() == (code == 0)
    assert "unexpected" not in proc.stderr


def test_help_lists_the_exit_codes():
    help_text = run([str(STEELDEFECT), "--help"], REPO).stdout
    assert "exit codes:" in help_text and "3    unexpected error: a bug" in help_text


def copy_models(source: Path, target: Path) -> Path:
    """A copy of the exported files (not the SavedModel folder) that a test may change."""
    target.mkdir()
    for f in source.iterdir():
        if f.is_file():
            (target / f.name).write_bytes(f.read_bytes())
    return target


def test_threshold_from_evaluate_file_and_override(project, tmp_path, capsys):
    root, good = project
    models = copy_models(root / "models", tmp_path / "models")
    out = tmp_path / "predictions.csv"
    args = ["predict", *good, "--model-dir", str(models), "--output", str(out), "--no-progress"]
    prob = predict_paths(load_model(models), good, batch_size=2)
    chosen = float(np.sort(prob)[len(prob) // 2])  # some images below it, some at or above
    assert 0 < (prob >= chosen).sum() < len(prob)

    (models / "threshold.json").write_text(json.dumps({"threshold": chosen, "policy": "auto", "recall": 1.0}))
    assert main(args) == 0
    assert f"threshold {chosen:g} from {models / 'threshold.json'} (policy: auto)" in capsys.readouterr().out
    assert list(read(out).predicted) == [int(p >= chosen) for p in prob]

    assert main([*args, "--threshold", "0"]) == 0
    assert "threshold 0 from --threshold" in capsys.readouterr().out
    assert (read(out).predicted == 1).all()


def test_resolve_threshold(tmp_path):
    assert resolve_threshold(None, tmp_path) == (0.5, f"default (no --threshold and no {tmp_path / 'threshold.json'})")
    assert resolve_threshold(0.3, tmp_path) == (0.3, "--threshold")
    (tmp_path / "threshold.json").write_text('{"threshold": 0.25, "policy": "fixed"}')
    assert resolve_threshold(None, tmp_path)[0] == 0.25
    assert resolve_threshold(0.7, tmp_path)[0] == 0.7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-dir", "nowhere"], "no such folder"),
        (["--threshold", "1.5"], "not in [0, 1]"),
        (["--batch-size", "0"], "not >= 1"),
    ],
)
def test_usage_errors_exit_2(project, tmp_path, capsys, args, message):
    _, good = project
    with pytest.raises(SystemExit) as e:
        main(["predict", good[0], "--output", str(tmp_path / "p.csv"), "--no-progress", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_bad_threshold_file_and_no_images_exit_2(project, tmp_path, capsys):
    root, good = project
    models = copy_models(root / "models", tmp_path / "models")
    (models / "threshold.json").write_text('{"threshold": "high"}')
    with pytest.raises(SystemExit) as e:
        main(["predict", good[0], "--model-dir", str(models), "--output", str(tmp_path / "p.csv"), "--no-progress"])
    assert e.value.code == 2 and "threshold.json" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "empty"), "--model-dir", str(root / "models"), "--no-progress"])
    assert e.value.code == 2 and "no images to predict" in capsys.readouterr().err


def test_folders_expand_to_sorted_images(tmp_path):
    for name in ("b.JPG", "a.png", "c.jpeg", "d.txt", "e.gif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()
    assert expand_images([tmp_path, "x.bmp"]) == [str(tmp_path / n) for n in ("a.png", "b.JPG", "c.jpeg")] + ["x.bmp"]


def test_progress_counts_every_image(project, with_bad):
    root, _ = project
    folder, missing = with_bad
    paths = expand_images([folder, missing])
    steps = []
    result = predict_files(load_model(root / "models"), paths, 2, progress=steps.append)
    assert sum(steps) == len(paths) == len(result.probability)
    assert [Path(result.paths[i]).name for i in result.failed] == ["bad.jpg", "missing.jpg"]
    assert np.isnan(result.probability[result.failed]).all()


def test_a_degenerate_model_is_predicted_with_a_warning(project, tmp_path, capsys):
    root, good = project
    models = copy_models(root / "models", tmp_path / "models")
    meta = json.loads((models / "model_meta.json").read_text())
    (models / "model_meta.json").write_text(json.dumps({**meta, "degenerate": True}))
    args = ["predict", *good, "--model-dir", str(models), "--output", str(tmp_path / "p.csv"), "--no-progress"]
    assert main(args) == 0
    assert "says this model is degenerate" in capsys.readouterr().err
