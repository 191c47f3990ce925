"""Faults: SIGKILL in the middle of training and of export, then `dvc repro` recovers to a consistent state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, TINY_PARAMS, make_project, run

pytestmark = pytest.mark.slow


def repro_killed_at(root: Path, stage: str, delay: float, *args: str) -> None:
    """Start `dvc repro`, wait until `stage` has run for `delay` seconds, SIGKILL dvc and the stage."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = (root / f"repro-{stage}.log").open("w+")
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", *args],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while f"Running stage '{stage}'" not in (root / f"repro-{stage}.log").read_text():
        assert proc.poll() is None, (root / f"repro-{stage}.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(delay)
    assert proc.poll() is None, f"the pipeline finished before it could be killed in {stage}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_during_train_and_export_then_recover(tmp_path):
    root = make_project(tmp_path, {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 30, "patience": 30}})
    repro_killed_at(root, "train", delay=8)
    assert run(["dvc", "status"], root).stdout.strip() != "Data and pipelines are up to date."
    assert not (root / "metrics/evaluate.json").exists()  # nothing presented as a result yet

    run(["dvc", "repro"], root)  # recovers after the kill (a stale lock or half-written output would fail here)
    assert run(["dvc", "status"], root).stdout.strip() == "Data and pipelines are up to date."

    repro_killed_at(root, "export", 6, "--force", "--single-item", "export")
    assert "export" in json.loads(run(["dvc", "status", "--json"], root).stdout)

    run(["dvc", "repro"], root)
    assert run(["dvc", "status"], root).stdout.strip() == "Data and pipelines are up to date."
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["tp"] + metrics["tn"] + metrics["fp"] + metrics["fn"] == metrics["images"]
    run([str(BIN / "python"), "-c", "from steeldefect.export import load_model; load_model('models')"], root)
