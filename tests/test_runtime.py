"""Runtime settings (strategy, caches) come from the environment, not from params: changing one leaves the
DVC pipeline up to date."""

from __future__ import annotations

import pytest

from steeldefect.errors import UserError
from steeldefect.params import parse_params
from steeldefect.train.runtime import Runtime, load_runtime

from helpers import run

UP_TO_DATE = "Data and pipelines are up to date."


def test_defaults_and_overrides(tmp_path):
    assert load_runtime({"STEELDEFECT_CACHE_DIR": str(tmp_path)}) == Runtime(
        strategy="default", feature_cache=tmp_path / "features", image_cache=None
    )
    env = {
        "STEELDEFECT_CACHE_DIR": str(tmp_path),
        "STEELDEFECT_STRATEGY": "mirrored",
        "STEELDEFECT_FEATURE_CACHE": "off",
        "STEELDEFECT_IMAGE_CACHE": "on",
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
        parse_params({"train": {key: "x"}})


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
