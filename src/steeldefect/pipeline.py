"""The one input pipeline (tf.data) shared by training, prediction and the inference command."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def decode_and_preprocess(data: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """Encoded image bytes -> float32 (h, w, 3) ready for ResNet50: decode (grey or RGB), bilinear resize
    with antialiasing, then `resnet50.preprocess_input` (caffe style: BGR, ImageNet mean removed)."""
    return keras.applications.resnet50.preprocess_input(_decode_resize(data, image_size))


def _decode_resize(data: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.image.resize(image, image_size, method="bilinear", antialias=True)


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random flips and small brightness / contrast changes of a 0..255 image, from a stateless seed pair."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    image = tf.image.stateless_random_brightness(image, 0.1 * 255, seeds[2])
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[3])
    return tf.clip_by_value(image, 0, 255)


def image_dataset(
    paths: Sequence[str],
    image_size: Sequence[int],
    batch_size: int,
    labels: Sequence[int] | None = None,
    shuffle_seed: int | None = None,
    augment_seed: int | None = None,
    cache: str | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images (and labels when given), in order unless `shuffle_seed` is set, and
    augmented (differently every epoch, reproducibly) when `augment_seed` is set. The last partial batch is
    kept.

    With `cache` (a file prefix whose folder exists) the decoded, resized images are kept there by tf.data:
    the first full pass writes `<cache>.index` + `<cache>.data-*`, later passes (epochs, runs) read them and
    never decode a JPEG. The cache holds `paths` in the given order, so the caller must key the prefix by the
    image list and size. Shuffling, augmentation and preprocessing come after the cache, so they still change
    every epoch, and the batches equal the uncached ones (the same shuffle order: it depends only on the seed
    and the number of images); but the shuffle buffer then holds decoded images (all of `paths`) in memory."""
    label = tf.constant(list(labels), tf.float32) if labels is not None else None
    if cache is None:
        columns = {"path": list(paths)} if label is None else {"path": list(paths), "label": label}
        ds = tf.data.Dataset.from_tensor_slices(columns)
    else:  # the cache holds the images only: the same cache serves with or without labels
        images = (
            tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string, shape=[len(paths)]))
            .map(lambda path: _decode_resize(tf.io.read_file(path), image_size), num_parallel_calls=tf.data.AUTOTUNE)
            .cache(str(cache))
        )
        columns = (
            {"image": images}
            if label is None
            else {"image": images, "label": tf.data.Dataset.from_tensor_slices(label)}
        )
        ds = tf.data.Dataset.zip(columns)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    if augment_seed is not None:
        seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(lambda row, seed: {**row, "seed": seed})

    def load(row):
        image = row["image"] if "image" in row else _decode_resize(tf.io.read_file(row["path"]), image_size)
        if "seed" in row:
            image = augment(image, row["seed"])
        image = keras.applications.resnet50.preprocess_input(image)
        return (image, row["label"]) if "label" in row else image

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
