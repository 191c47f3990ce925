"""The input pipeline (tf.data) of training, validation and export, on the preprocessing of steeldefect/preprocess.py
(which the inference side shares)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from steeldefect.data.masks import image_mask, type_masks
from steeldefect.data.types import GIVEN_DEFECT, multi_hot
from steeldefect.preprocess import decode_resize


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random flips (and quarter turns of a square image), small brightness / contrast changes of a 0..255
    image, from a stateless seed pair."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    if image.shape[0] == image.shape[1]:  # a quarter turn keeps a square's shape (flips give the half turns)
        turn = tf.random.experimental.stateless_fold_in(seed, 4)
        image = tf.image.rot90(image, tf.random.stateless_uniform([], turn, 0, 2, tf.int32))
    image = tf.image.stateless_random_brightness(image, 0.1 * 255, seeds[2])
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[3])
    return tf.clip_by_value(image, 0, 255)


def image_dataset(
    paths: Sequence[str],
    image_size: Sequence[int],
    batch_size: int,
    labels: Sequence[int] | dict[str, np.ndarray] | None = None,
    weights: dict[str, np.ndarray] | None = None,
    cache: str | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images in order (and labels, or a dict of label arrays, when given; and with
    `weights`, the per-output sample weights, a dict of arrays of one weight per image): validation, prediction.
    The last partial batch is kept. Training batches: `training_batches`.

    With `cache` (a file prefix whose folder exists) the decoded, resized images are kept there by tf.data:
    the first full pass writes `<cache>.index` + `<cache>.data-*`, later passes (epochs, runs) read them and
    never decode a JPEG. The cache holds `paths` in the given order, so the caller must key the prefix by the
    image list and size."""
    # labels: one per image, or a dict of arrays (a dict-output model's targets, e.g. defect types)
    as_tensor = lambda v: tf.constant(np.asarray(v), tf.float32)  # noqa: E731
    targets = {} if labels is None else {"label": tf.nest.map_structure(as_tensor, labels)}
    if weights is not None:
        targets["weight"] = tf.nest.map_structure(as_tensor, weights)
    if cache is None:
        ds = tf.data.Dataset.from_tensor_slices({"path": list(paths), **targets})
    else:  # the cache holds the images only: the same cache serves with or without labels
        images = (
            tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string, shape=[len(paths)]))
            .map(lambda path: decode_resize(tf.io.read_file(path), image_size), num_parallel_calls=tf.data.AUTOTUNE)
            .cache(str(cache))
        )
        ds = tf.data.Dataset.zip(
            {"image": images, **{k: tf.data.Dataset.from_tensor_slices(v) for k, v in targets.items()}}
        )

    def load(row):
        image = row["image"] if "image" in row else decode_resize(tf.io.read_file(row["path"]), image_size)
        image = keras.applications.resnet50.preprocess_input(image)
        if "weight" in row:
            return image, row["label"], row["weight"]
        return (image, row["label"]) if "label" in row else image

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_order(n: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The order (a permutation of 0..n-1, int64) of epoch `epoch`'s examples: from (seed, epoch) only."""
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), epoch_seed(seed, epoch))


def epoch_seed(seed: int, epoch: tf.Tensor, stream: int = 0) -> tf.Tensor:
    """A stateless seed pair from (seed, epoch, stream) only."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64) * 64 + stream])


def example_seeds(seed: int, epoch: tf.Tensor, count: int, stream: int = 0) -> tf.data.Dataset:
    """`count` stateless seed pairs for epoch `epoch`'s examples: from (seed, epoch, stream, position) only."""
    base = tf.stack([tf.constant(seed + 1, tf.int64), (tf.cast(epoch, tf.int64) * 64 + stream) * 2**24])
    return tf.data.Dataset.range(count).map(lambda j: base + tf.stack([tf.constant(0, tf.int64), j]))


def training_batches(
    paths: Sequence[str],
    image_size: Sequence[int],
    batch_size: int,
    labels,
    weights: dict[str, np.ndarray] | None,
    seed: int,
    epochs: tuple[int, int],
    augment_images: bool = False,
    cache: str | None = None,
) -> tf.data.Dataset:
    """The training batches of epochs epochs[0] .. epochs[1] - 1 (fit them with steps_per_epoch =
    ceil(n / batch_size)): every image once per epoch, in an order (and, with `augment_images`, flips and colour
    changes) that derives from (seed, epoch) only. So a run resumed at epoch k (steeldefect.train.phases) gets the
    batches an uninterrupted run gets from epoch k on. The last batch of an epoch may be partial. `labels`,
    `weights` and `cache` as in `image_dataset`; with the cache, the batches equal the uncached ones, and an
    epoch's decoded images are gathered into its order in memory (all of `paths`, as a shuffle buffer would)."""
    n = len(paths)
    as_tensor = lambda v: tf.constant(np.asarray(v), tf.float32)  # noqa: E731
    table = {"label": tf.nest.map_structure(as_tensor, labels if isinstance(labels, dict) else np.asarray(labels))}
    if weights is not None:
        table["weight"] = tf.nest.map_structure(as_tensor, weights)
    if cache is None:
        table["path"] = tf.constant(list(paths), tf.string, shape=[n])
    else:
        decoded = (
            tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string, shape=[n]))
            .map(lambda path: decode_resize(tf.io.read_file(path), image_size), num_parallel_calls=tf.data.AUTOTUNE)
            .cache(str(cache))
        )

    def one_epoch(epoch):
        order = epoch_order(n, seed, epoch)
        rows = tf.data.Dataset.from_tensor_slices(order).map(
            lambda i: tf.nest.map_structure(lambda column: tf.gather(column, i), table)
        )
        if cache is not None:
            images = decoded.batch(n).map(lambda batch: tf.gather(batch, order)).unbatch()
            rows = tf.data.Dataset.zip(rows, images).map(lambda row, image: {**row, "image": image})
        rows = tf.data.Dataset.zip(rows, example_seeds(seed, epoch, n)).map(lambda row, s: {**row, "seed": s})

        def load(row):
            image = row["image"] if "image" in row else decode_resize(tf.io.read_file(row["path"]), image_size)
            if augment_images:
                image = augment(image, row["seed"])
            image = keras.applications.resnet50.preprocess_input(image)
            return (image, row["label"], row["weight"]) if "weight" in row else (image, row["label"])

        return rows.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    return tf.data.Dataset.range(*epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def feature_batches(features: np.ndarray, labels, weights, batch_size: int, seed: int, epochs: tuple[int, int]):
    """`training_batches` of cached features (n, d) instead of images."""
    table = (features, labels) if weights is None else (features, labels, weights)
    table = tf.nest.map_structure(lambda v: tf.constant(np.asarray(v)), table)

    def one_epoch(epoch):
        order = epoch_order(len(features), seed, epoch)
        rows = tf.data.Dataset.from_tensor_slices(order)
        return rows.map(lambda i: tf.nest.map_structure(lambda column: tf.gather(column, i), table)).batch(batch_size)

    return tf.data.Dataset.range(*epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


# --- mask supervision: image + mask, the same flips and crops, the map target ------------------------------


def defect_target(mask: tf.Tensor, stride: int) -> tf.Tensor:
    """float32 (h/stride, w/stride, 1) from a (h, w, 1) 0/1 mask: a cell is 1 when any of its pixels is
    (max-pool), the TensorFlow twin of `masks.target_map`."""
    return tf.nn.max_pool2d(tf.cast(mask, tf.float32)[None], stride, stride, "VALID")[0]


def _mask_reader(masks: pd.DataFrame, image_size: Sequence[int], class_ids: Sequence[str] = ()):
    """A tf function (image id, height, width) -> uint8 (h, w, 1) mask at image_size, decoded on demand from
    the prepared RLE rows by `masks.image_mask` (no mask is kept in memory). With `class_ids` (train.target
    classes): (h, w, 1 + K), the any-defect mask then one channel per type (`masks.type_masks`)."""
    size = tuple(int(s) for s in image_size)

    def read(image_id, height, width):
        if class_ids:
            return type_masks(masks, image_id.decode(), int(height), int(width), size, class_ids)
        return image_mask(masks, image_id.decode(), int(height), int(width), size)

    def tf_read(image_id, height, width):
        mask = tf.numpy_function(read, [image_id, height, width], tf.uint8, stateful=False)
        return tf.reshape(mask, (*size, 1 + len(class_ids)))

    return tf_read


def _mask_rows(df: pd.DataFrame, masks: pd.DataFrame, class_ids: Sequence[str] = ()) -> tf.data.Dataset:
    """One dict per row of df: what loading its image and mask needs, its label, whether it has a mask, and its
    defect types (K 0/1 values; K = 0 without `class_ids`)."""
    return tf.data.Dataset.from_tensor_slices(_mask_columns(df, masks, class_ids))


def _mask_columns(df: pd.DataFrame, masks: pd.DataFrame, class_ids: Sequence[str] = ()) -> dict:
    """The columns of `_mask_rows`."""
    return {
        "path": np.array(list(df.path), dtype=object).astype(str),
        "id": np.array(list(df.ImageId), dtype=object).astype(str),
        "height": df.height.to_numpy("int64"),
        "width": df.width.to_numpy("int64"),
        "label": df.label.to_numpy("float32"),
        "has_mask": df.ImageId.isin(set(masks.ImageId)).to_numpy(),
        "types": multi_hot(df.classes, list(class_ids)) if class_ids else np.zeros((len(df), 0), np.float32),
    }


def _loader(masks: pd.DataFrame, image_size: Sequence[int], class_ids: Sequence[str] = ()):
    """row -> (image 0..255 float32 (h, w, 3), mask uint8 (h, w, 1 + K)) at image_size."""
    read_mask = _mask_reader(masks, image_size, class_ids)

    def load(row):
        image = decode_resize(tf.io.read_file(row["path"]), image_size)
        return image, read_mask(row["id"], row["height"], row["width"])

    return load


def crop_on_defect(image: tf.Tensor, mask: tf.Tensor, crop: Sequence[int], seed: tf.Tensor) -> tuple:
    """A crop (crop[0] x crop[1]) of image and mask holding a defect pixel chosen at random (uniformly among the
    mask's pixels), placed at a random position that keeps that pixel inside."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    pixels = tf.where(mask[..., 0] > 0)  # channel 0: any defect
    k = tf.random.stateless_uniform([], seeds[0], 0, tf.shape(pixels, tf.int64)[0], tf.int64)
    corner = []
    for axis in (0, 1):
        at, size, length = pixels[k, axis], tf.shape(mask, tf.int64)[axis], crop[axis]
        low, high = tf.maximum(at - length + 1, 0), tf.minimum(at, size - length)
        corner.append(tf.random.stateless_uniform([], seeds[1 + axis], low, high + 1, tf.int64))
    return tuple(x[corner[0] : corner[0] + crop[0], corner[1] : corner[1] + crop[1]] for x in (image, mask))


def random_crop(image: tf.Tensor, mask: tf.Tensor, crop: Sequence[int], seed: tf.Tensor) -> tuple:
    """The same random crop (anywhere) of image and mask."""
    both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.stateless_random_crop(both, (*crop, 3 + mask.shape[-1]), seed)
    return both[..., :3], tf.cast(both[..., 3:], tf.uint8)


def flip_both(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple:
    """The same random left-right and up-down flips of image and mask."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.stateless_random_flip_left_right(both, seeds[0])
    both = tf.image.stateless_random_flip_up_down(both, seeds[1])
    return both[..., :3], tf.cast(both[..., 3:], tf.uint8)


def _adjust_colour(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = tf.image.stateless_random_brightness(image, 0.1 * 255, seeds[0])
    return tf.clip_by_value(tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[1]), 0, 255)


def _example(image, mask, label, seg_weight, stride: int, m, types=None, defect: bool = True) -> tuple:
    """(preprocessed image, targets, sample weights) of one image or crop. The map's pixel loss weighs
    m.seg_loss_weight (times m.seg_positive_weight on defective cells), or 0 when the mask is unknown. With
    `types` (train.target classes: the K 0/1 types of the image or crop) also the types' targets (`classes` and,
    with `defect`, GIVEN_DEFECT: see model.type_outputs), weighted as the image loss, the trained one (GIVEN_DEFECT,
    or `classes` without `defect`) only where the crop shows a type; without `defect` (a set with no clean
    images) no `probability` target. With `types` the mask has 1 + K channels and the `type_maps` target is its
    type channels, weighted as the map's pixels, or 0 where a defect's type is unknown (its mask has no type)."""
    target = defect_target(mask[..., :1], stride)
    pixel_weight = seg_weight * m.seg_loss_weight * (1 + (m.seg_positive_weight - 1) * target[..., 0])
    y, w = {"defect_map": target}, {"defect_map": pixel_weight}
    if types is not None:
        y["type_maps"] = defect_target(mask[..., 1:], stride)
        typed = tf.logical_or(tf.reduce_max(target) == 0, tf.reduce_any(mask[..., 1:] > 0))
        w["type_maps"] = pixel_weight * tf.cast(typed, tf.float32)
    image_weight = tf.constant(m.cls_loss_weight, tf.float32)
    if defect:
        y["probability"], w["probability"] = tf.reshape(label, [1]), image_weight
    if types is not None:
        type_weight = image_weight * tf.reduce_max(types)
        y["classes"], w["classes"] = types, image_weight if defect else type_weight
        if defect:
            y[GIVEN_DEFECT], w[GIVEN_DEFECT] = types, type_weight
    return keras.applications.resnet50.preprocess_input(image), y, w


def _crop_types(mask: tf.Tensor) -> tf.Tensor:
    """The K 0/1 types a crop shows: the type channels (1..K) of its mask with a pixel in it."""
    return tf.cast(tf.reduce_any(mask[..., 1:] > 0, axis=(0, 1)), tf.float32)


def _seg_weight(mask: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    """1 when the map target is known: a clean image, or a defect visible in the mask at this size."""
    return tf.cast(tf.logical_or(label == 0, tf.reduce_any(mask > 0)), tf.float32)


def mask_eval_dataset(
    df: pd.DataFrame,
    masks: pd.DataFrame,
    image_size: Sequence[int],
    stride: int,
    batch_size: int,
    m,
    class_ids: Sequence[str] = (),
    defect: bool = True,
) -> tf.data.Dataset:
    """Whole images at image_size, in order: (image, {probability, defect_map}, sample weights) batches (with
    `class_ids`, also the image's types as `classes` and their maps as `type_maps`; without `defect`, no
    `probability`)."""
    load = _loader(masks, image_size, class_ids)

    def example(row):
        image, mask = load(row)
        types = row["types"] if class_ids else None
        return _example(image, mask, row["label"], _seg_weight(mask, row["label"]), stride, m, types, defect)

    ds = _mask_rows(df, masks, class_ids).map(example, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _crops(
    df: pd.DataFrame, masks: pd.DataFrame, p, seed: int, class_ids: Sequence[str], epoch: tf.Tensor, count: int
) -> tf.data.Dataset:
    """Epoch `epoch`'s `count` (image, mask, label, pixel-loss weight, types) examples before augmentation, from
    (seed, epoch) only: see mask_training_dataset."""
    m, crop = p.mask, p.mask.crop_size
    load = _loader(masks, p.image_size, class_ids)

    def stream(rows: pd.DataFrame, k: int, cut) -> tf.data.Dataset:
        """Stream k: `rows` over and over, each pass in its own order, each example with its own seed."""
        table = tf.nest.map_structure(tf.constant, _mask_columns(rows, masks, class_ids))

        def one_pass(r):
            order = epoch_order(len(rows), seed, tf.cast(epoch, tf.int64) * 4096 + k * 512 + r)
            return tf.data.Dataset.from_tensor_slices(order).map(
                lambda i: tf.nest.map_structure(lambda column: tf.gather(column, i), table)
            )

        shuffled = tf.data.Dataset.counter().flat_map(one_pass)
        seeds = example_seeds(seed, epoch, count, stream=k)
        return tf.data.Dataset.zip(shuffled, seeds).map(cut, num_parallel_calls=tf.data.AUTOTUNE)

    def positive(row, seed):
        image, mask = load(row)
        visible = tf.reduce_any(mask > 0)
        image, mask = tf.cond(
            visible,
            lambda: crop_on_defect(image, mask, crop, seed),
            lambda: (tf.image.resize(image, crop), tf.zeros((*crop, 1 + len(class_ids)), tf.uint8)),
        )
        # the types the crop shows; the whole image (mask unknown or vanished) shows the image's types
        types = tf.cond(visible, lambda: _crop_types(mask), lambda: row["types"])
        return image, mask, row["label"], tf.cast(visible, tf.float32), types

    def anywhere(row, seed):  # crops of clean images, or whole images (crop null): the image's types
        image, mask = load(row)
        if crop is not None:
            image, mask = random_crop(image, mask, crop, seed)
        return image, mask, row["label"], _seg_weight(mask, row["label"]), row["types"]

    defective, clean = df[df.label == 1], df[df.label == 0]
    if crop is None:
        return stream(df, 0, anywhere).take(count)
    if len(clean) == 0 or m.crop_defect_share == 1:
        return stream(defective, 1, positive).take(count)
    if len(defective) == 0 or m.crop_defect_share == 0:
        return stream(clean, 2, anywhere).take(count)
    # each example a clean crop with probability 1 - crop_defect_share, drawn from its own seed
    choice = example_seeds(seed, epoch, count, stream=4).map(
        lambda s: tf.cast(tf.random.stateless_uniform([], s) >= m.crop_defect_share, tf.int64)
    )
    return tf.data.Dataset.choose_from_datasets([stream(defective, 1, positive), stream(clean, 2, anywhere)], choice)


def mask_training_dataset(
    df: pd.DataFrame,
    masks: pd.DataFrame,
    p,
    stride: int,
    seed: int,
    steps_per_epoch: int,
    class_ids: Sequence[str] = (),
    defect: bool = True,
    epochs: tuple[int, int] = (0, 1),
) -> tf.data.Dataset:
    """The training batches of epochs epochs[0] .. epochs[1] - 1 for train.supervision mask (p: TrainParams),
    steps_per_epoch full batches each, from (seed, epoch) only (so a resumed run gets the same batches).

    Crops (p.mask.crop_size): a share p.mask.crop_defect_share of them holds a pixel of a defective image's
    mask (label 1); the rest are cut anywhere from clean images (label 0). A defective image whose mask is
    unknown (or vanishes at image_size) cannot be cropped safely (the crop might miss the defect), so its
    "crop" is the whole image resized to the crop size, with label 1 and pixel-loss weight 0. Without crops
    (null: the squash), every training image in turn, reshuffled per pass. With p.augment the image and its
    mask get the same random flips (and the image small brightness / contrast changes). The classification
    weight ramps from 0 to p.mask.cls_loss_weight over p.mask.cls_ramp_epochs epochs.

    With `class_ids` (train.target classes) each example also has the `classes` target: the types whose mask
    shows in the crop (or the image's types, for a whole image), weighted and ramped as the image loss; without
    `defect` (no clean images) there is no `probability` target."""
    m = p.mask

    def finish(example, seed):
        image, mask, label, seg_weight, types = example
        if p.augment:
            seeds = tf.random.experimental.stateless_split(seed, 2)
            image, mask = flip_both(image, mask, seeds[0])
            image = _adjust_colour(image, seeds[1])
        return _example(image, mask, label, seg_weight, stride, m, types if class_ids else None, defect)

    count = steps_per_epoch * p.batch_size

    def one_epoch(epoch):
        examples = tf.data.Dataset.zip(
            _crops(df, masks, p, seed, class_ids, epoch, count), example_seeds(seed, epoch, count, stream=3)
        )
        return examples.map(finish, num_parallel_calls=tf.data.AUTOTUNE).batch(p.batch_size)

    ds = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
    ramp = max(m.cls_ramp_epochs * steps_per_epoch, 1)

    def ramp_up(step, batch):
        x, y, w = batch
        share = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / ramp) if m.cls_ramp_epochs else 1.0
        return x, y, {k: v if k == "defect_map" else v * share for k, v in w.items()}

    return ds.enumerate(start=epochs[0] * steps_per_epoch).map(ramp_up).prefetch(tf.data.AUTOTUNE)
