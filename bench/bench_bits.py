"""Benchmark: the same weight bits on every x86-64 CPU with AVX2 (run by hand, alone, on an idle machine).

Runs the train stage (feature cache off, so the backbone really runs) on the pipeline's split in fresh processes
under several settings of the instruction set and thread counts, and prints each run's weight hash and time:
- the pin (the default: oneDNN capped at AVX2 by `import steeldefect`) under 2 and 1 threads (OMP_NUM_THREADS,
  TensorFlow's intra-op threads);
- this CPU emulating an AVX2-only one (the pin lifted, ONEDNN_MAX_CPU_ISA=AVX2 set by hand);
- the pin lifted (STEELDEFECT_CPU_ISA=native: AVX-512 where the CPU has it) and a CPU below AVX2 (SSE41), which
  are expected to differ.
The cost of the pin is its time against the native run's. Needs the pipeline's data/split (run `dvc repro split`).

    .venv/bin/python bench/bench_bits.py [--epochs 60]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = {}
VARIANTS = {  # name: (environment, expected to equal the pin)
    "pin (AVX2), 2 threads": (PIN, True),
    "pin, OMP_NUM_THREADS=1": ({"OMP_NUM_THREADS": "1"}, True),
    "pin, intra-op threads 1": ({"TF_NUM_INTRAOP_THREADS": "1"}, True),
    "pin, intra-op threads 2": ({"TF_NUM_INTRAOP_THREADS": "2"}, True),
    "AVX2-only CPU (emulated)": ({"STEELDEFECT_CPU_ISA": "native", "ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
    "native (pin lifted)": ({"STEELDEFECT_CPU_ISA": "native"}, False),
    "SSE4.1 CPU (emulated)": ({"STEELDEFECT_CPU_ISA": "native", "ONEDNN_MAX_CPU_ISA": "SSE41"}, False),
}


def weights_hash(path: Path) -> str:
    """md5 of every weight array in the file, in name order (the file's own bytes hold timestamps)."""
    digest = hashlib.md5()
    with h5py.File(path) as f:
        for name in sorted(n for n in _names(f) if isinstance(f[n], h5py.Dataset)):
            digest.update(name.encode() + f[name][()].tobytes())
    return digest.hexdigest()


def _names(f: h5py.File) -> list[str]:
    names = []
    f.visit(names.append)
    return names


def train(env: dict, tmp: Path, epochs: int) -> tuple[str, float]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp / "data").symlink_to(ROOT / "data")  # the split's image paths are relative to the repository
    clean = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "STEELDEFECT_CPU_ISA")}
    cmd = [sys.executable, str(ROOT / "stages/train.py"), "--split", str(ROOT / "data/split"), "--masks",
           str(ROOT / "data/prepared/masks.csv"), "--weights", str(tmp / "w.weights.h5"), "--live", str(tmp / "live")]
    start = time.perf_counter()
    env = {**clean, "STEELDEFECT_FEATURE_CACHE": "off", "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"train stage failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return weights_hash(tmp / "w.weights.h5"), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = {}
    for name, (env, _) in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = train(env, Path(tmp), args.epochs)
        print(f"{name:28s} {results[name][0]}  {results[name][1]:6.1f} s", flush=True)
    pin, native = results["pin (AVX2), 2 threads"], results["native (pin lifted)"]
    ok = all((results[name][0] == pin[0]) == same for name, (_, same) in VARIANTS.items())
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"RESULT as_expected={ok} pin_seconds={pin[1]:.1f} native_seconds={native[1]:.1f} "
          f"pin_cost={pin[1] / native[1]:.2f}x")


if __name__ == "__main__":
    main()
