"""Export the trained model as JSON + weights (+ metadata), as a serving SavedModel and as an OpenVINO IR: the
pipeline side (it may build the model). Reading a model folder back is serve/model_files.py."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow.core.protobuf import fingerprint_pb2

from steeldefect import atomic
from steeldefect.errors import UserError
from steeldefect.params import Params, TrainParams, map_stride
from steeldefect.preprocess import decode_and_preprocess
from steeldefect.serve import drift
from steeldefect.serve.inference import predict_all, probability_columns
from steeldefect.serve.model_files import MODEL_JSON, MODEL_META, MODEL_WEIGHTS, SAVED_MODEL, THRESHOLD, load_model
from steeldefect.serve.openvino_engine import DISABLED as OPENVINO_DISABLED
from steeldefect.serve.openvino_engine import IR_DIR, IRRequest, export_ir
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import image_dataset

CLASS_MEANING = {"0": "clean", "1": "defect"}
SAVED_MODEL_DISABLED = (
    "export.saved_model is false in params.yaml, so no TensorFlow SavedModel was exported.\n"
    "Set it to true and run `dvc repro export` to get one here.\n"
)


def save_serving_model(model: keras.Model, image_size: tuple[int, int], path: Path) -> None:
    """A TensorFlow SavedModel at `path` whose `serving_default` signature maps `image_bytes` (tf.string, shape
    [None]: encoded JPEG, or PNG / GIF / BMP) to the model's outputs, those it has: `probability` (float32, shape
    [None]), `classes` (float32 [None, K], one probability per defect type) and `defect_map` (float32,
    [None, h, w, 1]), as the Keras model, with the preprocessing of `preprocess.decode_and_preprocess` inside the
    graph: servable by TF Serving or any TF runtime."""
    size = tuple(int(s) for s in image_size)

    def serve(image_bytes):
        images = tf.map_fn(
            lambda data: decode_and_preprocess(data, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec((*size, 3), tf.float32),
        )
        outputs = model(images, training=False)
        outputs = outputs if isinstance(outputs, dict) else {"probability": outputs}
        return {name: tf.reshape(v, [-1]) if name == "probability" else v for name, v in outputs.items()}

    module = tf.Module(name="steeldefect")
    module.model = model
    module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    _stable_fingerprint(path)


def _stable_fingerprint(path: Path) -> None:
    """TensorFlow writes a random `uuid` into fingerprint.pb, the only file of a SavedModel that differs between
    two exports of the same weights (so DVC would see a new output, and `dvc.lock` would change, on every rerun).
    Derive it from the fingerprint's content hashes instead: equal models, equal bytes."""
    fingerprint = fingerprint_pb2.FingerprintDef.FromString((Path(path) / "fingerprint.pb").read_bytes())
    hashes = (fingerprint.saved_model_checksum, fingerprint.signature_def_hash, fingerprint.checkpoint_hash)
    fingerprint.uuid = str(int(hashlib.md5(repr(hashes).encode()).hexdigest(), 16))
    (Path(path) / "fingerprint.pb").write_bytes(fingerprint.SerializeToString(deterministic=True))


def keras_outputs(model: keras.Model, images: tf.data.Dataset) -> dict[str, np.ndarray]:
    """The model's outputs by name, those it has: `probability` (n, 1), `classes` (n, K), `defect_map`
    (n, h, w, 1), `type_maps` (n, h, w, K)."""
    outputs = model.predict(images, verbose=0)
    return dict(outputs) if isinstance(outputs, dict) else {"probability": outputs}


def max_difference(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """The largest absolute difference over every output, flattened (inf when the outputs differ in names or
    sizes)."""
    if expected.keys() != got.keys() or any(np.size(expected[k]) != np.size(got[k]) for k in expected):
        return float("inf")
    return max(float(np.max(np.abs(np.ravel(expected[k]) - np.ravel(got[k])), initial=0)) for k in expected)


def output_meta(outputs: dict[str, np.ndarray], image_size: tuple[int, int]) -> dict:
    """`supervision`, `map_stride` and the map output's description, read from the model's outputs; for a model
    with defect types also `target` (classes) and `defect_output` (whether it has the defect probability)."""
    typed = {"target": "classes", "defect_output": "probability" in outputs} if "classes" in outputs else {}
    if "defect_map" not in outputs:
        return {"supervision": "image", "map_stride": None, **typed}
    (h, w), (height, width) = outputs["defect_map"].shape[1:3], image_size
    stride = height // h
    if (h * stride, w * stride) != (height, width):
        raise UserError(
            f"the model's defect map of {h}x{w} cells does not tile its {height}x{width} input into square cells; "
            "train.image_size must be a multiple of the map stride."
        )
    return {
        "supervision": "mask",
        "map_stride": stride,
        "map_size": [h, w],
        "defect_map": f"float32 [{h}, {w}]: probability that each {stride}x{stride}-pixel cell of the resized image "
        "shows any defect; cell (r, c) covers rows r*H/h..(r+1)*H/h and columns c*W/w..(c+1)*W/w of an HxW image",
        **typed,
        **(
            {"type_maps": f"float32 [{h}, {w}, K]: as defect_map, one channel per defect type (order of classes)"}
            if "type_maps" in outputs
            else {}
        ),
    }


def checked_output_meta(meta: dict, outputs: dict[str, np.ndarray], image_size, out_dir: Path) -> dict:
    """`output_meta`, after checking it agrees with the `supervision` and `map_stride` in `meta` (from params) and
    that `meta` names as many defect types (`classes`) as the model gives probabilities per type."""
    derived = output_meta(outputs, image_size)
    names, k = meta.get("classes", []), outputs["classes"].shape[1] if "classes" in outputs else 0
    if len(names) != k:
        raise UserError(
            f"{out_dir}: the model gives {k} defect-type probabilities but model_meta names {len(names)} defect types "
            f"({', '.join(names) or 'none'}); retrain (`dvc repro train`) so the weights belong to the types of "
            "classes.csv. Nothing was exported."
        )
    for key in ("supervision", "map_stride"):
        if key in meta and meta[key] != derived[key]:
            raise UserError(
                f"{out_dir}: the params say {key} = {meta[key]!r} but the trained model gives {derived[key]!r}; "
                "retrain (`dvc repro train`) so the weights belong to these params. Nothing was exported."
            )
    return derived


def _check_serving(model, image_size, path: Path, check_paths: list[str], expected: dict) -> float:
    """Write the SavedModel to `path`, load it back and return its largest difference from `expected`."""
    save_serving_model(model, image_size, path)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    served = serve(tf.constant([Path(p).read_bytes() for p in check_paths]))
    diff = max_difference(expected, {k: v.numpy() for k, v in served.items()})
    if diff > 1e-5:
        raise UserError(
            f"{path.parent / SAVED_MODEL}: the SavedModel predicts differently from the trained model (max "
            f"difference {diff:.3g} over {', '.join(sorted(expected))} on {len(check_paths)} images); "
            "nothing was exported."
        )
    return diff


def export(
    p: TrainParams,
    trained_weights: Path,
    out_dir: Path,
    check_paths: list[str],
    meta: dict,
    saved_model: bool = True,
    openvino: IRRequest | None = None,
    drift_paths: list[str] | None = None,
) -> float:
    """Build the model of `p` with the outputs `meta` says (`classes`: the defect types; `defect_output`), load
    `trained_weights` and export it (see `export_model`)."""
    names = meta.get("classes", [])
    model, _, _ = build_model(p, weights=None, types=len(names), defect=meta.get("defect_output", True))
    try:
        model.load_weights(trained_weights)
    except ValueError as e:  # Keras: the saved layers or shapes differ
        typed = f" with the {len(names)} defect types of classes.csv" if names else ""
        raise UserError(
            f"{trained_weights}: these weights do not fit the model the params describe{typed} ({e}); retrain "
            "(`dvc repro train`). Nothing was exported."
        ) from e
    return export_model(model, p.image_size, out_dir, check_paths, meta, saved_model, openvino, drift_paths)


def export_model(
    model: keras.Model,
    image_size: tuple[int, int],
    out_dir: Path,
    check_paths: list[str],
    meta: dict,
    saved_model: bool = True,
    openvino: IRRequest | None = None,
    drift_paths: list[str] | None = None,
) -> float:
    """Write model.json, model.weights.h5 (no optimizer state), model_meta.json (`meta` + `output_meta`), the
    saved_model/ folder (a serving SavedModel, or only a README.txt when `saved_model` is false) and the openvino/
    folder (the IR `openvino` asks for, whose check figures go into model_meta.json, or only a README.txt) into
    `out_dir`. Everything is written to temporary paths first, reloaded from there, and moved into place only if
    the reloaded models' outputs (each of probability, classes, defect_map, type_maps the model has) on
    `check_paths` (images resized to `image_size`) equal the trained model's (the SavedModel to 1e-5: its graph
    differs) and the IR passes its check. With `drift_paths` (the validation images) also drift_reference.json:
    the histogram of the model's probabilities on them, the reference of `steeldefect serve`'s drift figure
    (serve/drift.py). Returns the largest difference seen (the IR's excepted)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out_dir, prefix=".export.") as tmp,
        atomic.atomic_dir(out_dir / SAVED_MODEL) as tmp_saved,
        atomic.atomic_dir(out_dir / IR_DIR) as tmp_ir,
    ):
        tmp = Path(tmp)
        images = image_dataset(check_paths, image_size, batch_size=len(check_paths))
        expected = keras_outputs(model, images)
        meta = {**meta, **checked_output_meta(meta, expected, image_size, out_dir)}
        if meta.get("saved_model"):  # the SavedModel's outputs are the model's
            served = {
                **meta["saved_model"]["outputs"],
                "classes": f"float32 [None, {len(meta.get('classes', []))}]: probability of each defect type, in the "
                "order of classes, preprocessing included",
                "defect_map": "float32 [None, h, w, 1]: see defect_map",
                "type_maps": "float32 [None, h, w, K]: see type_maps",
            }
            served = {name: text for name, text in served.items() if name in expected}
            meta["saved_model"] = {**meta["saved_model"], "outputs": served}
        (tmp / MODEL_JSON).write_text(model.to_json())
        model.save_weights(tmp / MODEL_WEIGHTS)
        diff = max_difference(expected, keras_outputs(load_model(tmp), images))
        if diff > 1e-6:
            raise UserError(
                f"{out_dir}: the reloaded model predicts differently from the trained one (max "
                f"difference {diff:.3g} on {len(check_paths)} images); nothing was exported."
            )
        if saved_model:
            diff = max(diff, _check_serving(model, image_size, tmp_saved, check_paths, expected))
        else:
            (tmp_saved / "README.txt").write_text(SAVED_MODEL_DISABLED)
        if openvino is not None:
            meta = {**meta, "openvino": export_ir(model, image_size, tmp_ir, openvino, meta.get("classes", []))}
        else:
            (tmp_ir / "README.txt").write_text(OPENVINO_DISABLED)
        drift_reference(model, image_size, meta, drift_paths, tmp, out_dir)
        (tmp / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name in (MODEL_JSON, MODEL_WEIGHTS, MODEL_META, *([drift.DRIFT_REFERENCE] if drift_paths else [])):
            os.replace(tmp / name, out_dir / name)
    return diff


def drift_reference(model, image_size, meta: dict, paths: list[str] | None, tmp: Path, out_dir: Path) -> None:
    """drift_reference.json in `tmp` (moved into `out_dir` with the model): the histogram of the model's
    probabilities on `paths`, the validation images (serve/drift.py); without them, none (and no stale one)."""
    if not paths:
        (out_dir / drift.DRIFT_REFERENCE).unlink(missing_ok=True)
        return
    result = predict_all(model, paths, int(meta.get("batch_size") or 16), image_size)
    columns = probability_columns(result, meta.get("classes", []))
    drift.write_reference(tmp, columns, f"the validation split ({len(paths)} images, Keras)")


def model_meta(p: Params, train_df: pd.DataFrame, classes: list[str] | None = None) -> dict:
    """What the inference command (and anyone serving the model) needs besides the model: input size,
    preprocessing, output and class meaning, the batch size the predict stage uses (the command's default, so
    its probabilities match the stage's), the SavedModel's interface, a fingerprint of the training images and
    the library versions. The threshold is not here: the evaluate stage writes it to threshold.json.
    With train.target classes (`classes`: the defect types' names, in output order) also `target`, `classes` and
    `defect_output` (the model has the defect probability: the training images include clean ones); with
    train.target defect these keys are absent (read them as defect, [] and true), so today's file is unchanged."""
    meta = {
        "image_size": list(p.train.image_size),
        "preprocessing": "decode as RGB, bilinear antialiased resize to image_size, "
        "keras.applications.resnet50.preprocess_input (caffe: BGR, ImageNet mean removed)",
        "output": "probability that the image shows a defect (label 1)",
        "class_meaning": CLASS_MEANING,
        "decision": f"predicted = 1 (defect) when probability >= threshold; the threshold is in {THRESHOLD} beside "
        "this file when the evaluate stage wrote it",
        "batch_size": p.train.batch_size,
        "supervision": p.train.supervision,
        "map_stride": map_stride(p.train) if p.train.supervision == "mask" else None,
        "saved_model": {
            "path": SAVED_MODEL,
            "signature": "serving_default",
            "inputs": {"image_bytes": "tf.string [None]: encoded JPEG (or PNG) images"},
            "outputs": {"probability": "float32 [None]: defect probability, preprocessing included"},
        }
        if p.export.saved_model
        else None,
        "backbone": {"architecture": "ResNet50", "cut_after": p.train.backbone_layer, "weights": p.train.weights},
        "training_images_md5": hashlib.md5("".join(sorted(train_df.md5)).encode()).hexdigest(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
    }
    if p.train.target == "defect":
        return meta
    defect = bool((train_df.label == 0).any())
    by_type = (
        "classes: probability of each defect type (the names in `classes`, in that order; an image may show several)"
    )
    types = f"a type is predicted when its probability >= its threshold (class_thresholds in {THRESHOLD}, else 0.5)"
    if defect:
        meta.update(output=f"{by_type}; probability: {meta['output']}", decision=f"{types}; {meta['decision']}")
    else:
        meta.update(output=f"{by_type}; no defect probability (no clean training images)", decision=types)
    return {**meta, "target": "classes", "classes": list(classes or []), "defect_output": defect}
