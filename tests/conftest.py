"""Shared fixtures: a tiny pipeline run with the real DVC."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import TINY_PARAMS, reproduced_project


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory) -> Path:
    """Session fixtures (and the processes they start) cache in a session folder, never in the user's cache."""
    path = tmp_path_factory.mktemp("steeldefect-cache")
    os.environ["STEELDEFECT_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """Each test (and the processes it starts) caches features and images in its own folder, as if it ran on
    its own: STEELDEFECT_CACHE_DIR (see steeldefect.train.runtime)."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("STEELDEFECT_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A tiny default pipeline after a real `dvc repro`, committed (so diffs compare with HEAD)."""
    return reproduced_project(tmp_path_factory.mktemp("pipeline"), TINY_PARAMS)


SPREAD = ("test_phases",)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """For `make test` (pytest-xdist, --dist loadgroup): the tests of a module run on one worker, so its module
    fixtures are built once, and every test of the shared `pipeline` runs on one worker, so it is built once. The
    slow tests of SPREAD have cheap fixtures: each is a group of its own, so they share the workers."""
    for item in items:
        group = "pipeline" if "pipeline" in item.fixturenames else item.module.__name__
        if item.module.__name__ in SPREAD:
            group = item.nodeid
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    """pytest 9.2 ignores the test ids pytest-xdist 3.8 rewrites to "<id>@<group>", so `--dist loadgroup` quietly
    becomes `--dist load`: every module fixture, and the shared pipeline, is then built once per worker. Refuse
    that combination rather than do the work twice."""
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple[:2] >= (9, 2):
        raise pytest.UsageError(
            f"--dist loadgroup does not group tests under pytest {pytest.__version__} with pytest-xdist 3.8 (it "
            "ignores the ids xdist sets): install the pinned versions (make install, requirements.txt)."
        )
