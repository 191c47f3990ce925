"""Self-supervised pretraining of the ResNet50 backbone on unlabeled images: masked-patch reconstruction.

What. Each image (resized to train.image_size, randomly flipped, and turned by quarter turns when square) is cut
into a grid of `pretrain.patch_size` pixel patches; a share `pretrain.mask_ratio` of them is hidden (set to 0 in
ResNet50's preprocessed space, i.e. to the ImageNet mean colour). The backbone, cut at train.backbone_layer (stride
s), sees the masked image; a linear decoder as in SimMIM (Xie et al. 2022; SparK, Tian et al. 2023, does the same
for CNNs) turns each feature-map cell back into its s x s pixels: a 1x1 convolution to s*s*3 channels then
`tf.nn.depth_to_space(s)`. The loss is the mean squared error on the hidden pixels only, against the unmasked
preprocessed image / 64 (about unit scale). The whole ResNet50's weights are saved (the cut part trained, the rest
at its seeded random init), a file `train.weights` loads like any ResNet50 weights file.

Why this method rather than contrastive learning:
- one view per step: half SimCLR's compute (two augmented views of every image), which counts on 2 CPU cores;
- no large batch of negatives: SimCLR needs big batches to learn, ours are about 32 images;
- no collapse to a constant representation to guard against (as BYOL must, with its momentum encoder and
  predictor): the reconstruction target is the image itself;
- surface defects are local texture anomalies, and predicting hidden patches from their surroundings is exactly
  learning what normal local texture looks like.

Labels are never read: the function takes image paths (the training split's, plus any unlabeled folder). A killed
run resumes: Keras' BackupAndRestore keeps the model and optimizer state after every epoch in the cache folder
(steeldefect.cache), keyed by everything the run depends on, and the next run with the same key continues
after the last finished epoch (with the same batches as an uninterrupted run: each epoch's order, flips and masks
derive from the seed and the epoch number only); the backup is deleted when the weights are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf
from dvclive import Live
from PIL import Image

from steeldefect import cache
from steeldefect.atomic import path_for
from steeldefect.errors import UserError
from steeldefect.params import PretrainParams, TrainParams, map_stride
from steeldefect.preprocess import decode_resize
from steeldefect.train.seeding import set_seed

log = logging.getLogger(__name__)
WEIGHTS_FILE = "backbone.weights.h5"  # the pretrain stage's output, in its folder; train.weights: pretrained
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # what TensorFlow's decode_image reads
TIFF_SUFFIXES = (".tif", ".tiff")  # image files it cannot decode: skipped, with a warning
TARGET_SCALE = 64.0  # preprocessed pixels (BGR minus the ImageNet mean, about -124..152) / 64: about unit scale
HISTORY = "history.json"  # beside the Keras backup: the losses and seconds of the finished epochs


def image_paths(train_paths: Sequence[str], extra: Path | None = None) -> list[str]:
    """The images to pretrain on: `train_paths` (the training split's, in order), then every image file under the
    folder `extra` (recursive, sorted; hidden and non-image files ignored), each checked to open as an image."""
    paths = [str(p) for p in train_paths]
    if extra is None:
        return paths
    extra = Path(extra)
    if not extra.is_dir():
        raise UserError(
            f"pretrain.extra_images: {extra} is not a folder. Create it (it may hold no image), or set "
            "pretrain.extra_images to a folder of unlabeled images (a relative path is taken from data/)."
        )
    files = sorted(f for f in extra.rglob("*") if f.is_file() and not f.name.startswith("."))
    tiff = [f for f in files if f.suffix.lower() in TIFF_SUFFIXES]
    if tiff:
        log.warning(
            "%d TIFF files under %s skipped: TensorFlow cannot decode TIFF (convert them to PNG)", len(tiff), extra
        )
    found = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    bad = []
    for f in found:
        try:
            with Image.open(f):
                pass
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            bad.append(f"{f} ({e})")
    if bad:
        raise UserError(
            f"pretrain.extra_images: {len(bad)} file(s) under {extra} do not open as images: "
            f"{'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''}. Remove or replace them."
        )
    log.info("pretraining images: %d of the training split + %d unlabeled from %s", len(paths), len(found), extra)
    return paths + [str(f) for f in found]


def run_key(p: PretrainParams, train: TrainParams, seed: int, paths: Sequence[str]) -> str:
    """What a pretraining run depends on, so a rerun resumes only the same run: its params, the input size and
    cut, the seed, the images (their paths, in order) and the code of this module and of the decoding."""
    key = {
        "pretrain": dataclasses.asdict(p),
        "image_size": list(train.image_size),
        "cut": train.backbone_layer,
        "seed": seed,
        "images": list(paths),
        "code": cache.code_hash(("train/pretrain.py", "preprocess.py")),
    }
    return hashlib.md5(json.dumps(key).encode()).hexdigest()


def pretrained_weights(folder: Path) -> str:
    """The pretrain stage's backbone weights in `folder` (for train.weights: pretrained)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(
            f"train.weights = 'pretrained', but {path} does not exist: run the pretrain stage first "
            "(`dvc repro pretrain`, with pretrain.epochs > 0)."
        )
    return str(path)


# --- data ---------------------------------------------------------------------------------------------------


def patch_mask(image_size: Sequence[int], patch: int, ratio: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 (h, w, 1), 1 on the hidden pixels: round(ratio * cells) cells (at least 1, at most all but 1) of
    the grid of patch x patch cells covering the image, chosen at random from the stateless `seed`."""
    rows, cols = (math.ceil(s / patch) for s in image_size)
    cells = rows * cols
    hidden = min(max(round(ratio * cells), 1), max(cells - 1, 1))
    order = tf.random.experimental.stateless_shuffle(tf.range(cells), seed)
    grid = tf.reshape(tf.cast(order < hidden, tf.float32), (rows, cols))
    pixels = tf.repeat(tf.repeat(grid, patch, axis=0), patch, axis=1)
    return pixels[: image_size[0], : image_size[1], None]


def masked_example(path: tf.Tensor, seed: tf.Tensor, image_size: Sequence[int], p: PretrainParams) -> tuple:
    """(masked preprocessed image, target) of one image: the target stacks the unmasked preprocessed image / 64
    (3 channels) and the mask (1 = hidden), which the loss reads."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = decode_resize(tf.io.read_file(path), image_size)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    if image_size[0] == image_size[1]:  # quarter turns keep a square's shape
        image = tf.image.rot90(image, tf.random.stateless_uniform([], seeds[2], 0, 4, tf.int32))
    image = keras.applications.resnet50.preprocess_input(image)
    hidden = patch_mask(image_size, p.patch_size, p.mask_ratio, seeds[3])
    return image * (1 - hidden), tf.concat([image / TARGET_SCALE, hidden], axis=-1)


def masked_batches(
    paths: Sequence[str], image_size: Sequence[int], p: PretrainParams, seed: int, first_epoch: int
) -> tf.data.Dataset:
    """The batches of epochs first_epoch .. p.epochs - 1, every image once per epoch (the last batch may be
    partial). An epoch's order, flips and masks derive from (seed, epoch) only, so a resumed run gets the same
    batches as an uninterrupted one."""
    table, n = tf.constant(list(paths), tf.string), len(paths)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([seed, epoch]))
        seeds = tf.stack([tf.fill([n], tf.constant(seed, tf.int64)), epoch * n + tf.range(n, dtype=tf.int64)], 1)
        rows = tf.data.Dataset.from_tensor_slices((tf.gather(table, order), seeds))
        example = rows.map(lambda path, s: masked_example(path, s, image_size, p), num_parallel_calls=tf.data.AUTOTUNE)
        return example.batch(p.batch_size)

    return tf.data.Dataset.range(first_epoch, p.epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


# --- model --------------------------------------------------------------------------------------------------


class PixelShuffle(keras.layers.Layer):
    """(h, w, s*s*c) -> (h*s, w*s, c): `tf.nn.depth_to_space`, SimMIM's linear decoder's second half."""

    def __init__(self, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def call(self, x):
        return tf.nn.depth_to_space(x, self.stride)

    def compute_output_shape(self, shape):
        s = self.stride
        return (shape[0], *(None if d is None else d * s for d in shape[1:3]), shape[3] // (s * s))

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


def build_pretrain_model(train: TrainParams) -> tuple[keras.Model, keras.Model]:
    """(the whole ResNet50, include_top=False, random init: what is saved; the reconstruction model: the ResNet50
    cut at train.backbone_layer + the linear pixel-shuffle decoder, sharing its layers)."""
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(*train.image_size, 3))
    try:
        cut = resnet.output if train.backbone_layer is None else resnet.get_layer(train.backbone_layer).output
    except ValueError as e:
        raise UserError(
            f"train.backbone_layer = {train.backbone_layer!r} is not a ResNet50 layer; use e.g. "
            "'conv2_block3_out', 'conv3_block4_out', 'conv4_block6_out' or null."
        ) from e
    stride = map_stride(train)
    pixels = keras.layers.Conv2D(stride * stride * 3, 1, name="decoder")(cut)
    return resnet, keras.Model(resnet.input, PixelShuffle(stride, name="pixel_shuffle")(pixels), name="pretrain")


def hidden_mse(y_true, y_pred):
    """Mean squared error over the hidden pixels only (y_true: target in channels 0-2, mask in channel 3)."""
    target, hidden = y_true[..., :3], y_true[..., 3:]
    squared = keras.ops.sum(keras.ops.square(y_pred - target) * hidden)
    return squared / keras.ops.maximum(3.0 * keras.ops.sum(hidden), 1.0)


# --- the run ------------------------------------------------------------------------------------------------


def backup_folder(key: str) -> Path:
    """The run's backup folder in the cache folder, created (an unusable cache folder is a UserError)."""
    folder = cache.default_root() / "pretrain" / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise cache.unusable(folder, e, "turn pretraining off with pretrain.epochs: 0") from e
    return folder


def read_history(backup: Path) -> dict:
    """The losses and seconds of the epochs a previous run finished (with its Keras backup), or an empty history."""
    try:
        meta = json.loads((backup / "training_metadata.json").read_text())
        history = json.loads((backup / HISTORY).read_text())
        done = int(meta["epoch"])
        losses = [float(v) for v in history["loss"][:done]]
    except (OSError, ValueError, KeyError, TypeError):
        return {"loss": [], "seconds": 0.0, "done": 0}
    # killed between the backup and the history of an epoch: its loss is unknown (NaN, not plotted)
    return {"loss": losses + [math.nan] * (done - len(losses)), "seconds": float(history["seconds"]), "done": done}


class EpochLog(keras.callbacks.Callback):
    """After BackupAndRestore saved an epoch: its loss into dvclive (step = epoch) and the history beside the
    backup, so a resumed run replays the earlier epochs and logs each epoch once."""

    def __init__(self, live: Live, history: dict, path: Path):
        super().__init__()
        self.live, self.history, self.path, self.start = live, history, path, time.perf_counter()
        self.before = history["seconds"]
        for epoch, loss in enumerate(history["loss"]):
            if not math.isnan(loss):
                self.log(epoch, loss)

    def log(self, epoch: int, loss: float) -> None:
        self.live.step = epoch
        self.live.log_metric("loss", loss)
        self.live.next_step()

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {})["loss"])
        self.history["loss"] = [*self.history["loss"][:epoch], loss]
        self.history["seconds"] = self.before + time.perf_counter() - self.start
        with path_for(self.path) as tmp:
            tmp.write_text(json.dumps({"loss": self.history["loss"], "seconds": self.history["seconds"]}))
        self.log(epoch, loss)
        log.info("pretrain epoch %d/%d: loss %.4f", epoch + 1, self.params["epochs"], loss)


def start(p: PretrainParams, train: TrainParams, seed: int, paths: Sequence[str]) -> tuple[Path, dict]:
    """(the run's backup folder, the history of the epochs an interrupted run with the same key finished)."""
    if not paths:
        raise UserError("pretrain: no image to pretrain on (the training split and pretrain.extra_images are empty).")
    log.info(
        "pretrain: %d images at %s, cut %s, %d%% of the %d px patches hidden, %d epochs of %d steps",
        len(paths),
        list(train.image_size),
        train.backbone_layer,
        round(100 * p.mask_ratio),
        p.patch_size,
        p.epochs,
        math.ceil(len(paths) / p.batch_size),
    )
    backup = backup_folder(run_key(p, train, seed, paths))
    history = read_history(backup)
    if history["done"]:
        log.info(
            "pretrain: continuing after epoch %d of %d (a run was interrupted; backup in %s)",
            history["done"],
            p.epochs,
            backup,
        )
    return backup, history


def pretrain(
    p: PretrainParams,
    train: TrainParams,
    seed: int,
    paths: Sequence[str],
    weights_out: Path,
    live_dir: Path,
    callbacks: list | None = None,
) -> dict:
    """Pretrain the backbone (train.backbone_layer, at train.image_size) on the images `paths` by masked-patch
    reconstruction for p.epochs epochs; write the whole ResNet50's weights to `weights_out` (atomically) and the
    loss per epoch and the metrics to dvclive in `live_dir`. `callbacks` are added after the run's own (a test
    interrupts a run with one). Returns the metrics: pretrain_seconds, images, final_loss, epochs."""
    backup, history = start(p, train, seed, paths)
    first = history["done"]
    set_seed(seed)
    resnet, model = build_pretrain_model(train)
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss=hidden_mse)
    # every epoch done: Keras restores the weights and runs none; the dataset still needs a batch to build with
    batches = masked_batches(paths, train.image_size, p, seed, min(first, p.epochs - 1))
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
        own = [
            keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True, delete_checkpoint=False),
            EpochLog(live, history, backup / HISTORY),
        ]
        model.fit(
            batches,
            epochs=p.epochs,
            initial_epoch=first,
            steps_per_epoch=math.ceil(len(paths) / p.batch_size),
            shuffle=False,  # the batches shuffle themselves (masked_batches)
            callbacks=own + (callbacks or []),
            verbose=2,
        )
        metrics = {
            "pretrain_seconds": round(history["seconds"], 1),
            "images": len(paths),
            "final_loss": history["loss"][-1],
            "epochs": p.epochs,
        }
        for name, value in metrics.items():
            live.log_metric(name, value, plot=False)
    with path_for(weights_out) as tmp:
        resnet.save_weights(tmp)
    shutil.rmtree(backup, ignore_errors=True)
    log.info("pretraining done in %.0f s, final loss %.4f", metrics["pretrain_seconds"], metrics["final_loss"])
    return metrics
