"""Training with train.supervision mask: the two-output model of `model.build_mask_model`, trained end to end
on crops (or whole images) with a pixel loss on the defect map and an image loss on the probability.

Seeded like image supervision; logged with dvclive (`loss` and `accuracy` as for image supervision, plus the
per-output losses and the AUC); the weights of the epoch with the best validation AUC are kept (see
MONITOR); EarlyStopping and ReduceLROnPlateau as for image supervision, on the same metric. Validation
predicts whole images at image_size.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import keras
import pandas as pd
from dvclive import Live

from steeldefect.atomic import path_for
from steeldefect.errors import UserError
from steeldefect.params import TrainParams, map_stride
from steeldefect.train.distribute import make_strategy
from steeldefect.train.model import OPTIMIZERS, build_mask_model
from steeldefect.train.pipeline import mask_eval_dataset, mask_training_dataset
from steeldefect.train.runtime import Runtime, load_runtime
from steeldefect.train.training import check_health, set_seed, standard_callbacks

log = logging.getLogger(__name__)
# The checkpoint, EarlyStopping and ReduceLROnPlateau follow the validation AUC of the image probability, not
# val_loss: trained on crops, the classifier is miscalibrated on whole images early on (its loss soars while its
# ranking improves), and val_loss then keeps the first epoch's weights.
MONITOR = "val_probability_auc"


class AliasMetrics(keras.callbacks.Callback):
    """Logs the probability output's accuracy also as `accuracy` (and val_accuracy), the names the dvc.yaml
    plots read for both supervisions."""

    def on_epoch_end(self, epoch, logs=None):
        for prefix in ("", "val_"):
            if logs is not None and f"{prefix}probability_accuracy" in logs:
                logs[f"{prefix}accuracy"] = logs[f"{prefix}probability_accuracy"]


def compile_mask_model(model: keras.Model, p: TrainParams) -> None:
    """Pixel and image binary cross-entropy; their weights (and the ramp) come as sample weights from the
    input pipeline, so the compiled model stays standard Keras."""
    model.compile(
        optimizer=OPTIMIZERS[p.optimizer](p.learning_rate),
        loss={"probability": "binary_crossentropy", "defect_map": "binary_crossentropy"},
        metrics={"probability": ["accuracy", keras.metrics.AUC(name="auc")]},
    )


def check(runtime: Runtime, train_df: pd.DataFrame, masks: pd.DataFrame) -> None:
    """Refuse, before anything trains, what mask supervision cannot do: the runtime settings it cannot honour
    (naming the variable to change) and training images without masks."""
    if runtime.strategy == "multi_worker":
        raise UserError(
            "STEELDEFECT_STRATEGY = multi_worker is not supported with train.supervision mask (only default and "
            "mirrored are): unset STEELDEFECT_STRATEGY or set it to mirrored, or train with train.supervision image."
        )
    if runtime.image_cache is not None:
        raise UserError(
            "STEELDEFECT_IMAGE_CACHE is on, but train.supervision mask cannot use the image cache (its crops are cut "
            "from freshly decoded images and masks): unset STEELDEFECT_IMAGE_CACHE or set it to off."
        )
    if not masks.ImageId.isin(train_df.ImageId).any():
        raise UserError(
            f"train.supervision is mask, but none of the {len(train_df)} training images has a mask (class folders "
            "and COCO boxes carry none). Set train.supervision: image, or give the images masks: image + mask pairs, "
            "MVTec AD or COCO segmentations (docs/data.md)."
        )


def train(
    p: TrainParams,
    seed: int,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    masks: pd.DataFrame,
    weights_out: Path,
    live_dir: Path,
    runtime: Runtime | None = None,
    callbacks: list | None = None,
) -> keras.callbacks.History:
    """Fit and save the best (highest validation AUC) weights of the whole model to `weights_out`. `masks` is the
    prepared masks table (ImageId, ClassId, EncodedPixels); `callbacks` are added to the standard ones (the
    real-data benchmark stops by wall clock with one).

    `runtime` (default: from the environment): the default and mirrored strategies are honoured, the rest is
    refused by `check` (the feature cache does not apply: the whole network trains)."""
    runtime = runtime or load_runtime()
    check(runtime, train_df, masks)
    strategy = make_strategy(runtime.strategy)
    set_seed(seed)
    stride, steps = map_stride(p), math.ceil(len(train_df) / p.batch_size)
    with strategy.scope():
        model = build_mask_model(p, p.weights)
        compile_mask_model(model, p)
    train_ds = mask_training_dataset(train_df, masks, p, stride, seed, steps)
    val_ds = mask_eval_dataset(val_df, masks, p.image_size, stride, p.batch_size, p.mask)
    crops = "whole images" if p.mask.crop_size is None else "{}x{} crops".format(*p.mask.crop_size)
    log.info("mask supervision: %s of %s images, map stride %d, %d steps per epoch", crops, p.image_size, stride, steps)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="steeldefect-segtrain.") as scratch:
        best = Path(scratch) / "best.weights.h5"
        with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
            standard = standard_callbacks(best, p, live, monitor=MONITOR)
            history = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=p.epochs,
                steps_per_epoch=steps,
                callbacks=[*(callbacks or []), AliasMetrics(), *standard],
                verbose=2,
            )
            model.load_weights(best)
            seconds = time.perf_counter() - start
            check_health(model, val_ds, val_df.label.to_numpy(), live)
            scores = history.history[MONITOR]
            live.log_params({"supervision": "mask", "map_stride": stride, "training": crops})
            for name, value in {
                "train_seconds": round(seconds, 1),
                "epochs_run": len(scores),
                "best_epoch": scores.index(max(scores)) + 1,
                "training_examples": len(history.epoch) * steps * p.batch_size,
            }.items():
                live.log_metric(name, value, plot=False)
        log.info("trained in %.1f s (%d epochs, best %d)", seconds, len(scores), scores.index(max(scores)) + 1)
        with path_for(weights_out) as tmp_weights:
            model.save_weights(tmp_weights)
    log.info("weights written to %s", weights_out)
    return history
