"""Runtime settings (strategy, caches, oneDNN's instruction set) come from the environment, not from params:
changing one leaves the DVC pipeline up to date; what the train stage prints is what is in effect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from steeldefect.errors import UserError
from steeldefect.params import parse_params
from steeldefect.train.runtime import Runtime, describe, load_runtime

from helpers import defaults, repo_params, run

UP_TO_DATE = "Data and pipelines are up to date."


def test_defaults_and_overrides(tmp_path):
    assert load_runtime({"STEELDEFECT_CACHE_DIR": str(tmp_path)}) == Runtime(
        strategy="default", feature_cache=tmp_path / "features", image_cache=None, backup=tmp_path / "train"
    )
    env = {
        "STEELDEFECT_CACHE_DIR": str(tmp_path),
        "STEELDEFECT_STRATEGY": "mirrored",
        "STEELDEFECT_FEATURE_CACHE": "off",
        "STEELDEFECT_IMAGE_CACHE": "on",
        "STEELDEFECT_TRAIN_BACKUP": "off",
    }
    assert load_runtime(env) == Runtime(strategy="mirrored", feature_cache=None, image_cache=tmp_path / "images")


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("STEELDEFECT_STRATEGY", "tpu", "default, mirrored, multi_worker"),
        ("STEELDEFECT_IMAGE_CACHE", "maybe", "on or off"),
    ],
)
def test_bad_values_name_the_variable(name, value, allowed):
    with pytest.raises(UserError, match=f"{name} = '{value}' is not allowed; expected .*{allowed}"):
        load_runtime({name: value})


@pytest.mark.parametrize(
    ("key", "variable"),
    [("strategy", "STEELDEFECT_STRATEGY"), ("feature_cache", "STEELDEFECT_FEATURE_CACHE"), ("image_cache", "IMAGE")],
)
def test_former_params_say_where_they_went(key, variable):
    with pytest.raises(UserError, match=f"train.{key} is no longer a param: it is a runtime setting.*{variable}"):
        parse_params(repo_params({"train": {key: "x"}}))


@pytest.mark.slow  # the whole DVC pipeline
def test_changing_runtime_settings_leaves_the_pipeline_up_to_date(pipeline, session_cache_dir, tmp_path):
    # the stage ran by `dvc repro` honoured the environment: its features are in the session's cache folder
    assert len(list((session_cache_dir / "features").glob("*.npy"))) == 2
    changed = {
        "STEELDEFECT_STRATEGY": "mirrored",
        "STEELDEFECT_FEATURE_CACHE": "off",
        "STEELDEFECT_IMAGE_CACHE": "on",
        "STEELDEFECT_CACHE_DIR": str(tmp_path),
    }
    assert run(["dvc", "status"], pipeline, env=changed).stdout.strip() == UP_TO_DATE
    out = run(["dvc", "repro"], pipeline, env=changed).stdout
    assert "Running stage" not in out and not tmp_path.joinpath("features").exists()
    assert run(["git", "status", "--porcelain"], pipeline).stdout == ""


@pytest.mark.parametrize(
    "train, features",
    [
        ({}, "/c/features"),
        ({"augment": True}, "not used (train.augment"),
        ({"freeze_backbone": False}, "not used (train.freeze_backbone is false"),
        ({"supervision": "mask"}, "not used (train.supervision mask"),
    ],
)
def test_the_settings_printed_are_those_in_effect(train, features):
    line = describe(Runtime(feature_cache=Path("/c/features")), defaults(train=train).train)
    assert f"strategy default, feature cache {features}" in line
    assert line.endswith("image cache off, training backup off")


# a convolution after `import steeldefect`, with oneDNN telling which instruction set its kernels use
CONV = (
    "import tensorflow as tf, steeldefect, os; print('ISA', os.environ.get('ONEDNN_MAX_CPU_ISA')); "
    "tf.nn.conv2d(tf.ones((1, 16, 16, 8)), tf.ones((3, 3, 8, 8)), 1, 'SAME')"
)


def conv(code: str = CONV, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "STEELDEFECT_CPU_ISA")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, "ONEDNN_VERBOSE": "1", **env}
    )


def test_onednn_is_pinned_to_avx2_even_when_tensorflow_was_imported_first():
    out = conv().stdout
    assert "ISA AVX2" in out and "isa:Intel AVX2\n" in out  # oneDNN's own report of the cap it runs under
    assert "ISA None" in conv(STEELDEFECT_CPU_ISA="native").stdout  # the pin lifted
    assert "ISA SSE41" in conv(ONEDNN_MAX_CPU_ISA="SSE41").stdout  # the user's own cap is kept
    bad = conv("import steeldefect", STEELDEFECT_CPU_ISA="avx512")
    assert bad.returncode == 2
    assert "STEELDEFECT_CPU_ISA = 'avx512' is not allowed; expected avx2 or native" in bad.stderr
