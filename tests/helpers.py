"""Test helpers: real shared data (skipped when absent, failed under CI=true), commands with the venv, tiny projects."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from steeldefect.params import Params, parse_params

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent

# Small enough for seconds per stage, big enough to stratify and to learn a little.
# the smallest network that trains in seconds: ResNet50 cut after stage 2, 64x400 images, 2 epochs
TINY_TRAIN = {
    "epochs": 2,
    "batch_size": 4,
    "image_size": [64, 400],
    "backbone_layer": "conv2_block3_out",
    "head": {"dense_units": 8},
    "patience": 5,
}


def tiny_image_model(size: tuple[int, int], seed: int):
    """A seeded one-convolution Keras model (image -> probability), as small as an exported model can be."""
    import keras  # here: most tests using helpers never start TensorFlow

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu")(keras.layers.Rescaling(1 / 128)(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


TINY_PARAMS = {
    "synthesize": {"n_images": 60},
    "train": {"epochs": 3, "batch_size": 8, "image_size": [64, 400], "patience": 2},
    "evaluate": {"gallery_size": 4},
}


def shared(name: str) -> Path:
    """A real data folder beside the project; absent, the test is skipped, except under CI=true, where it fails:
    CI must never skip the real-data tests silently."""
    path = SHARED_DATA / name
    if not (path / "train.csv").is_file():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true and the real data folder {path} is missing (no train.csv)", pytrace=False)
        pytest.skip(f"shared data {path} not present")
    return path


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (dvc, git, a stage) with the venv first on PATH; output is captured and shown on failure."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        **(env or {}),
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def stage_cmd(name: str) -> list[str]:
    """A stage's command exactly as dvc.yaml writes it, to run from a project root: the tests run the stage
    scripts with dvc.yaml's own paths, so the two cannot drift apart."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["cmd"].removeprefix("cd .. && ")
    python, script, *args = shlex.split(cmd)
    assert python == "python", cmd
    return [sys.executable, str(REPO / script), *args]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def repo_params(override: dict | None = None) -> dict:
    """The repository's params.yaml (the one place defaults are written) as a mapping, `override` merged in."""
    return merge(yaml.safe_load((REPO / "params.yaml").read_text()), override or {})


def defaults(**sections: dict) -> Params:
    """The repository's params, typed and checked, with `sections` merged in: defaults(train={"epochs": 2}).train"""
    return parse_params(repo_params(sections))


def make_project(root: Path, params: dict) -> Path:
    """A fresh git + DVC repository holding the project's pipeline code and `params` over params.yaml."""
    for name in ("dvc.yaml", ".dvcignore", "stages", "src", "data/unlabeled"):  # the pretrain stage's extra images
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(repo_params(params), sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)
    return root


def reproduced_project(root: Path, params: dict) -> Path:
    """`make_project`, then a real `dvc repro`, committed (so diffs compare with HEAD)."""
    make_project(root, params)
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    return root


def run_clean_python(script: str, *args: str) -> dict:
    """Run `script` with `args` in a fresh Python with no PATH and no project on sys.path (a SavedModel must
    serve without this package); returns the JSON object its last output line prints."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def type_folders(root: Path, per_type: int = 16, size: int = 48, seed: int = 0, clean: bool = False) -> Path:
    """Noise JPEGs sorted into three defect-type folders (scratch: a thin bright line, pit: a dark dot, band: a
    bright column) and, with `clean`, a folder `good` of plain noise; without it every image is defective and
    only the type is in question."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("scratch", "pit", "band", *(["good"] if clean else [])):
        (root / name).mkdir(parents=True)
        for i in range(per_type):
            image = rng.integers(60, 110, (size, size), dtype=np.uint8)
            y, x = rng.integers(4, size - 20, 2)
            if name == "scratch":
                image[y : y + 16, x : x + 2] = 230
            elif name == "pit":
                image[y : y + 6, x : x + 6] = 10
            elif name == "band":
                image[:, x : x + 8] = 200
            Image.fromarray(image).save(root / name / f"{name}{i:02d}.jpg", quality=95)
    return root
