"""Reading an exported model folder (the line side): its file names, the Keras model loaded safely, its metadata
and its fingerprint. Writing one is serve/export.py (the pipeline side)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from steeldefect.errors import UserError

MODEL_JSON, MODEL_WEIGHTS, MODEL_META = "model.json", "model.weights.h5", "model_meta.json"
SAVED_MODEL = "saved_model"  # folder: TensorFlow SavedModel, signature serving_default (image_bytes -> outputs)
THRESHOLD = "threshold.json"  # written beside the model by the evaluate stage; read by the command if present


def load_model(model_dir: Path):
    """The model from `model.json` (Keras safe mode: no Lambda layers, no arbitrary code) + its weights."""
    import keras

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


def read_meta(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_META
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the model metadata ({e}); run the export stage first.") from e


def fingerprint(model_dir: Path) -> str:
    """The exported model's identity: the first 16 hex digits of the md5 of model.json and model.weights.h5 (an
    export writes the same bytes for the same weights, so equal models have equal fingerprints)."""
    digest = hashlib.md5()
    for name in (MODEL_JSON, MODEL_WEIGHTS):
        path = Path(model_dir) / name
        try:
            with path.open("rb") as f:
                while chunk := f.read(2**22):
                    digest.update(chunk)
        except OSError as e:
            raise UserError(f"{path}: cannot read it ({e.strerror or e}); run the export stage first.") from e
    return digest.hexdigest()[:16]
