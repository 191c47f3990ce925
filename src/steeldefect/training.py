"""Training: seeded, logged with dvclive, best-val_loss weights kept.

With a frozen backbone (and no augmentation) the backbone's output never changes, so it is computed once
per image and the head is trained on those cached features for every epoch; the saved weights are still the
whole ResNet50 + head.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from steeldefect.atomic import path_for
from steeldefect.model import build_model, compile_for_training
from steeldefect.params import TrainParams
from steeldefect.pipeline import image_dataset

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """One seed drives Python, NumPy and TensorFlow; ops are made deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _features(backbone: keras.Model, df: pd.DataFrame, p: TrainParams) -> np.ndarray:
    return backbone.predict(image_dataset(df.path, p.image_size, p.batch_size), verbose=0)


def train(
    p: TrainParams, seed: int, train_df: pd.DataFrame, val_df: pd.DataFrame, weights_out: Path, live_dir: Path
) -> None:
    """Fit the model and save the whole model's best (lowest val_loss) weights to `weights_out`."""
    set_seed(seed)
    model, backbone, head = build_model(p, p.weights)
    y_train, y_val = train_df.label.to_numpy("float32"), val_df.label.to_numpy("float32")
    start = time.perf_counter()
    if p.freeze_backbone:
        fitted = head
        x_train, x_val = _features(backbone, train_df, p), _features(backbone, val_df, p)
        log.info(
            "frozen backbone: features of %d images computed once in %.1f s, training the head on them",
            len(x_train) + len(x_val),
            time.perf_counter() - start,
        )
        train_ds = (
            tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=seed).batch(p.batch_size)
        )
        val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(p.batch_size)
    else:
        fitted = model
        train_ds = image_dataset(train_df.path, p.image_size, p.batch_size, y_train, shuffle_seed=seed)
        val_ds = image_dataset(val_df.path, p.image_size, p.batch_size, y_val)
    compile_for_training(fitted, p.learning_rate)

    with tempfile.TemporaryDirectory() as tmp, Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
        best = Path(tmp) / "best.weights.h5"
        callbacks = [
            keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=p.patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, p.patience // 2)),
            DVCLiveCallback(live=live),
        ]
        fitted.fit(train_ds, validation_data=val_ds, epochs=p.epochs, callbacks=callbacks, verbose=2)
        fitted.load_weights(best)
    log.info("trained in %.1f s", time.perf_counter() - start)
    with path_for(weights_out) as tmp_weights:
        model.save_weights(tmp_weights)
