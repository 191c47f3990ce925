"""Training with train.supervision mask: the two-output model of `model.build_mask_model`, trained end to end
on crops (or whole images) with a pixel loss on the defect map and an image loss on the probability.

Seeded like image supervision; logged with dvclive (`loss` and `accuracy` as for image supervision, plus the
per-output losses and the AUC); the weights of the epoch with the best validation AUC are kept (see
MONITOR); EarlyStopping and ReduceLROnPlateau as for image supervision, on the same metric. Validation
predicts whole images at image_size.

train.mask.seg_loss dice_bce adds (1 - soft Dice) of the map to its pixel loss (`DiceBCE`). With
train.mask.whole_image_epochs, a second phase then trains only the classifier on whole images (`whole_image_phase`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback
from keras import ops

from steeldefect.atomic import path_for
from steeldefect.data.types import GIVEN_DEFECT
from steeldefect.errors import UserError
from steeldefect.params import MaskParams, TrainParams, map_stride
from steeldefect.train.distribute import make_strategy
from steeldefect.train.model import (
    OPTIMIZERS,
    build_mask_model,
    learning_rate,
    measured_outputs,
    output_losses,
    output_metrics,
)
from steeldefect.train.phases import Phase, Result, replay_logs, run_phase, summary
from steeldefect.train.pipeline import mask_eval_dataset, mask_training_dataset, training_batches
from steeldefect.train.runtime import Runtime, load_runtime
from steeldefect.train.seeding import set_seed
from steeldefect.train.training import (
    AliasMetrics,
    backup_for,
    check_health,
    check_target,
    sample_weights,
    standard_callbacks,
    targets,
    typed,
)

log = logging.getLogger(__name__)
# The checkpoint, EarlyStopping and ReduceLROnPlateau follow the validation AUC of the image probability, not
# val_loss: trained on crops, the classifier is miscalibrated on whole images early on (its loss soars while its
# ranking improves), and val_loss then keeps the first epoch's weights.
MONITOR = "val_probability_auc"  # a set with no clean images: `monitor` gives val_classes_auc
# the classifier of `build_mask_model`: the layers the whole-image phase trains (train.mask.whole_image_epochs)
CLASSIFIER = ("cls_conv0", "cls_conv1", "probability")
MAPS = ("defect_map", "type_maps")  # the pixel outputs (type_maps: train.target classes)


class DiceBCE(keras.losses.Loss):
    """The map loss of train.mask.seg_loss dice_bce: the pixel loss of `bce` (binary cross-entropy times the pixel
    weight, averaged over all pixels) plus `dice_weight` x (1 - soft Dice) of the batch's map, the Dice counted
    over the pixels whose weight is > 0 (an image whose mask is unknown weighs 0: it does not count), smooth 1.

    The pixel weights come in y_true's last channel (`pack_pixel_weights`): a Keras sample weight multiplies
    every pixel's loss, which a batch Dice must not be. A map of K channels (`type_maps`) gets the mean of the K
    channels' batch Dice, each channel's its own. Only the loss is custom: the model and its weights files
    stay standard (losses are not saved). Under the mirrored strategy the Dice is per replica's batch."""

    def __init__(self, dice_weight: float = 1.0, name: str = "dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight

    def call(self, y_true, y_pred):
        target, weight = y_true[..., :-1], y_true[..., -1]
        known = ops.cast(weight > 0, y_pred.dtype)[..., None]
        if y_pred.shape[-1] == 1:  # defect_map
            overlap = ops.sum(y_pred * target * known)
            dice = (2 * overlap + 1) / (ops.sum(y_pred * known) + ops.sum(target * known) + 1)
        else:  # type_maps: each type's Dice over the batch, then their mean
            pixels = (0, 1, 2)
            overlap = ops.sum(y_pred * target * known, axis=pixels)
            total = ops.sum(y_pred * known, axis=pixels) + ops.sum(target * known, axis=pixels)
            dice = ops.mean((2 * overlap + 1) / (total + 1))
        # per pixel: its weighted cross-entropy plus the batch's Dice term, so Keras' mean over pixels is their sum
        return weight * keras.losses.binary_crossentropy(target, y_pred) + self.dice_weight * (1 - dice)

    def get_config(self) -> dict:
        return {**super().get_config(), "dice_weight": self.dice_weight}


def map_loss(m: MaskParams):
    """The loss of a map output (defect_map, type_maps): binary cross-entropy weighted by the sample weights (bce),
    or `DiceBCE`, its Dice term weighted like the pixel loss by seg_loss_weight."""
    return "binary_crossentropy" if m.seg_loss == "bce" else DiceBCE(m.seg_loss_weight)


def pack_pixel_weights(ds: tf.data.Dataset) -> tf.data.Dataset:
    """(image, targets, sample weights) batches for `DiceBCE`: each map's pixel weights move into its target's
    last channel; its sample weights become 1."""

    def pack(x, y, w):
        y, w = dict(y), dict(w)
        for name in MAPS:
            if name in y:
                y[name] = tf.concat([y[name], w[name][..., None]], axis=-1)
                w[name] = tf.ones_like(w[name])
        return x, y, w

    return ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE)


def _metrics(model: keras.Model) -> dict:
    return {n: output_metrics(n) for n in measured_outputs(model)}


def monitor(model: keras.Model) -> str:
    """MONITOR, or for a model without a defect probability (no clean images) the types' validation AUC."""
    return MONITOR if "probability" in model.output_names else "val_classes_auc"


def compile_mask_model(model: keras.Model, p: TrainParams, steps_per_epoch: int) -> None:
    """Pixel and image binary cross-entropy (plus the Dice term of the map with seg_loss dice_bce; and the types'
    binary cross-entropy with train.target classes); their weights (and the ramp) come as sample weights (dice_bce:
    the pixel weights inside the map's target) from the input pipeline, so the compiled model stays standard Keras."""
    model.compile(
        optimizer=OPTIMIZERS[p.optimizer](learning_rate(p, steps_per_epoch)),
        loss={**output_losses(model), **{n: map_loss(p.mask) for n in MAPS if n in model.output_names}},
        metrics=_metrics(model),
    )


def whole_image_dataset(
    train_df: pd.DataFrame, p: TrainParams, stride: int, seed: int, class_ids: tuple[str, ...] = (), defect: bool = True
) -> Callable[[int, int], tf.data.Dataset]:
    """The batches of given epochs of the whole-image phase: every training image once per epoch, whole at
    image_size, in an order (and with p.augment flips) from (seed, epoch) only. The maps' targets are zeros: the
    phase has no map loss, but Keras wants a target per output. With `class_ids`, the types too
    (`training.targets`)."""
    labels = targets(train_df, class_ids, defect)
    if not class_ids:
        labels = {"probability": labels[:, None]}
    weights = sample_weights(train_df, class_ids, defect, float(typed(train_df).mean()) if class_ids else 1.0)
    cells = (p.image_size[0] // stride, p.image_size[1] // stride, 1)
    steps = math.ceil(len(train_df) / p.batch_size)

    def example(step, batch):
        x, y, *w = batch
        if p.augment:  # 4-D: each image of the batch is flipped or not on its own
            flips = tf.random.experimental.stateless_split(tf.stack([tf.constant(seed + 4, tf.int64), step]), 2)
            x = tf.image.stateless_random_flip_up_down(tf.image.stateless_random_flip_left_right(x, flips[0]), flips[1])
        n = tf.shape(x)[0]
        maps = {"defect_map": tf.zeros((n, *cells))}
        if class_ids:
            maps["type_maps"] = tf.zeros((n, *cells[:2], len(class_ids)))
        y = {**y, **maps}
        return (x, y, {**w[0], **{k: tf.zeros((n, *cells[:2])) for k in maps}}) if w else (x, y)

    def batches(first: int, last: int) -> tf.data.Dataset:
        ds = training_batches(train_df.path, p.image_size, p.batch_size, labels, weights, seed, (first, last))
        ds = ds.enumerate(start=first * steps).map(example, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    return batches


def prepare_whole_image_phase(model: keras.Model, p: TrainParams, strategy: tf.distribute.Strategy) -> None:
    """The second phase (train.mask.whole_image_epochs, after Božič et al.: a classifier trained on crops is
    miscalibrated on whole images): everything but the CLASSIFIER layers frozen (the backbone's BatchNorm then
    runs in inference mode), only the image loss, Adam at train.learning_rate. The phase keeps its weights only if
    they beat the first phase's validation AUC."""
    for layer in model.layers:
        layer.trainable = layer.name in (*CLASSIFIER, "classes", GIVEN_DEFECT)
    with strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(p.learning_rate), loss=output_losses(model), metrics=_metrics(model)
        )
    log.info(
        "whole-image phase: the classifier %s for up to %d epochs", ", ".join(CLASSIFIER), p.mask.whole_image_epochs
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


def _datasets(
    p: TrainParams, seed: int, splits: tuple, masks: pd.DataFrame, class_ids: tuple, defect: bool, steps: int
):
    """(the training batches of given epochs, the validation batches)."""
    train_df, val_df = splits
    stride = map_stride(p)

    def crops(first: int, last: int) -> tf.data.Dataset:
        ds = mask_training_dataset(train_df, masks, p, stride, seed, steps, class_ids, defect, (first, last))
        return pack_pixel_weights(ds) if p.mask.seg_loss == "dice_bce" else ds

    val_ds = mask_eval_dataset(val_df, masks, p.image_size, stride, p.batch_size, p.mask, class_ids, defect)
    return crops, pack_pixel_weights(val_ds) if p.mask.seg_loss == "dice_bce" else val_ds


def _phases(model, job: tuple, crops, val_ds, live: Live, backup, scratch: Path, callbacks: list | None) -> tuple:
    """The crops phase, then the whole-image phase when train.mask.whole_image_epochs asks for it: their
    `phases.Result`s (the second None without it)."""
    p, seed, train_df, class_ids, defect, strategy, steps = job
    watched = monitor(model)
    standard = lambda best, so_far: standard_callbacks(best, p, live, so_far, monitor=watched)  # noqa: E731
    extra = [*(callbacks or []), AliasMetrics()]
    first = run_phase(
        0, Phase("crops", model, crops, val_ds, steps, 0, p.epochs, standard, extra=extra), backup, scratch, watched
    )
    if not p.mask.whole_image_epochs:
        return first, None
    prepare_whole_image_phase(model, p, strategy)
    batches = whole_image_dataset(train_df, p, map_stride(p), seed, class_ids, defect)
    phase = Phase("whole_image", model, batches, val_ds, steps, first.epochs, p.mask.whole_image_epochs, standard)
    phase.best_so_far, phase.extra = first.best, extra
    second = run_phase(1, phase, backup, scratch, watched)
    log.info("the whole-image phase %s the validation AUC", "improved" if second.improved else "did not improve")
    return first, second


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
    class_ids: tuple[str, ...] = (),
) -> Result:
    """Fit and save the best (highest validation AUC) weights of the whole model to `weights_out`. `masks` is the
    prepared masks table (ImageId, ClassId, EncodedPixels); `callbacks` are added to the standard ones (the
    real-data benchmark stops by wall clock with one; they reach the whole-image phase's fit too). Returns the
    first phase's result (`phases.Result`: epochs run, the validation AUC of each). A killed run resumes
    (steeldefect.train.phases). With train.target classes, `class_ids` are the defect types in output order.

    `runtime` (default: from the environment): the default and mirrored strategies are honoured, the rest is
    refused by `check` (the feature cache does not apply: the whole network trains)."""
    runtime = runtime or load_runtime()
    check(runtime, train_df, masks)
    class_ids = tuple(class_ids) if p.target == "classes" else ()
    check_target(p, train_df, val_df, class_ids)
    defect = bool((train_df.label == 0).any())
    strategy = make_strategy(runtime.strategy)
    set_seed(seed)
    stride, steps = map_stride(p), math.ceil(len(train_df) / p.batch_size)
    with strategy.scope():
        model = build_mask_model(p, p.weights, len(class_ids), defect)
        compile_mask_model(model, p, steps)
    crops, val_ds = _datasets(p, seed, (train_df, val_df), masks, class_ids, defect, steps)
    crop_text = "whole images" if p.mask.crop_size is None else "{}x{} crops".format(*p.mask.crop_size)
    log.info(
        "mask supervision: %s of %s images, map stride %d, %d steps per epoch", crop_text, p.image_size, stride, steps
    )
    start = time.perf_counter()
    backup = backup_for(p, seed, (train_df, val_df), class_ids, strategy, runtime, weights_out, {"supervision": "mask"})
    with tempfile.TemporaryDirectory(prefix="steeldefect-segtrain.") as scratch:
        scratch = Path(scratch)
        with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
            replay_logs(backup, DVCLiveCallback(live=live))
            job = (p, seed, train_df, class_ids, defect, strategy, steps)
            first, second = _phases(model, job, crops, val_ds, live, backup, scratch, callbacks)
            seconds = time.perf_counter() - start
            check_health(model, val_ds, targets(val_df, class_ids, defect), live)
            live.log_params({"supervision": "mask", "map_stride": stride, "training": crop_text})
            figures = summary(first, second, "whole_image", lower_is_better=False)
            examples = first.epochs * steps * p.batch_size + figures["whole_image_epochs_run"] * len(train_df)
            for name, value in {"train_seconds": round(seconds, 1), **figures, "training_examples": examples}.items():
                live.log_metric(name, value, plot=False)
        log.info("trained in %.1f s (%d + %d epochs, best %d)", seconds, *figures.values())
        with path_for(weights_out) as tmp_weights:
            model.save_weights(tmp_weights)
    backup.finish()
    log.info("weights written to %s", weights_out)
    return first
