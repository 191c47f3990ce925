"""Queued experiments (`dvc exp run --queue`, run in temporary copies of the repository) share the feature
cache: the second one does no backbone work."""

from __future__ import annotations

import time

import pytest

from helpers import TINY_PARAMS, make_project, run

pytestmark = pytest.mark.slow
TIMEOUT = 900  # seconds for both experiments


def wait_for_queue(root, names: list[str]) -> str:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = run(["dvc", "queue", "status"], root).stdout
        rows = [line for line in status.splitlines() if any(name in line for name in names)]
        if len(rows) == len(names) and not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(3)


def test_two_queued_experiments_share_one_feature_cache(tmp_path, cache_dir):
    root = make_project(tmp_path, TINY_PARAMS)
    names = ["lr-a", "lr-b"]
    for name, lr in zip(names, ("0.002", "0.004")):
        # no SavedModel or OpenVINO IR: the export's conversions and self-check do not concern the feature cache
        lean = ["-S", "export.saved_model=false", "-S", "export.openvino=none"]
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.learning_rate={lr}", *lean], root)
    try:
        run(["dvc", "queue", "start", "-j", "1"], root)  # one worker: the experiments run one after the other
        status = wait_for_queue(root, names)
    finally:
        run(["dvc", "queue", "stop"], root, check=False)
    assert status.count("Success") == 2, status
    first, second = (run(["dvc", "queue", "logs", name], root).stdout for name in names)
    # the train stage's feature lines ("features of N images computed in ..."), not the baseline stage's
    assert first.count(" images computed in ") == 2, first[-3000:]
    read = f"read from {cache_dir / 'features'}"
    assert second.count(read) == 2 and second.count("no backbone work") == 2, second[-3000:]
    assert " computed in " not in second
    assert len(list((cache_dir / "features").glob("*.npy"))) == 2  # train and val, written once
