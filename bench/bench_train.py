"""Benchmarks of training with a frozen backbone (run by hand; figures and ratios are measured in one run).

1. cache: 10 epochs on the same images, the notebook's way (whole model on the images every epoch, backbone
   frozen) against the feature cache (features once, then the classifier on them) -> time ratio, goal >= 8x.
2. memory: peak RSS of the train step on 500 against 5,000 images (each in a fresh process, the 5,000-row
   table cycling over 500 synthetic files) -> ratio, goal <= 1.2.

    .venv/bin/python bench/bench_train.py [cache|memory|all]
"""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.params import load_params

ROOT = Path(__file__).resolve().parents[1]
P = load_params(ROOT / "params.yaml")


def images(n_files: int, n_rows: int, tmp: Path) -> pd.DataFrame:
    write_dataset(dataclasses.replace(P.synthesize, n_images=n_files), seed=0, out_dir=tmp / "data")
    table = prepare(tmp / "data", "fail", P.data)[0]
    return pd.concat([table] * (n_rows // len(table) + 1)).head(n_rows).reset_index(drop=True)


def bench_cache(n: int = 160, epochs: int = 10) -> None:
    import keras
    import tensorflow as tf

    from steeldefect.train.model import build_model, compile_for_training
    from steeldefect.train.pipeline import image_dataset, training_batches
    from steeldefect.train.seeding import set_seed

    p = dataclasses.replace(load_params(ROOT / "params.yaml").train, epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        df = images(n, n, Path(tmp))
        y = df.label.to_numpy("float32")
        set_seed(0)
        model, features, classifier = build_model(p, None)
        compile_for_training(model, p.learning_rate)
        ds = training_batches(df.path, p.image_size, p.batch_size, y, None, seed=0, epochs=(0, epochs))
        model.fit(ds.take(1), epochs=1, verbose=0)  # warm-up (graph tracing) for both ways
        t0 = time.perf_counter()
        model.fit(ds, epochs=epochs, steps_per_epoch=-(-n // p.batch_size), verbose=0)
        notebook = time.perf_counter() - t0

        compile_for_training(classifier, p.learning_rate)
        t0 = time.perf_counter()
        x = features.predict(image_dataset(df.path, p.image_size, p.batch_size), verbose=0)
        extract = time.perf_counter() - t0
        cached = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=0).batch(p.batch_size)
        classifier.fit(cached, epochs=epochs, verbose=0)
        with_cache = time.perf_counter() - t0
    print(
        f"cache: {n} images {p.image_size[0]}x{p.image_size[1]}, backbone cut {p.backbone_layer}, {epochs} epochs "
        f"(keras {keras.__version__})"
    )
    print(f"  notebook way (whole model every epoch): {notebook:7.1f} s  ({n * epochs / notebook:6.1f} img/s)")
    print(f"  feature cache (features {extract:.1f} s + head {with_cache - extract:.1f} s): {with_cache:7.1f} s")
    print(f"  ratio: {notebook / with_cache:.1f}x (goal >= 8x)")


def _train_once(n_rows: int) -> None:  # in a child process: peak RSS of one train step
    from steeldefect.train.runtime import Runtime
    from steeldefect.train.training import train

    p = dataclasses.replace(load_params(ROOT / "params.yaml").train, epochs=2)
    with tempfile.TemporaryDirectory() as tmp:
        df = images(500, n_rows, Path(tmp))
        val = df.sample(frac=0.15, random_state=0)
        train(p, 0, df.drop(val.index), val, Path(tmp) / "w.weights.h5", Path(tmp) / "live", Runtime())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def bench_memory() -> None:
    peaks = {}
    for n in (500, 5000):
        out = subprocess.run([sys.executable, __file__, "_child", str(n)], capture_output=True, text=True, check=True)
        peaks[n] = int(out.stdout.split()[-1]) / 1024
        print(f"memory: train step on {n:5d} images: peak RSS {peaks[n]:7.0f} MiB")
    print(f"  ratio 5,000 / 500: {peaks[5000] / peaks[500]:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "_child":
        _train_once(int(sys.argv[2]))
    if what in ("cache", "all"):
        bench_cache()
    if what in ("memory", "all"):
        bench_memory()
