"""One seed drives Python, NumPy and TensorFlow (its own module so that the pretrain stage, which needs only this,
does not depend on the training code)."""

import keras
import tensorflow as tf


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow; make ops deterministic. Neither call starts TensorFlow's runtime, so this
    may run before or after `make_strategy` (MultiWorkerMirroredStrategy only needs to come before the first
    TensorFlow op)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
