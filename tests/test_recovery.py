"""Faults: SIGKILL in the middle of training and of export, then `dvc repro` recovers to a consistent state (the
training resumes where it stopped: steeldefect.train.phases)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import BIN, TINY_PARAMS, make_project, merge, run

pytestmark = pytest.mark.slow


def repro_killed_when(root: Path, reached: Callable[[], bool], *args: str) -> None:
    """Start `dvc repro`, wait until `reached()` (an observable point inside a stage), SIGKILL dvc and the stage."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = root / "repro.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro", *args], cwd=root, env=env, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while not reached():
        assert proc.poll() is None, f"the pipeline ended before the point to kill it at:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_during_train_and_export_then_recover(tmp_path, cache_dir):
    params = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 30, "patience": 30}}
    root = make_project(tmp_path, merge(params, {"export": {"saved_model": False}}))  # the IR is enough to kill in
    first_epoch = root / "metrics/train/plots/metrics/train/loss.tsv"  # dvclive writes it after each epoch
    repro_killed_when(root, lambda: any(cache_dir.glob("train/*/snapshot-*/state.json")), "train")  # backed up
    assert len(first_epoch.read_text().splitlines()) < 31  # killed in the middle of the 30 epochs
    assert "train" in json.loads(run(["dvc", "status", "--json", "train"], root).stdout)
    assert not (root / "models/trained.weights.h5").exists()  # no half-trained weights left as a result

    rerun = run(["dvc", "repro", "train"], root)  # recovers after the kill (a stale lock or half-written output fails)
    assert "resumed at epoch" in rerun.stdout + rerun.stderr
    assert json.loads(run(["dvc", "status", "--json", "train"], root).stdout) == {}
    assert len(first_epoch.read_text().splitlines()) == 31  # each epoch once
    resumed = hashlib.md5((root / "models/trained.weights.h5").read_bytes()).hexdigest()
    run(["dvc", "repro", "--force", "--single-item", "train"], root)  # the same training, never stopped
    assert hashlib.md5((root / "models/trained.weights.h5").read_bytes()).hexdigest() == resumed

    # export writes into a temporary folder beside models/ first: kill once the model description is there
    repro_killed_when(root, lambda: any(root.glob("models/.export.*/model.json")), "--force", "--single-item", "export")
    assert "export" in json.loads(run(["dvc", "status", "--json"], root).stdout)

    run(["dvc", "repro"], root)
    assert run(["dvc", "status"], root).stdout.strip() == "Data and pipelines are up to date."
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert metrics["tp"] + metrics["tn"] + metrics["fp"] + metrics["fn"] == metrics["images"]
    run([str(BIN / "python"), "-c", "from steeldefect.serve.export import load_model; load_model('models')"], root)
