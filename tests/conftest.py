"""Shared fixtures: a tiny pipeline run with the real DVC."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY_PARAMS, make_project, run


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A tiny default pipeline after a real `dvc repro`, committed (so diffs compare with HEAD)."""
    root = make_project(tmp_path_factory.mktemp("pipeline"), TINY_PARAMS)
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    return root
