"""The one input pipeline (tf.data) shared by training, prediction and the inference command."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def decode_and_preprocess(data: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """Encoded image bytes -> float32 (h, w, 3) ready for ResNet50: decode (grey or RGB), bilinear resize
    with antialiasing, then `resnet50.preprocess_input` (caffe style: BGR, ImageNet mean removed)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return keras.applications.resnet50.preprocess_input(image)


def image_dataset(
    paths: Sequence[str],
    image_size: Sequence[int],
    batch_size: int,
    labels: Sequence[int] | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images (and labels when given), in order unless `shuffle_seed` is set.
    The last partial batch is kept."""
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    if labels is not None:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(tf.constant(list(labels), tf.float32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(path, *label):
        return (decode_and_preprocess(tf.io.read_file(path), image_size), *label)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
