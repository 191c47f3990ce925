"""Queued experiments (`dvc exp run --queue`, run in temporary copies of the repository) share the feature
cache: side by side (`dvc queue start -j 2`), both succeed on the entries they race to write (written atomically:
temporary file, then rename), each reading or computing every entry, and the cache holds one of each. (A run
that finds the entries does no backbone work: tests/test_training.py, test_feature_cache_is_written_then_reused.)"""

from __future__ import annotations

import time

import pytest

from helpers import TINY_PARAMS, make_project, run

pytestmark = pytest.mark.slow
TIMEOUT = 900  # seconds for a queue's experiments


def wait_for_queue(root, names: list[str]) -> str:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = run(["dvc", "queue", "status"], root).stdout
        rows = [line for line in status.splitlines() if any(name in line for name in names)]
        if len(rows) == len(names) and not any(word in status for word in ("Queued", "Running")):
            return "\n".join(rows)  # the named experiments' rows
        assert time.monotonic() < deadline, status
        time.sleep(3)


def queue(root, names: list[str], rates: list[str]) -> None:
    for name, lr in zip(names, rates):
        # up to the train stage only: what comes after it does not concern the feature cache
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.learning_rate={lr}", "train"], root)


def run_queue(root, names: list[str], jobs: int) -> list[str]:
    """`dvc queue start -j jobs`, wait, and the logs of the named experiments (each must have succeeded)."""
    try:
        run(["dvc", "queue", "start", "-j", str(jobs)], root)
        status = wait_for_queue(root, names)
    finally:
        run(["dvc", "queue", "stop"], root, check=False)
    assert status.count("Success") == len(names), status
    return [run(["dvc", "queue", "logs", name], root).stdout for name in names]


def test_two_queued_experiments_side_by_side_share_one_feature_cache(tmp_path, cache_dir):
    root = make_project(tmp_path, TINY_PARAMS)
    features, read = cache_dir / "features", f"read from {cache_dir / 'features'}"
    # two side by side (-j 2) race to write the same entries (temporary file, then rename): both succeed
    queue(root, ["lr-a", "lr-b"], ["0.002", "0.004"])
    for log in run_queue(root, ["lr-a", "lr-b"], jobs=2):  # each read every entry whole, or computed it
        # the train stage's feature lines ("features of N images computed in ...")
        assert log.count(" images computed in ") + log.count(read) == 2, log[-3000:]
    assert len(list(features.glob("*.npy"))) == 2  # train and val: one entry each
    assert not list(features.glob(".*"))  # no temporary file left
