"""Predicting with an exported model."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from steeldefect.pipeline import image_dataset


def predict_paths(model: keras.Model, paths: Sequence[str], batch_size: int) -> np.ndarray:
    """Defect probability for every image in `paths` (the last partial batch included), in order."""
    image_size = tuple(model.input_shape[1:3])
    prob = model.predict(image_dataset(paths, image_size, batch_size), verbose=0).reshape(-1)
    if len(prob) != len(paths):
        raise RuntimeError(f"predicted {len(prob)} probabilities for {len(paths)} images")
    return prob
