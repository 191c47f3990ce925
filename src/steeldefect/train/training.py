"""Training: seeded, logged with dvclive, best-val_loss weights kept.

With a frozen backbone and no augmentation the features of an image (backbone output after the head's
pooling) never change, so they are computed once, kept in a file keyed by everything they depend on, and the
classifier is trained on them for every epoch. An optional fine-tuning phase then unfreezes the last ResNet
stages and trains the whole model on the images with a lower learning rate. The saved weights are always
those of the whole model (backbone + head).

The runtime settings (steeldefect.train.runtime: not params) choose the strategy, which spreads the batches over
several devices (`mirrored`) or machines (`multi_worker`, configured by TF_CONFIG; every worker runs the same
`train` call, and only the chief writes the weights, the dvclive logs and the caches to their real paths), and
the caches (steeldefect.cache: features, and decoded images kept on disk between epochs and runs).
`train.mixed_precision` computes in float16 / bfloat16 with float32 weights and output.

After training, the model is checked on the validation split (steeldefect.train.health): a degenerate run (constant
predictions, or ROC AUC no better than chance) is flagged in the metrics and by a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from steeldefect.atomic import path_for
from steeldefect.cache import FeatureCache, ImageCache, code_hash, feature_key, unusable, versions
from steeldefect.data.types import GIVEN_DEFECT, multi_hot
from steeldefect.errors import UserError
from steeldefect.params import TrainParams
from steeldefect.train import health
from steeldefect.train.distribute import distributed, everyone, is_chief, keras_multi_worker_fixes, make_strategy
from steeldefect.train.model import build_model, compile_for_training, learning_rate
from steeldefect.train.phases import Backup, Phase, replay_logs, run_key, run_phase, summary
from steeldefect.train.pipeline import feature_batches, image_dataset, training_batches
from steeldefect.train.runtime import Runtime, check_precision, load_runtime
from steeldefect.train.seeding import set_seed

log = logging.getLogger(__name__)
# the modules whose code decides a training run's bits (a changed one starts a killed run afresh)
TRAIN_CODE = tuple(
    f"train/{m}.py" for m in ("training", "segtrain", "phases", "pipeline", "model", "health", "distribute", "seeding")
) + ("data/types.py", "preprocess.py")


# --- features ---------------------------------------------------------------------------------------------


def cached_features(
    features: keras.Model,
    df: pd.DataFrame,
    p: TrainParams,
    seed: int,
    cache: FeatureCache | None,
    strategy: tf.distribute.Strategy | None = None,
    images: ImageCache | None = None,
    write: bool = True,
) -> np.ndarray:
    """The feature extractor's output (float32) for every image in df, from the cache when present. Under
    multi_worker the cache is read only when every worker has it (otherwise all compute the features
    together: predict is a collective op), and only the writer (`write`: the chief) stores it."""
    strategy = strategy or tf.distribute.get_strategy()
    key = feature_key(p, seed, df) if cache is not None else None
    x = cache.load(key) if cache is not None else None
    if everyone(strategy, x is not None):
        log.info("features of %d images read from %s: no backbone work", len(df), cache.path(key))
        return x
    start = time.perf_counter()
    ds = image_dataset(df.path, p.image_size, p.batch_size, cache=images.prefix(df) if images else None)
    x = np.asarray(features.predict(distributed(ds, strategy), verbose=0), dtype=np.float32)
    log.info("features of %d images computed in %.1f s", len(df), time.perf_counter() - start)
    if cache is not None and write and (written := cache.save(key, x)):
        log.info("features written to %s", written)
    return x


# --- targets ----------------------------------------------------------------------------------------------


def check_target(p: TrainParams, train_df: pd.DataFrame, val_df: pd.DataFrame, class_ids: tuple[str, ...]) -> None:
    """Refuse, before anything trains, a target the data cannot give: the defect probability of a set without clean
    images, or defect types when no training image carries one. Defective images without a type (labelled
    defective, no mask or type folder) still train the defect probability: the log says how many."""
    if p.target == "defect" and not (train_df.label == 0).any():
        raise UserError(
            f"train.target is defect, but none of the {len(train_df)} training images is clean (the set has no clean "
            "images: every image is defective, so there is no defect/clean decision to learn). Set train.target: "
            "classes to learn which defect type each image shows."
        )
    if p.target == "classes":
        if not class_ids:
            raise UserError("train.target is classes, but the data names no defect type (classes.csv is empty).")
        if not typed(train_df).any():
            raise UserError(
                f"train.target is classes, but none of the {len(train_df)} training images carries a defect type (a "
                "mask in train.csv, a type folder). Give the defective images their types, or set train.target: defect."
            )
        for name, df in (("train", train_df), ("validation", val_df)):
            untyped = int(((df.label == 1) & ~typed(df)).sum())
            if untyped:
                log.info(
                    "%d defective image(s) of the %s split have no defect type: they train the defect probability, "
                    "not the types",
                    untyped,
                    name,
                )


def typed(df: pd.DataFrame) -> np.ndarray:
    """Whether each image carries at least one defect type."""
    return df.classes.fillna("").astype(str).str.strip().ne("").to_numpy()


def targets(df: pd.DataFrame, class_ids: tuple[str, ...], defect: bool) -> np.ndarray | dict[str, np.ndarray]:
    """The labels of df's images: the defect label (train.target defect: `class_ids` empty), or a dict of the types'
    (n, K) 0/1 matrix (`classes`, and GIVEN_DEFECT where there is a defect probability) and, with `defect`, the
    defect label (`probability`, (n, 1))."""
    label = df.label.to_numpy("float32")
    if not class_ids:
        return label
    types = multi_hot(df.classes, list(class_ids))
    return {"classes": types, **({"probability": label[:, None], GIVEN_DEFECT: types} if defect else {})}


def sample_weights(df: pd.DataFrame, class_ids: tuple[str, ...], defect: bool, typed_share: float) -> dict | None:
    """The per-output sample weights of `targets` (train.target classes; None for defect): the types' loss
    (GIVEN_DEFECT, or `classes` without clean images) counts only the images that carry a type, each weighted
    1 / `typed_share` (the share of typed training images), so that the types weigh as much as the defect
    decision whatever the share of clean images. Every other output: 1."""
    if not class_ids:
        return None
    ones = np.ones(len(df), np.float32)
    types = (typed(df) / typed_share).astype(np.float32)
    return {"probability": ones, GIVEN_DEFECT: types, "classes": ones} if defect else {"classes": types}


class AliasMetrics(keras.callbacks.Callback):
    """Logs the accuracy of a dict-output model's `probability` (or, without one, `classes`) also as `accuracy` (and
    val_accuracy), the names the dvc.yaml plots read for every model."""

    def on_epoch_end(self, epoch, logs=None):
        for prefix in ("", "val_"):
            for name in ("probability", "classes"):
                if logs is not None and f"{prefix}{name}_accuracy" in logs:
                    logs[f"{prefix}accuracy"] = logs[f"{prefix}{name}_accuracy"]
                    break


# --- training ---------------------------------------------------------------------------------------------


def standard_callbacks(
    best: Path, p: TrainParams, live: Live, best_so_far: float | None = None, monitor: str = "val_loss"
) -> list:
    """Best checkpoint, EarlyStopping and ReduceLROnPlateau on `monitor` (a loss: lower is better; an AUC:
    higher), and the dvclive logger."""
    mode = "max" if monitor.endswith("auc") else "min"
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode=mode, factor=0.5, patience=max(1, p.patience // 2)
    )
    return [
        keras.callbacks.ModelCheckpoint(
            str(best),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=p.patience),
        *([plateau] if p.schedule == "plateau" else []),  # cosine: the schedule sets the rate
        DVCLiveCallback(live=live),
    ]


def unfreeze_last_stages(model: keras.Model, n: int) -> list[str]:
    """Make the last `n` ResNet stages present in the model trainable (BatchNorm stays frozen, in
    inference mode, as usual for fine-tuning on small batches). Returns the stage names."""
    backbone = model.get_layer("backbone")
    stages = sorted({layer.name.split("_")[0] for layer in backbone.layers if layer.name.startswith("conv")})
    chosen = stages[-n:]
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = layer.name.split("_")[0] in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return chosen


def train(
    p: TrainParams,
    seed: int,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    weights_out: Path,
    live_dir: Path,
    runtime: Runtime | None = None,
    callbacks: list | None = None,
    class_ids: tuple[str, ...] = (),
) -> dict:
    """Fit the model and save the whole model's best (lowest val_loss) weights to `weights_out`. Returns the
    health check of the saved model on the validation split (also in `live_dir`'s metrics.json). `callbacks`
    are added to the standard ones of the first fit (the real-data benchmark stops by wall clock with one).
    With train.target classes, `class_ids` are the defect types (data/prepared/classes.csv) in output order.

    `runtime` (default: from the environment, see steeldefect.train.runtime) chooses the strategy and the caches.
    Under the multi_worker strategy every worker calls this with the same arguments; the chief writes
    `weights_out`, `live_dir` and the caches, the other workers write theirs to a temporary folder (they
    still take part in every collective op: fit, predict, and the final save)."""
    runtime = runtime or load_runtime()
    check_precision(p)
    class_ids = tuple(class_ids) if p.target == "classes" else ()
    check_target(p, train_df, val_df, class_ids)
    strategy = make_strategy(runtime.strategy)  # first: MultiWorkerMirroredStrategy needs a TensorFlow not yet started
    set_seed(seed)
    chief = is_chief(strategy)
    if strategy.num_replicas_in_sync > p.batch_size:
        log.warning(
            "train.batch_size = %d is the global batch: below the %d replicas, some get no images",
            p.batch_size,
            strategy.num_replicas_in_sync,
        )
    previous_policy = keras.mixed_precision.global_policy()
    with tempfile.TemporaryDirectory(prefix="steeldefect-train.") as scratch:
        scratch = Path(scratch)
        if not chief:
            weights_out, live_dir = scratch / "worker" / Path(weights_out).name, scratch / "worker_live"
        cache_folder = worker_cache = runtime.image_cache
        if cache_folder is not None and not chief:  # beside the real caches (same disk), removed at the end
            cache_folder.mkdir(parents=True, exist_ok=True)
            cache_folder = worker_cache = Path(tempfile.mkdtemp(prefix=".worker.", dir=cache_folder))
        images = ImageCache(cache_folder, p.image_size)
        try:
            if p.mixed_precision:
                keras.mixed_precision.set_global_policy(p.mixed_precision)
                log.info("mixed precision %s: float32 weights and output", p.mixed_precision)
            features = FeatureCache(runtime.feature_cache) if runtime.feature_cache else None
            job = Job(p, seed, train_df, val_df, strategy, images, features, class_ids)
            return _train(job, Path(weights_out), Path(live_dir), scratch, callbacks, runtime)
        finally:
            images.close()
            if not chief and worker_cache is not None:
                shutil.rmtree(worker_cache, ignore_errors=True)
            keras.mixed_precision.set_global_policy(previous_policy)


@dataclass(frozen=True)
class Job:
    """What the training steps share: the params, the seed, the two splits, the strategy and the caches."""

    p: TrainParams
    seed: int
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    strategy: tf.distribute.Strategy
    images: ImageCache
    features: FeatureCache | None
    class_ids: tuple[str, ...] = ()  # train.target classes: the defect types, in output order

    @property
    def defect(self) -> bool:
        """Whether the model has the defect probability: the data has clean images."""
        return bool((self.train_df.label == 0).any())

    @property
    def y_train(self) -> np.ndarray | dict[str, np.ndarray]:
        return targets(self.train_df, self.class_ids, self.defect)

    @property
    def y_val(self) -> np.ndarray | dict[str, np.ndarray]:
        return targets(self.val_df, self.class_ids, self.defect)

    @property
    def typed_share(self) -> float:
        return float(typed(self.train_df).mean())

    @property
    def w_train(self) -> dict | None:
        return sample_weights(self.train_df, self.class_ids, self.defect, self.typed_share)

    @property
    def w_val(self) -> dict | None:
        return sample_weights(self.val_df, self.class_ids, self.defect, self.typed_share)


def backup_for(
    p: TrainParams,
    seed: int,
    splits: tuple[pd.DataFrame, pd.DataFrame],
    class_ids: tuple[str, ...],
    strategy: tf.distribute.Strategy,
    runtime: Runtime,
    weights_out: Path,
    parts: dict,
) -> Backup:
    """The run's backup (steeldefect.train.phases): a slot per output file in the cache folder, keyed by the params,
    the seed, the two splits (images by md5, labels, types), the starting weights, the code and the libraries. Off
    with STEELDEFECT_TRAIN_BACKUP=off, and under the multi_worker strategy (every worker would have to resume
    together)."""
    if runtime.backup is None or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return Backup(None, "")
    weights = p.weights
    if weights not in (None, "imagenet"):
        weights = hashlib.md5(Path(weights).read_bytes()).hexdigest()

    def split(df: pd.DataFrame) -> list:  # the images by content (prepared tables have their md5), labels, types
        images = df.md5 if "md5" in df else df.path
        types = df.classes.fillna("").astype(str) if "classes" in df else [""] * len(df)
        return [list(images), list(df.label.astype(int)), list(types)]

    key = run_key(
        {
            "params": dataclasses.asdict(p),
            "seed": seed,
            "train": split(splits[0]),
            "val": split(splits[1]),
            "class_ids": list(class_ids),
            "weights": weights,
            "code": code_hash(TRAIN_CODE),
            "versions": versions(),
            **parts,
        }
    )
    slot = hashlib.md5(str(Path(weights_out).resolve()).encode()).hexdigest()[:16]
    try:
        return Backup(runtime.backup / slot, key)
    except OSError as e:
        raise unusable(
            runtime.backup / slot, e, "turn the training backup off with STEELDEFECT_TRAIN_BACKUP=off"
        ) from e


def _setup(job: Job) -> tuple:
    """(the whole model, the model fitted first, whether on features, its datasets), compiled."""
    p, strategy = job.p, job.strategy
    with strategy.scope():
        model, features, classifier = build_model(p, p.weights, len(job.class_ids), job.defect)
    on_features = p.freeze_backbone and not p.augment
    if p.freeze_backbone and p.augment:
        log.info("augmentation is on, so the feature cache is off: augmented images change the features every epoch")
    if on_features:
        fitted, datasets = classifier, feature_datasets(job, features)
    else:
        fitted, datasets = model, image_datasets(job, p.augment)
    with strategy.scope():
        compile_for_training(fitted, learning_rate(p, math.ceil(len(job.train_df) / p.batch_size)), p.optimizer)
    return model, fitted, on_features, datasets


def _train(
    job: Job, weights_out: Path, live_dir: Path, scratch: Path, extra_callbacks: list | None, runtime: Runtime
) -> dict:
    """Fit the head (on cached features when the backbone is frozen and nothing is augmented, else the whole
    model on the images), optionally fine-tune, check the health, save the whole model's weights. Each fit is a
    phase (steeldefect.train.phases): a killed run resumes at its last finished epoch."""
    p, strategy = job.p, job.strategy
    model, fitted, on_features, (batches, val_ds) = _setup(job)
    start = time.perf_counter()
    steps = math.ceil(len(job.train_df) / p.batch_size)
    splits = (job.train_df, job.val_df)
    backup = backup_for(
        p, job.seed, splits, job.class_ids, strategy, runtime, weights_out, {"on_features": on_features}
    )

    # every worker keeps its own checkpoints (they are equal: the variables are kept in sync)
    with (
        keras_multi_worker_fixes(strategy, [fitted, model]),
        Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live,
    ):
        replay_logs(backup, DVCLiveCallback(live=live))
        standard = lambda best, so_far: standard_callbacks(best, p, live, so_far)  # noqa: E731
        extra = [*(extra_callbacks or []), AliasMetrics()]
        head = Phase("head", fitted, batches, val_ds, steps, first=0, epochs=p.epochs, callbacks=standard, extra=extra)
        result = run_phase(0, head, backup, scratch, "val_loss")
        log.info("trained in %.1f s (%d epochs)", time.perf_counter() - start, result.epochs)
        if p.fine_tune.epochs:
            stages = unfreeze_last_stages(model, p.fine_tune.stages)
            log.info(
                "fine-tuning %s for up to %d epochs at learning rate %g",
                stages,
                p.fine_tune.epochs,
                p.fine_tune.learning_rate,
            )
            with strategy.scope():
                compile_for_training(model, p.fine_tune.learning_rate, p.optimizer)
            if on_features:
                batches, val_ds = image_datasets(job, augment=False)
            tune = Phase("fine_tune", model, batches, val_ds, steps, result.epochs, p.fine_tune.epochs, standard)
            tune.best_so_far, tune.extra = result.best, [AliasMetrics()]
            tuned = run_phase(1, tune, backup, scratch, "val_loss")
            log.info("fine-tuning %s the validation loss", "improved" if tuned.improved else "did not improve")
            fitted = model  # the whole model, on the images
        for name, value in summary(result, tuned if p.fine_tune.epochs else None, "fine_tune", True).items():
            live.log_metric(name, value, plot=False)
        report = check_health(fitted, val_ds, job.y_val, live)
    write_weights(model, weights_out)
    backup.finish()
    return report


def image_datasets(job: Job, augment: bool) -> tuple[Callable[[int, int], tf.data.Dataset], tf.data.Dataset]:
    """(the training batches of given epochs, `pipeline.training_batches`: the images in an order, and with
    `augment` flips and colour changes, from (seed, epoch); the validation batches)."""
    p, train_df, val_df = job.p, job.train_df, job.val_df

    def batches(first: int, last: int) -> tf.data.Dataset:
        ds = training_batches(
            train_df.path,
            p.image_size,
            p.batch_size,
            job.y_train,
            job.w_train,
            job.seed,
            (first, last),
            augment,
            cache=job.images.prefix(train_df),
        )
        return distributed(ds, job.strategy)

    val_ds = image_dataset(
        val_df.path, p.image_size, p.batch_size, job.y_val, weights=job.w_val, cache=job.images.prefix(val_df)
    )
    return batches, distributed(val_ds, job.strategy)


def feature_datasets(job: Job, features: keras.Model) -> tuple[Callable[[int, int], tf.data.Dataset], tf.data.Dataset]:
    """As `image_datasets`, of the backbone's features (computed once, or read from the cache)."""
    p, chief = job.p, is_chief(job.strategy)

    def features_of(df: pd.DataFrame) -> np.ndarray:
        return cached_features(features, df, p, job.seed, job.features, job.strategy, job.images, chief)

    x_train = features_of(job.train_df)

    def batches(first: int, last: int) -> tf.data.Dataset:
        ds = feature_batches(x_train, job.y_train, job.w_train, p.batch_size, job.seed, (first, last))
        return distributed(ds, job.strategy)

    val = (features_of(job.val_df), job.y_val) if job.w_val is None else (features_of(job.val_df), job.y_val, job.w_val)
    return batches, distributed(tf.data.Dataset.from_tensor_slices(val).batch(p.batch_size), job.strategy)


def write_weights(model: keras.Model, weights_out: Path) -> None:
    with path_for(weights_out) as tmp_weights:
        model.save_weights(tmp_weights)
    log.info("weights written to %s", weights_out)


def check_health(model: keras.Model, val_ds: tf.data.Dataset, y_val, live: Live) -> dict:
    """The health check of the trained model on the validation split, added to the training metrics; a
    warning naming the params to look at when the run is degenerate. A model with a defect probability is judged by
    it, one with only defect types by their probabilities pooled (every (image, type) pair); with types, their
    macro ROC AUC is logged too (`val_classes_macro_auc`)."""
    predicted = model.predict(val_ds, verbose=0)
    if not isinstance(predicted, dict):
        predicted, y_val = {"probability": predicted}, {"probability": y_val}
    elif not isinstance(y_val, dict):
        y_val = {"probability": y_val}
    judged = "probability" if "probability" in predicted else "classes"
    report = health.check(np.ravel(y_val[judged]), np.ravel(predicted[judged]))
    if "classes" in predicted:
        live.summary["val_classes_macro_auc"] = health.macro_auc(y_val["classes"], predicted["classes"])
    live.summary["degenerate"] = report["degenerate"]
    for key in ("val_roc_auc", "val_prob_spread"):
        if report[key] is not None:
            live.summary[key] = report[key]
    if report["degenerate"]:
        log.warning(health.warning(report))
    else:
        log.info(
            "health check: validation ROC AUC %s, probabilities spread %.3f",
            report["val_roc_auc"],
            report["val_prob_spread"],
        )
    return report
