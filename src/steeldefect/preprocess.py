"""The preprocessing shared by training (train/pipeline.py) and inference (serve/): encoded image -> network input."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def decode_and_preprocess(data: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """Encoded image bytes -> float32 (h, w, 3) ready for ResNet50: decode (grey or RGB), bilinear resize
    with antialiasing, then `resnet50.preprocess_input` (caffe style: BGR, ImageNet mean removed)."""
    return keras.applications.resnet50.preprocess_input(decode_resize(data, image_size))


def decode_resize(data: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """Encoded image bytes -> float32 (h, w, 3) on 0..255: decoded as RGB, bilinear resize with antialiasing."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.image.resize(image, image_size, method="bilinear", antialias=True)
