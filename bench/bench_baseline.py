"""Benchmark: the baseline stage's work (features + fit + scoring) on a Severstal-layout folder.

Prepares the folder, splits it 70/15/15 stratified (seed 0 by default, as the issue's magnetic-tile table) and
runs steeldefect.evaluate.baseline.run_baseline with the default params. Prints wall and CPU seconds (the machine may
be shared: CPU seconds are what an idle 2-core machine would need, near enough, as the stage uses one core)
and the test metrics.

    python bench/bench_baseline.py [FOLDER] [--seed 0] [--threshold auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from steeldefect.data.dataset import split
from steeldefect.data.prepare import prepare
from steeldefect.evaluate.baseline import run_baseline
from steeldefect.params import load_params

P = load_params(Path(__file__).resolve().parents[1] / "params.yaml")  # the repository's params
FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic-tile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=FOLDER)
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--threshold", default="0.5", help="a number or auto (chosen on validation)")
    args = parser.parse_args()
    images, *_ = prepare(args.folder, "fail", P.data)
    parts, _ = split(images, 0.15, 0.15, args.seed)
    threshold = args.threshold if args.threshold == "auto" else float(args.threshold)
    wall, cpu = time.perf_counter(), os.times()
    policy = dataclasses.replace(P.evaluate, threshold=threshold)
    r = run_baseline(parts["train"], parts["val"], parts["test"], P.baseline, P.seed, policy)
    wall, cpu_end = time.perf_counter() - wall, os.times()
    m = r.metrics
    print(
        f"{len(images)} images ({args.folder.name}): features {r.feature_seconds:.1f} s + fit and scoring "
        f"{r.fit_seconds:.1f} s = {wall:.1f} s wall, {cpu_end.user + cpu_end.system - cpu.user - cpu.system:.1f} s "
        f"CPU (load average {os.getloadavg()[0]:.1f})\n"
        f"test ROC AUC {m['roc_auc']:.3f}, AP {m['average_precision']:.3f}, balanced accuracy "
        f"{m['balanced_accuracy']:.3f} at threshold {m['threshold']:.3g} ({m['threshold_choice']['policy']}); "
        f"TP {m['tp']} TN {m['tn']} FP {m['fp']} FN {m['fn']}"
    )


if __name__ == "__main__":
    main()
