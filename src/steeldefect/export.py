"""Export the trained model as JSON + weights (+ metadata), and load it back safely."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from steeldefect.errors import UserError
from steeldefect.model import build_model
from steeldefect.params import Params, TrainParams
from steeldefect.pipeline import image_dataset

MODEL_JSON, MODEL_WEIGHTS, MODEL_META = "model.json", "model.weights.h5", "model_meta.json"


def load_model(model_dir: Path) -> keras.Model:
    """The model from `model.json` (Keras safe mode: no Lambda layers, no arbitrary code) + its weights."""
    json_path, weights_path = Path(model_dir) / MODEL_JSON, Path(model_dir) / MODEL_WEIGHTS
    try:
        model = keras.models.model_from_json(json_path.read_text())
    except OSError as e:
        raise UserError(f"{json_path}: cannot read the model ({e.strerror}); run the export stage first.") from e
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad or unsafe config
        raise UserError(
            f"{json_path}: refused to load this model description ({type(e).__name__}: {e}). Only "
            "models exported by steeldefect (standard Keras layers, no Lambda) can be loaded."
        ) from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Keras only warns when it skips layers it cannot match
            model.load_weights(weights_path)
    except FileNotFoundError as e:
        raise UserError(f"{weights_path}: not found; run the export stage first.") from e
    except Exception as e:  # noqa: BLE001 - shape/layer-count mismatches surface as ValueError and others
        raise UserError(
            f"{weights_path}: these weights do not match the architecture in {json_path} "
            f"({type(e).__name__}: {e}). Export the model again so both files belong together."
        ) from e
    return model


def export(p: TrainParams, trained_weights: Path, out_dir: Path, check_paths: list[str], meta: dict) -> float:
    """Write model.json, model.weights.h5 (no optimizer state) and model_meta.json into `out_dir`. They are
    written to a temporary folder first, reloaded from there, and moved into place only if the reloaded
    model's predictions on `check_paths` equal the trained model's. Returns the largest difference seen."""
    model, _, _ = build_model(p, weights=None)
    model.load_weights(trained_weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export.") as tmp:
        tmp = Path(tmp)
        (tmp / MODEL_JSON).write_text(model.to_json())
        model.save_weights(tmp / MODEL_WEIGHTS)
        (tmp / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        images = image_dataset(check_paths, p.image_size, batch_size=len(check_paths))
        expected = model.predict(images, verbose=0)
        diff = float(np.max(np.abs(expected - load_model(tmp).predict(images, verbose=0))))
        if diff > 1e-6:
            raise UserError(
                f"{out_dir}: the reloaded model predicts differently from the trained one (max "
                f"difference {diff:.3g} on {len(check_paths)} images); nothing was exported."
            )
        for name in (MODEL_JSON, MODEL_WEIGHTS, MODEL_META):
            os.replace(tmp / name, out_dir / name)
    return diff


def read_meta(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_META
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the model metadata ({e}); run the export stage first.") from e


def model_meta(p: Params, train_df: pd.DataFrame) -> dict:
    """What the inference command needs besides the model: input size, preprocessing, output meaning,
    a fingerprint of the training images and the library versions."""
    return {
        "image_size": list(p.train.image_size),
        "preprocessing": "decode as RGB, bilinear antialiased resize to image_size, "
        "keras.applications.resnet50.preprocess_input (caffe: BGR, ImageNet mean removed)",
        "output": "probability that the image shows a defect (label 1)",
        "backbone": {"architecture": "ResNet50", "cut_after": p.train.backbone_layer, "weights": p.train.weights},
        "training_images_md5": hashlib.md5("".join(sorted(train_df.md5)).encode()).hexdigest(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
    }
