"""STEELDEFECT_STRATEGY: mirrored on two logical CPU devices, multi_worker with two local worker processes.

Each run is a fresh Python process: logical devices and MultiWorkerMirroredStrategy must be set up before
TensorFlow starts, which in the pytest process it already has.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from steeldefect.cache import feature_key
from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.errors import UserError
from steeldefect.train.distribute import check_keras_version, keras_multi_worker_fixes, make_strategy
from steeldefect.train.model import build_model
from steeldefect.train.seeding import set_seed
from steeldefect.train.training import cached_features

from helpers import TINY_TRAIN, defaults, repo_params

TIMEOUT = 600  # seconds for one run (both workers of a multi_worker run); generous: 2 cores are often shared
TINY = {**TINY_TRAIN, "fine_tune": {"epochs": 1, "stages": 1}}

# Run by each process: argv[1] is a JSON job. Logical devices first, before anything starts TensorFlow. Then
# one or more train() calls; the first run's weights are exported when asked.
SCRIPT = """
import json, sys
job = json.loads(sys.argv[1])
import tensorflow as tf
if job["logical_cpus"] > 1:
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * job["logical_cpus"])
import hashlib, logging, os
from pathlib import Path
import pandas as pd
from steeldefect.train.model import build_model
from steeldefect.params import parse_params
from steeldefect.train.runtime import Runtime
from steeldefect.train.training import train

logging.basicConfig(level=logging.INFO, format="%(message)s")
read = lambda name: pd.read_csv(Path(job["data"]) / name, keep_default_na=False)
result = {"weights_md5": []}
chief = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]["index"] == 0
for run in job["runs"]:
    p = parse_params(run["params"]).train
    runtime = Runtime(**{k: Path(v) if k.endswith("cache") else v for k, v in run["runtime"].items()})
    train(p, 0, read("train.csv"), read("val.csv"), Path(run["weights"]), Path(run["live"]), runtime)
    if chief:
        model, _, _ = build_model(p, weights=None)
        model.load_weights(run["weights"])
        result["weights_md5"].append(hashlib.md5(b"".join(w.tobytes() for w in model.get_weights())).hexdigest())
if job["export"]:
    from steeldefect.serve.export import export, load_model
    from steeldefect.train.pipeline import image_dataset
    p, weights = parse_params(job["runs"][0]["params"]).train, Path(job["runs"][0]["weights"])
    paths, out = list(read("val.csv").path), Path(job["export"])
    result["diff"] = export(p, weights, out, paths, {"test": True}, saved_model=False)
    prob = load_model(out).predict(image_dataset(paths, p.image_size, 4), verbose=0)
    result["probability"], result["dtype"] = prob.ravel().tolist(), str(prob.dtype)
print("RESULT " + json.dumps(result), flush=True)
"""


# Mask supervision under the mirrored strategy on two logical CPU devices: argv[1] is a JSON job (data, params).
MASK_SCRIPT = """
import json, sys
job = json.loads(sys.argv[1])
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import logging
from pathlib import Path
import pandas as pd
from steeldefect.params import parse_params
from steeldefect.train import segtrain
from steeldefect.train.runtime import Runtime

logging.basicConfig(level=logging.INFO, format="%(message)s")
read = lambda name: pd.read_csv(Path(job["data"]) / name, keep_default_na=False)
p = parse_params(job["params"]).train
history = segtrain.train(p, 0, read("train.csv"), read("val.csv"), read("masks.csv"), Path("w.weights.h5"),
                         Path("live"), Runtime(strategy="mirrored"))
print("RESULT " + json.dumps({"auc": history.monitored}), flush=True)
"""
MASK = {"supervision": "mask", "mask": {"crop_size": [32, 32], "seg_channels": 8}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 tiny synthetic images: train.csv (12), val.csv (4) and their masks.csv."""
    root = tmp_path_factory.mktemp("distribution")
    write_dataset(defaults(synthesize={"n_images": 16}).synthesize, seed=1, out_dir=root / "synthetic")
    images, masks = prepare(root / "synthetic", "fail", defaults().data)[:2]
    masks.to_csv(root / "masks.csv", index=False)
    images[:12].to_csv(root / "train.csv", index=False)
    images[12:].to_csv(root / "val.csv", index=False)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(job: dict, folder: Path, env: dict | None = None, code: str = SCRIPT) -> subprocess.Popen:
    """The script (`code`) in a fresh process running in `folder`; its output goes to folder/output.txt."""
    script = folder / "run_train.py"
    script.write_text(code)
    with open(folder / "output.txt", "w") as output:  # a file, not a pipe: a chatty process never blocks
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(job)],
            cwd=folder,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    proc.output = folder / "output.txt"
    return proc


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; each must exit 0 within TIMEOUT. As soon as one fails (its partners would wait
    for it forever in a collective op) or time is up, the others are killed: the test never hangs. Returns
    their outputs."""
    deadline = time.monotonic() + TIMEOUT
    while None in (codes := [proc.poll() for proc in procs]):
        if time.monotonic() > deadline or any(codes):
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            break
        time.sleep(0.5)
    outputs = [proc.output.read_text() for proc in procs]
    codes = [proc.returncode for proc in procs]
    if any(codes):
        # the processes that failed by themselves first (the others were killed: -9); all of them on timeout
        shown = [i for i, code in enumerate(codes) if code and code > 0] or [i for i, code in enumerate(codes) if code]
        pytest.fail(
            f"exit codes {codes} ({'timed out' if time.monotonic() > deadline else 'a process failed'}):\n"
            + "\n-----\n".join(f"process {i}:\n{outputs[i][-5000:]}" for i in shown)
        )
    return outputs


def result(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])


def run(tmp_path: Path, train: dict, runtime: dict, name: str = "") -> dict:
    """One train() call on TINY + `train` with the runtime settings `runtime` (the feature cache in
    tmp_path/features), writing under tmp_path (name: a suffix for a further run)."""
    return {
        "params": repo_params({"train": {**TINY, **train}}),
        "runtime": {"feature_cache": str(tmp_path / "features"), **runtime},
        "weights": str(tmp_path / f"models{name}" / "trained.weights.h5"),
        "live": str(tmp_path / f"live{name}"),
    }


def job(data: Path, runs: list[dict], export: Path | None, logical_cpus: int = 1) -> dict:
    return {"data": str(data), "runs": runs, "export": str(export) if export else None, "logical_cpus": logical_cpus}


def assert_features_match_default(tmp_path: Path, data: Path, train: dict) -> None:
    """The features cached by the distributed run equal those of the default strategy, image by image: the
    distributed predict kept the images' order."""
    p = defaults(train={**TINY, **train}).train
    written = sorted((tmp_path / "features").glob("*.npy"))
    assert len(written) == 2  # train and val
    for name in ("train.csv", "val.csv"):
        df = pd.read_csv(data / name, keep_default_na=False)
        set_seed(0)
        _, features, _ = build_model(p, p.weights)
        expected = cached_features(features, df, p, 0, cache=None)
        got = np.load(tmp_path / "features" / f"{feature_key(p, 0, df)}.npy")
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def assert_exported_model_predicts(tmp_path: Path, output: str) -> None:
    r = result(output)
    assert r["diff"] <= 1e-6 and r["dtype"] == "float32"
    assert len(r["probability"]) == 4 and all(0 <= x <= 1 for x in r["probability"])
    assert (tmp_path / "exported" / "model.json").is_file()


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus(data, tmp_path):
    """Feature cache + fine-tuning, exported; then twice on augmented images with the image cache (written
    during the first fit, read by the second): the same weights."""
    runtime = {"strategy": "mirrored"}
    cached = {"augment": True, "epochs": 1, "fine_tune": {"epochs": 0}}
    with_images = {**runtime, "image_cache": str(tmp_path / "images")}
    runs = [run(tmp_path, {}, runtime), *(run(tmp_path, cached, with_images, name) for name in ("_write", "_read"))]
    (out,) = finish([start(job(data, runs, tmp_path / "exported", logical_cpus=2), tmp_path)])
    assert out.count("strategy mirrored: 2 replicas") == 3, out[-3000:]
    assert "fine-tuning ['conv2']" in out
    assert len(pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")) == 3  # 2 epochs + 1 tuned
    assert_exported_model_predicts(tmp_path, out)
    assert_features_match_default(tmp_path, data, {})
    assert out.count(" will be cached in ") == 2 and out.count(" read from " + str(tmp_path / "images")) == 2
    assert_complete_image_caches(tmp_path / "images")
    _, written, read = result(out)["weights_md5"]
    assert written == read  # deterministic, and the cache gives the images it was given


@pytest.mark.slow
def test_mask_supervision_mirrored_on_two_logical_cpus(data, tmp_path):
    """STEELDEFECT_STRATEGY=mirrored is honoured by mask training too: the model is built and trained on both
    devices (before, the strategy was printed and then dropped)."""
    params = repo_params({"train": {**TINY, **MASK}})
    (out,) = finish([start({"data": str(data), "params": params}, tmp_path, code=MASK_SCRIPT)])
    assert "strategy mirrored: 2 replicas" in out, out[-3000:]
    assert len(result(out)["auc"]) == TINY["epochs"]
    assert (tmp_path / "w.weights.h5").is_file()


@pytest.mark.slow
def test_multi_worker_with_two_local_workers(data, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    runtime = {"strategy": "multi_worker", "image_cache": str(tmp_path / "images")}
    procs = []
    for index in (0, 1):  # the chief (worker 0) also exports, after training
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        folder = tmp_path / f"worker{index}"
        folder.mkdir()
        export = tmp_path / "exported" if index == 0 else None
        procs.append(start(job(data, [run(tmp_path, {}, runtime)], export), folder, {"TF_CONFIG": tf_config}))
    chief, worker = finish(procs)
    assert "chief: True" in chief and "chief: False" in worker
    assert "2 replicas in sync" in chief
    # only the chief wrote the real outputs: one weights file, one dvclive folder, one cache of each kind
    weights = tmp_path / "models" / "trained.weights.h5"
    assert list((tmp_path / "models").iterdir()) == [weights]
    assert f"weights written to {weights}" in chief
    assert "weights written to " in worker and str(weights) not in worker
    assert len(pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")) == 3
    assert_complete_image_caches(tmp_path / "images")
    assert_exported_model_predicts(tmp_path, chief)
    assert_features_match_default(tmp_path, data, {})


def assert_complete_image_caches(folder: Path) -> None:
    """Train and val images, each complete, and no temporary folder left behind."""
    assert len(list(folder.iterdir())) == 2
    assert all((cache / "images.index").is_file() for cache in folder.iterdir())


def test_multi_worker_needs_a_fresh_process(monkeypatch):
    """In a process where TensorFlow already ran, the strategy cannot be created: a clear error, not a hang."""
    tf.constant(1.0) + 1  # TensorFlow has started (as it has in any pytest process running other tests)
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(UserError, match="multi_worker.*before any other TensorFlow op.*fresh process"):
        make_strategy("multi_worker")


@pytest.mark.parametrize("tf_config", ["not json", '{"task": {"type": "worker", "index": 0}}', '{"cluster": {}}'])
def test_bad_tf_config_is_a_clear_error(monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match="TF_CONFIG = .* is not a valid multi-worker configuration"):
        make_strategy("multi_worker")


def test_keras_version_guard(monkeypatch):
    """The multi-worker workarounds patch private Keras 3.15 code: any other Keras version is refused."""
    check_keras_version(keras.__version__)  # the pinned Keras (requirements.txt) is the one they were written for
    check_keras_version("3.15.9")
    for version in ("3.16.0", "3.14.2", "4.0.0", "nightly"):
        with pytest.raises(UserError, match=rf"this is Keras {re.escape(version)}; install keras==3\.15\.\*"):
            check_keras_version(version)
    # the guard runs before anything is patched, on the version Keras reports at run time
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    strategy = object.__new__(tf.distribute.MultiWorkerMirroredStrategy)  # an instance, never started
    with pytest.raises(UserError, match="this is Keras 3.16.0"), keras_multi_worker_fixes(strategy, []):
        pass
