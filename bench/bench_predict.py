"""Throughput of `steeldefect predict` against the raw model, in one process (run by hand, not by pytest).

    .venv/bin/python bench/bench_predict.py [--n 200] [--images data/synthetic/train_images] [--model-dir models]

(a) raw model: `model.predict` on a numpy array of already preprocessed images (no file reading, no decoding),
and (a') the same images cut into batches beforehand, each through `model.predict_on_batch` (model compute only);
(b) the command's code path (`steeldefect.inference.predict_files`, what `steeldefect predict` calls once the
model is loaded) on the image files: tf.data reading, decoding, resizing and preprocessing included.
Prints img/s for both and the ratio b/a (goal >= 0.9), plus the whole command (model loading and the CSV
included) for reference. The runs alternate (a, a', b, a, a', b, ...) and the best of each is kept, so that load from
other processes on a shared CPU penalises both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--images", type=Path, default=Path("data/synthetic/train_images"))
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the one in model_meta.json")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of (a) and (b); best kept")
    args = parser.parse_args()

    needed = [args.model_dir / name for name in ("model.json", "model.weights.h5", "model_meta.json")]
    if not all(p.is_file() for p in needed):
        print(f"skipped: no exported model in {args.model_dir} (run `dvc repro export` first)")
        return 0
    files = sorted(str(p) for p in args.images.glob("*.jpg"))[: args.n]
    if not files:
        print(f"skipped: no .jpg images in {args.images} (run `dvc repro synthesize` first)")
        return 0

    import numpy as np

    from steeldefect.cli import load_for_inference, predict
    from steeldefect.inference import predict_files
    from steeldefect.pipeline import image_dataset

    model, image_size, meta = load_for_inference(args.model_dir)
    batch_size = args.batch_size or int(meta.get("batch_size") or 16)
    n = len(files)
    size = f"{image_size[0]}x{image_size[1]}"
    print(f"{n} images from {args.images}, model in {args.model_dir} ({size}), batch size {batch_size}")

    # the same preprocessed tensors, built beforehand: (a) then measures the model alone
    x = np.concatenate([batch.numpy() for batch in image_dataset(files, image_size, batch_size)])
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)  # warm-up: tracing
    predict_files(model, files[:batch_size], batch_size, image_size)

    times: dict[str, list[tuple[float, float]]] = {"a": [], "a2": [], "b": []}  # (wall, CPU) seconds
    batches = [x[i : i + batch_size] for i in range(0, n, batch_size)]

    def timed(key, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        times[key].append((time.perf_counter() - wall, time.process_time() - cpu))
        return out

    for _ in range(args.repeat):
        raw = timed("a", lambda: model.predict(x, batch_size=batch_size, verbose=0).reshape(-1))
        timed("a2", lambda: [model.predict_on_batch(batch) for batch in batches])
        result = timed("b", lambda: predict_files(model, files, batch_size, image_size))
    assert not result.failed, result.failed

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        predict(files, args.model_dir, Path(tmp) / "predictions.csv", batch_size=batch_size, progress=False)
        whole = time.perf_counter() - t

    rate = {k: n / min(w for w, _ in v) for k, v in times.items()}  # img/s, best wall time
    cpu = {k: min(c for _, c in v) / n for k, v in times.items()}  # CPU seconds per image (all threads)
    labels = {
        "a": "(a)  raw model.predict on the preprocessed array",
        "a2": "(a') model.predict_on_batch on pre-cut batches",
        "b": "(b)  predict_files on the image files",
    }
    for k, label in labels.items():
        runs = ", ".join(f"{w:.1f}" for w, _ in times[k])
        print(f"{label:50s} {rate[k]:6.2f} img/s  {cpu[k] * 1000:5.0f} ms CPU/img  (wall s: {runs})")
    print(f"ratio b/a = {rate['b'] / rate['a']:.3f} (goal >= 0.9); b/a' = {rate['b'] / rate['a2']:.3f}")
    print(
        f"CPU time per image, a/b = {cpu['a'] / cpu['b']:.3f}, a'/b = {cpu['a2'] / cpu['b']:.3f} (less load-sensitive)"
    )
    print(f"whole command (model loading + CSV included): {n / whole:6.2f} img/s ({whole:.1f} s)")
    print(f"max |(a) - (b)| probability difference: {float(np.max(np.abs(raw - result.probability))):.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
