"""Throughput of `steeldefect predict` against the raw model, in one process (run by hand, not by pytest).

    .venv/bin/python bench/bench_predict.py [--n 200] [--images data/synthetic/train_images] [--model-dir models]

(a) raw model: `model.predict` on a numpy array of already preprocessed images (no file reading, no decoding),
and (a') the same images cut into batches beforehand, each through `model.predict_on_batch` (model compute only);
(b) the command's code path (`steeldefect.serve.inference.predict_files`, what `steeldefect predict` calls once the
model is loaded) on the image files: tf.data reading, decoding, resizing and preprocessing included.
Prints img/s for both and the ratio b/a (goal >= 0.9), plus the whole command (model loading and the CSV
included) for reference. The runs alternate (a, a', b, a, a', b, ...) and the best of each is kept, so that load from
other processes on a shared CPU penalises both alike.

    .venv/bin/python bench/bench_predict.py engines [--split data/split/test.csv] [--repeat 3]

compares the engines side by side in one process, each through the real predict path on the image files
(`predict_files`: tf.data reading, JPEG decoding, resizing, preprocess_input, then the engine): Keras, OpenVINO
fp32 and OpenVINO int8 (both built here from the exported Keras model the way the export stage builds them:
`openvino_engine.convert`, then `quantize` on the same seeded sample of training images), and the fp32 IR
computed in bfloat16 (OpenVINO's own default on CPUs with AMX), each with the LATENCY hint (one inference on
all cores) and the THROUGHPUT hint (CPU streams: each batch split across them). It prints img/s, the ratio
to Keras, the agreement with Keras (largest probability difference, decisions identical at the threshold in
MODEL_DIR/threshold.json, ROC AUC when the CSV has labels), and decoding alone (the same tf.data path without a
model): the ceiling for any engine. Set OMP_NUM_THREADS or other environment variables on the command line to
try them (ratios stay comparable within one run).
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
    parser.add_argument("mode", nargs="?", choices=("path", "engines"), default="path")
    parser.add_argument("--split", type=Path, default=Path("data/split/test.csv"), help="engines: images + labels")
    parser.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--images", type=Path, default=Path("data/synthetic/train_images"))
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the one in model_meta.json")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of (a) and (b); best kept")
    args = parser.parse_args()
    if args.mode == "engines":
        return engines(args)

    needed = [args.model_dir / name for name in ("model.json", "model.weights.h5", "model_meta.json")]
    if not all(p.is_file() for p in needed):
        print(f"skipped: no exported model in {args.model_dir} (run `dvc repro export` first)")
        return 0
    files = sorted(str(p) for p in args.images.glob("*.jpg"))[: args.n]
    if not files:
        print(f"skipped: no .jpg images in {args.images} (run `dvc repro synthesize` first)")
        return 0

    import numpy as np

    from steeldefect.serve.cli import predict
    from steeldefect.serve.inference import predict_files
    from steeldefect.serve.predictor import Predictor
    from steeldefect.train.pipeline import image_dataset

    predictor = Predictor(args.model_dir, "keras", batch_size=args.batch_size, decide=False)
    model, image_size, batch_size = predictor.model, predictor.image_size, predictor.batch_size
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


def best_runs(runners: dict, repeat: int) -> dict[str, tuple[float, object]]:
    """{name: (best wall seconds, last result)}; the runners alternate so that load from other processes on a
    shared CPU penalises all alike."""
    best: dict[str, tuple[float, object]] = {}
    for _ in range(repeat):
        for name, fn in runners.items():
            t = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t
            best[name] = (min(seconds, best.get(name, (seconds, None))[0]), out)
    return best


def engines(args) -> int:
    from importlib.metadata import version

    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from steeldefect.errors import UserError
    from steeldefect.params import load_params
    from steeldefect.serve import openvino_engine  # imports openvino only once it has declined OpenVINO's telemetry
    from steeldefect.serve.inference import indexed_dataset, predict_files
    from steeldefect.serve.predictor import Predictor, resolve_threshold

    df = pd.read_csv(args.split, keep_default_na=False)[: args.n]
    files, labels = list(df.path), df.label.to_numpy() if "label" in df else None
    predictor = Predictor(args.model_dir, "keras", batch_size=args.batch_size, decide=False)
    model, size, batch_size = predictor.model, predictor.image_size, predictor.batch_size
    threshold, _ = resolve_threshold(None, args.model_dir)
    p = load_params()
    train = pd.read_csv(args.split.parent / "train.csv", keep_default_na=False).path
    calibration = list(train.sample(min(p.export.openvino_calibration_images, len(train)), random_state=p.seed))
    print(f"{len(files)} images from {args.split}, {size[0]}x{size[1]}, batch {batch_size}, threshold {threshold:g}")
    omp = os.environ.get("OMP_NUM_THREADS", "(unset)")
    print(f"OMP_NUM_THREADS={omp}, {os.cpu_count()} CPUs, openvino {version('openvino')}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = openvino_engine.convert(model, size)
        openvino_engine.save(fp32, Path(tmp) / "fp32.xml")
        openvino_engine.save(openvino_engine.quantize(fp32, calibration, size), Path(tmp) / "int8.xml")
        runners, refused = {"Keras (TensorFlow)": model}, []
        for precision, compute in (("fp32", "f32"), ("fp32", "bf16"), ("int8", "f32")):
            for hint in ("LATENCY", "THROUGHPUT"):
                config = {"INFERENCE_PRECISION_HINT": compute}
                label = precision if compute == "f32" else f"{precision} as {compute}"
                try:  # a setting this CPU cannot compile (bf16 under the AVX2 pin, say) is reported, not run
                    engine = openvino_engine.OpenVINOEngine(Path(tmp) / f"{precision}.xml", hint, config)
                except UserError as e:
                    refused.append(f"OpenVINO {label} {hint}: refused: {e}")
                    continue
                runners[f"OpenVINO {label} {hint} ({engine.n_requests} req.)"] = engine
        calls = {name: (lambda m=m: predict_files(m, files, batch_size, size)) for name, m in runners.items()}
        calls["decode + preprocess only"] = lambda: sum(len(i) for i, _ in indexed_dataset(files, size, batch_size))
        for m in runners.values():  # warm-up: tracing, first inference
            predict_files(m, files[:batch_size], batch_size, size)
        best = best_runs(calls, args.repeat)
    keras_rate, keras = len(files) / best["Keras (TensorFlow)"][0], best["Keras (TensorFlow)"][1].probability
    decode_rate = len(files) / best.pop("decode + preprocess only")[0]
    print(f"{'engine':42s} {'img/s':>7s} {'ratio':>6s} {'/decode':>7s} {'max dp':>7s} {'same':>7s} {'AUC':>6s}")
    for name, (seconds, result) in best.items():
        prob, rate = result.probability, len(files) / seconds
        same = np.mean((prob >= threshold) == (keras >= threshold))
        auc = f"{roc_auc_score(labels, prob):.4f}" if labels is not None and len(set(labels)) == 2 else "-"
        dp = float(np.max(np.abs(prob - keras)))
        ratios = f"{rate / keras_rate:6.2f} {rate / decode_rate:7.2f}"
        print(f"{name:42s} {rate:7.1f} {ratios} {dp:7.4f} {same:7.2%} {auc:>6s}")
    print(f"{'decode + preprocess only (tf.data, no model)':42s} {decode_rate:7.1f} {decode_rate / keras_rate:6.2f}")
    for line in refused:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
