"""Resuming a killed training run (steeldefect.train.phases): a real SIGKILL in a real training process, then the
same call again, ends with the weights of a run that was never stopped, bit for bit; and the curves have each epoch
once. Also the faults around the backup: a corrupt snapshot, another run's backup, a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.errors import UserError

from helpers import TINY_TRAIN, defaults, repo_params

SCRIPT = """
import json, logging, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a shell (an xdist worker ignores SIGINT)
from pathlib import Path
import pandas as pd
from steeldefect.params import parse_params
from steeldefect.train import segtrain, training
logging.basicConfig(level=logging.INFO, format="%(message)s")
job = json.loads(sys.argv[1])
read = lambda name: pd.read_csv(Path(job["data"]) / name, keep_default_na=False)
p, out = parse_params(job["params"]).train, Path(job["out"])
if p.supervision == "mask":
    segtrain.train(p, 0, read("train.csv"), read("val.csv"), read("masks.csv"), out / "w.weights.h5", out / "live")
else:
    training.train(p, 0, read("train.csv"), read("val.csv"), out / "w.weights.h5", out / "live")
"""
EPOCHS = 3
IMAGE = {**TINY_TRAIN, "epochs": EPOCHS, "freeze_backbone": False, "augment": True, "head": {"dense_units": 8}}
MASK = {**IMAGE, "supervision": "mask", "mask": {"crop_size": [32, 32], "seg_channels": 8, "whole_image_epochs": 1}}
TUNED = {**TINY_TRAIN, "epochs": 2, "fine_tune": {"epochs": 2, "stages": 1}}  # head on features, then fine-tuning


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phases")
    write_dataset(defaults(synthesize={"n_images": 24}).synthesize, seed=3, out_dir=root / "synthetic")
    images, masks = prepare(root / "synthetic", "fail", defaults().data)[:2]
    masks.to_csv(root / "masks.csv", index=False)
    images[:16].to_csv(root / "train.csv", index=False)
    images[16:].to_csv(root / "val.csv", index=False)
    return root


def start(data: Path, train: dict, out: Path, cache: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    job = {"data": str(data), "params": repo_params({"train": train}), "out": str(out)}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "STEELDEFECT_CACHE_DIR": str(cache)}
    with open(out / "output.txt", "a") as output:
        return subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps(job)], env=env, stdout=output, stderr=subprocess.STDOUT
        )


def finish(proc: subprocess.Popen, out: Path) -> str:
    assert proc.wait(timeout=600) == 0, (out / "output.txt").read_text()[-4000:]
    return (out / "output.txt").read_text()


def snapshot_epoch(cache: Path) -> int:
    """The epoch count of the newest complete snapshot in the cache's training backups (0: none)."""
    states = sorted((cache / "train").glob("*/snapshot-*/state.json"))
    try:
        return max(json.loads(s.read_text())["epoch"] for s in states) if states else 0
    except (OSError, ValueError):
        return 0  # removed or replaced while read


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def steps(out: Path) -> list[int]:
    """The dvclive steps of the training loss curve."""
    return list(pd.read_csv(out / "live" / "plots" / "metrics" / "train" / "loss.tsv", sep="\t").step)


def summary(out: Path) -> dict:
    """The run's dvclive metrics, but its wall-clock seconds."""
    metrics = json.loads((out / "live" / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "train, sig",
    [(MASK, signal.SIGKILL), (TUNED, signal.SIGINT)],  # image labels end to end: tests/test_recovery.py (dvc repro)
    ids=["mask-SIGKILL", "head-then-fine-tune-Ctrl-C"],
)
def test_a_killed_run_resumes_and_ends_with_the_same_bits(data, tmp_path, train, sig):
    whole = tmp_path / "whole"
    finish(start(data, train, whole, tmp_path / "cache-whole"), whole)
    killed, cache = tmp_path / "killed", tmp_path / "cache"
    proc = start(data, train, killed, cache)
    deadline = time.monotonic() + 600
    while snapshot_epoch(cache) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(sig)
    assert proc.wait(timeout=60) != 0
    done = snapshot_epoch(cache)
    assert not (killed / "w.weights.h5").exists()

    output = finish(start(data, train, killed, cache), killed)
    assert "resumed at epoch" in output, output[-3000:]
    assert md5(killed / "w.weights.h5") == md5(whole / "w.weights.h5")
    assert steps(killed) == steps(whole) == list(range(len(steps(whole))))  # each epoch once, no gap
    assert summary(killed) == summary(whole)  # the same metrics
    assert not list((cache / "train").glob("*/snapshot-*"))  # a finished run deletes its backup
    assert 2 <= done < len(steps(whole))


def test_a_corrupt_snapshot_or_another_runs_backup_starts_afresh_and_says_so(tmp_path, caplog):
    from steeldefect.train import phases

    state = {"serial": 0, "epoch": 3, "phase": 0, "done": False}
    phases.Backup(tmp_path / "slot", "key").save(state, {"fitted.weights.h5": lambda p: p.write_bytes(b"weights")})
    assert phases.Backup(tmp_path / "slot", "key").state["epoch"] == 3  # intact: resumed

    (weights,) = (tmp_path / "slot").glob("snapshot-*/fitted.weights.h5")
    weights.write_bytes(b"weightz")
    with caplog.at_level(logging.INFO, logger="steeldefect.train.phases"):
        fresh = phases.Backup(tmp_path / "slot", "key")
    assert fresh.state is None and f"the backup {weights.parent} is unreadable or corrupt" in caplog.text
    assert f"{weights} does not match its md5" in caplog.text and not list((tmp_path / "slot").iterdir())

    phases.Backup(tmp_path / "slot", "key").save(state, {"fitted.weights.h5": lambda p: p.write_bytes(b"weights")})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="steeldefect.train.phases"):
        other = phases.Backup(tmp_path / "slot", "another key")  # changed params, data or code
    assert other.state is None and "is of another run (its params, data or code differ): starting afresh" in caplog.text
    assert not list((tmp_path / "slot").iterdir())


def test_a_full_disk_or_a_kill_while_writing_keeps_the_previous_snapshot(tmp_path):
    from steeldefect.train import phases

    backup = phases.Backup(tmp_path / "slot", "key")
    backup.save({"serial": 0, "epoch": 1, "phase": 0, "done": False}, {"a.bin": lambda p: p.write_bytes(b"1")})

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"No space left .* previous epoch's backup is kept.*run the same command"):
        backup.save({"serial": 1, "epoch": 2, "phase": 0, "done": False}, {"a.bin": full})
    again = phases.Backup(tmp_path / "slot", "key")
    assert again.state["epoch"] == 1 and (again.snapshot / "a.bin").read_bytes() == b"1"
    assert [p.name for p in (tmp_path / "slot").iterdir()] == ["snapshot-000000"]  # no half-written folder left

    def killed(path):  # as a kill in the middle of writing: the folder half-written, nothing cleaned up
        path.write_bytes(b"half")
        raise SystemExit(137)

    with pytest.raises(SystemExit):
        again.save({"serial": 1, "epoch": 2, "phase": 0, "done": False}, {"a.bin": killed})
    after_kill = phases.Backup(tmp_path / "slot", "key")  # the next run: the previous snapshot, the debris gone
    assert after_kill.state["epoch"] == 1 and (after_kill.snapshot / "a.bin").read_bytes() == b"1"
    assert [p.name for p in (tmp_path / "slot").iterdir()] == ["snapshot-000000"]
