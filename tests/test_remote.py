"""Lost cache restored from a DVC remote (a local folder standing in for S3 / GCS / SSH)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from helpers import run

pytestmark = pytest.mark.slow


def assert_restored(repo: Path) -> None:
    assert run(["dvc", "status"], repo).stdout.strip() == "Data and pipelines are up to date."
    run([sys.executable, "-c", "from steeldefect.serve.export import load_model; load_model('models')"], repo)


def test_push_then_pull_restores_everything(pipeline, tmp_path):
    remote = tmp_path / "remote"
    run(["git", "add", "-A"], pipeline)  # the usual flow: commit what `dvc repro` left, then push its data
    run(["git", "commit", "-qm", "results", "--allow-empty"], pipeline)
    run(["dvc", "remote", "add", "--local", "store", str(remote)], pipeline)
    run(["dvc", "push", "-r", "store"], pipeline)

    clone = tmp_path / "clone"  # a new machine: the code from git, no cache, no outputs
    run(["git", "clone", "-q", str(pipeline), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "store", str(remote)], clone)
    assert not (clone / "models/model.weights.h5").exists()
    run(["dvc", "pull", "-r", "store"], clone)
    assert_restored(clone)

    shutil.rmtree(clone / ".dvc" / "cache")  # lose the cache and the outputs
    for output in (clone / "data").iterdir():  # DVC's outputs; data/unlabeled and .gitignore come from git
        if output.is_dir() and output.name != "unlabeled":
            shutil.rmtree(output)
    for name in ("model.json", "model.weights.h5", "trained.weights.h5"):
        (clone / "models" / name).unlink()
    run(["dvc", "pull", "-r", "store"], clone)
    assert_restored(clone)
