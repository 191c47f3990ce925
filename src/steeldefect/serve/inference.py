"""Predicting with an exported model: one code path for the predict stage and the `steeldefect predict` command.

Images are streamed through the training preprocessing (`pipeline.decode_and_preprocess`) by tf.data. An image
that cannot be read or decoded (missing, corrupt, not an image) is dropped from the stream by `ignore_errors`
instead of stopping it: every element carries its index, so the images that never come out are known, and only
those are read again to say why. Good images are therefore read and decoded once, and batched exactly as if
the bad ones had not been given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from steeldefect.errors import UserError
from steeldefect.train.pipeline import decode_and_preprocess


@dataclass(frozen=True)
class Predictions:
    """One entry per input path, in order: the defect probability (NaN when the image could not be read) and
    the error text ("" when it could); for a model with a defect map also the map (h, w), None when unreadable."""

    paths: list[str]
    probability: np.ndarray  # float32
    errors: list[str]
    maps: list[np.ndarray | None] | None = None  # None: the model has no defect map

    @property
    def failed(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e]


def model_image_size(model: keras.Model) -> tuple[int, int]:
    size = tuple(model.input_shape[1:3])
    if None in size:  # a fully convolutional (mask) model: the size it was trained at is in model_meta.json
        raise UserError("this model takes images of any size: give the image size (model_meta.json's image_size)")
    return size


def indexed_dataset(paths: Sequence[str], image_size: Sequence[int], batch_size: int) -> tf.data.Dataset:
    """Batches of (indices into `paths`, preprocessed images), in order; images that cannot be read or decoded
    are skipped (their index never appears) and the others are batched as if those were absent."""
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), dtype=tf.string, shape=[len(paths)]))
    )

    def load(index, path):
        return index, decode_and_preprocess(tf.io.read_file(path), image_size)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split_outputs(outputs) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities (n,), defect maps (n, h, w) or None) from a model's batch output: an array of
    probabilities, or a dict of `probability` and (a mask model's) `defect_map`."""
    if not isinstance(outputs, dict):
        return np.asarray(outputs).reshape(-1), None
    maps = outputs.get("defect_map")
    return np.asarray(outputs["probability"]).reshape(-1), None if maps is None else np.asarray(maps)[..., 0]


def iter_predictions(
    model: keras.Model, paths: Sequence[str], batch_size: int, image_size: Sequence[int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(indices into `paths`, defect probabilities, defect maps or None) batch by batch; unreadable images are
    skipped. Each batch goes through `model.predict_on_batch`: for Keras the same compiled function
    `model.predict` uses; an `openvino_engine.OpenVINOEngine` returns a dict of named outputs, as a mask model does."""
    if not len(paths):
        return
    size = tuple(image_size) if image_size is not None else model_image_size(model)
    for indices, images in indexed_dataset(paths, size, batch_size):
        yield indices.numpy(), *split_outputs(model.predict_on_batch(images))


def why_unreadable(path: str, image_size: Sequence[int]) -> str:
    """The reason `path` cannot go through the preprocessing, as one line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"
    try:
        decode_and_preprocess(tf.constant(data), image_size)
    except tf.errors.OpError as e:
        message = re.sub(r"\{\{function_node [^}]*\}\}", "", e.message).split(" [Op:")[0].strip()
        return f"not a readable image ({message})" if message else "not a readable image"
    return "could not be read or decoded while streaming (it decodes when retried alone)"


def predict_files(
    model: keras.Model,
    paths: Sequence[str],
    batch_size: int,
    image_size: Sequence[int] | None = None,
    progress: Callable[[int], object] | None = None,
) -> Predictions:
    """Defect probability for every image in `paths` that can be read; the others get an error text instead.
    `progress(n)` is called with the number of paths handled since the last call."""
    paths = [str(p) for p in paths]
    size = tuple(image_size) if image_size is not None else model_image_size(model)
    probability = np.full(len(paths), np.nan, dtype=np.float32)
    seen = np.zeros(len(paths), dtype=bool)
    maps = [None] * len(paths) if has_defect_map(model) else None
    done = 0
    for indices, prob, batch_maps in iter_predictions(model, paths, batch_size, size):
        if len(prob) != len(indices):
            raise RuntimeError(f"predicted {len(prob)} probabilities for a batch of {len(indices)} images")
        probability[indices] = prob
        seen[indices] = True
        if maps is not None:
            keep_maps(maps, indices, batch_maps)
        if progress is not None:
            progress(int(indices[-1]) + 1 - done)
        done = int(indices[-1]) + 1
    if progress is not None and done < len(paths):
        progress(len(paths) - done)
    errors = ["" if ok else why_unreadable(path, size) for path, ok in zip(paths, seen)]
    return Predictions(paths, probability, errors, maps)


def has_defect_map(model) -> bool:
    """Whether the model (Keras, or an OpenVINOEngine) also outputs a defect map (a mask-supervised model)."""
    return "defect_map" in model.output_names


def keep_maps(maps: list, indices: np.ndarray, batch_maps: np.ndarray | None) -> None:
    if batch_maps is None or len(batch_maps) != len(indices):
        raise RuntimeError(f"the model gave no defect map for each of the {len(indices)} images of a batch")
    for i, m in zip(indices, batch_maps):
        maps[i] = m


def predict_all(
    model: keras.Model, paths: Sequence[str], batch_size: int, image_size: Sequence[int] | None = None
) -> Predictions:
    """Predictions for every image in `paths` (the last partial batch included), in order. Every image must be
    readable: otherwise a UserError names the ones that are not."""
    result = predict_files(model, paths, batch_size, image_size)
    if result.failed:
        listed = "; ".join(f"{result.paths[i]}: {result.errors[i]}" for i in result.failed[:5])
        more = f" (and {len(result.failed) - 5} more)" if len(result.failed) > 5 else ""
        raise UserError(f"{len(result.failed)} of {len(result.paths)} images cannot be predicted: {listed}{more}.")
    return result


def predict_paths(
    model: keras.Model, paths: Sequence[str], batch_size: int, image_size: Sequence[int] | None = None
) -> np.ndarray:
    """Defect probability for every image in `paths`, in order (see `predict_all`)."""
    return predict_all(model, paths, batch_size, image_size).probability
