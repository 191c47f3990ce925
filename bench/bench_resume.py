"""The cost of resuming a killed training run (steeldefect.train.phases). Run by hand, alone (load < 1.5):

1. overhead: the same run with the backup off and on (STEELDEFECT_TRAIN_BACKUP), `--pairs` times in turn, each
   in a fresh process; the median time per epoch of each run (from one epoch's start to the next one's, so the
   snapshot written at an epoch's end counts) and the ratio of the medians over the runs of each setting -> goal:
   at most 3 % more per epoch (TensorFlow's speed differs between processes here by more than a snapshot costs:
   one pair of runs cannot tell them apart);
2. time lost to a kill: SIGKILL once the snapshot of epoch `--kill-after` is written, then the same call again;
   lost = (the killed run's seconds + the rerun's) - the uninterrupted run's -> goal: at most one epoch plus the
   start-up (the time from the process start to its first epoch, plus the first epoch's graph tracing).
The run: the `scratch` recipe's network (ResNet50 cut after stage 2, trained whole, 128x128, flips, cosine) on
`--images` synthetic images; the final weights of the resumed and the uninterrupted run are compared too.

    .venv/bin/python bench/bench_resume.py [--images 320] [--epochs 8] [--kill-after 4] [--pairs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.params import load_params

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, logging, sys, time
from pathlib import Path
import keras, pandas as pd
from steeldefect.params import parse_params
from steeldefect.train import training
job = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(message)s")

class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        print("EPOCH", epoch, time.time(), flush=True)

read = lambda name: pd.read_csv(Path(job["data"]) / name, keep_default_na=False)
p, out = parse_params(job["params"]).train, Path(job["out"])
training.train(p, 0, read("train.csv"), read("val.csv"), out / "w.weights.h5", out / "live", callbacks=[Clock()])
print("END", time.time(), flush=True)
"""


def params(epochs: int) -> dict:
    """params.yaml with the scratch preset's train section, for `epochs` epochs."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = yaml.safe_load((ROOT / "conf/preset/scratch.yaml").read_text())
    raw["train"].update(preset["train"], epochs=epochs, patience=epochs)
    return raw


def run(job: dict, cache: Path, backup: bool, kill_after: int | None = None) -> dict:
    """One training process: its start, epoch start times and end (wall clock), killed after the snapshot of
    epoch `kill_after` when given."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "STEELDEFECT_CACHE_DIR": str(cache)}
    env["STEELDEFECT_TRAIN_BACKUP"] = "on" if backup else "off"
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"output-{time.time():.0f}.txt"
    started = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(job)], env=env, stdout=f, stderr=f)
    while kill_after is not None and proc.poll() is None:
        states = list((cache / "train").glob("*/snapshot-*/state.json"))
        try:
            if states and json.loads(states[0].read_text())["epoch"] >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    code = proc.wait()
    ended = time.time()
    text = log.read_text()
    if kill_after is None and code != 0:
        sys.exit(f"training failed ({code}):\n{text[-3000:]}")
    epochs = [float(line.split()[2]) for line in text.splitlines() if line.startswith("EPOCH ")]
    return {"start": started, "epochs": epochs, "end": ended, "resumed": "resumed at epoch" in text}


def per_epoch(r: dict) -> float:
    """The median seconds from one epoch's start to the next (the first, with its graph tracing, left out)."""
    times = [*r["epochs"], r["end"]]
    return statistics.median(b - a for a, b in zip(times[1:], times[2:]))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3, help="runs with the backup off and on, in turn (default 3)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    P = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-resume.") as tmp:
        tmp = Path(tmp)
        write_dataset(dataclasses.replace(P.synthesize, n_images=args.images), seed=0, out_dir=tmp / "synthetic")
        images = prepare(tmp / "synthetic", "fail", P.data)[0]
        cut = int(len(images) * 0.8)
        images[:cut].to_csv(tmp / "train.csv", index=False)
        images[cut:].to_csv(tmp / "val.csv", index=False)
        job = lambda name: {"data": str(tmp), "params": params(args.epochs), "out": str(tmp / name)}  # noqa: E731

        offs, ons = [], []
        for i in range(args.pairs):
            offs.append(run(job(f"off{i}"), tmp / f"cache-off{i}", backup=False))
            ons.append(run(job(f"on{i}"), tmp / f"cache-on{i}", backup=True))
            print(f"pair {i + 1}: per epoch off {per_epoch(offs[-1]):.2f} s, on {per_epoch(ons[-1]):.2f} s", flush=True)
        on = ons[0]
        killed = run(job("killed"), tmp / "cache-killed", backup=True, kill_after=args.kill_after)
        rerun = run(job("killed"), tmp / "cache-killed", backup=True)
        same = md5(tmp / "on0" / "w.weights.h5") == md5(tmp / "killed" / "w.weights.h5")

    # start-up: to the first epoch, plus the first epoch's graph tracing (its time beyond a usual epoch's)
    startup = on["epochs"][1] - on["start"] - per_epoch(on)
    uninterrupted = on["end"] - on["start"]
    lost = (killed["end"] - killed["start"]) + (rerun["end"] - rerun["start"]) - uninterrupted
    epoch_off, epoch_on = (statistics.median(map(per_epoch, runs)) for runs in (offs, ons))
    overhead = epoch_on / epoch_off - 1
    print(
        f"per epoch (median of {args.pairs} runs each): backup off {epoch_off:.2f} s, on {epoch_on:.2f} s: "
        f"overhead {100 * overhead:+.1f} %"
    )
    print(
        f"killed after epoch {args.kill_after} of {args.epochs}: lost {lost:.1f} s "
        f"(one epoch {per_epoch(on):.1f} s + start-up {startup:.1f} s = {per_epoch(on) + startup:.1f} s); "
        f"resumed: {rerun['resumed']}; the same weights as the uninterrupted run: {same}"
    )
    print(
        f"RESULT overhead_percent={100 * overhead:.1f} lost_seconds={lost:.1f} "
        f"epoch_plus_startup_seconds={per_epoch(on) + startup:.1f} same_bits={same} load_end={os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
