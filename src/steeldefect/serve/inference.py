"""Predicting with an exported model: one code path for the predict stage and the `steeldefect predict` command.

Images are streamed through the training preprocessing (`preprocess.decode_and_preprocess`) by tf.data. An image
that cannot be read or decoded (missing, corrupt, not an image) is dropped from the stream by `ignore_errors`
instead of stopping it: every element carries its index, so the images that never come out are known, and only
those are read again to say why. Good images are therefore read and decoded once, and batched exactly as if
the bad ones had not been given.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from steeldefect.data import types
from steeldefect.errors import UserError
from steeldefect.preprocess import decode_and_preprocess


@dataclass(frozen=True)
class Predictions:
    """One entry per input path, in order: the error text ("" when the image could be read) and each output the
    model has (None for one it has not): the defect probability (n,) and the per-type probabilities `classes`
    (n, K), NaN for an unreadable image; the defect maps, one (h, w) array per image, and the per-type maps, one
    (h, w, K) array per image, None when unreadable."""

    paths: list[str | bytes]  # as given: file paths, or encoded images (bytes)
    probability: np.ndarray | None  # float32; None: the model has no defect probability (a set with no clean images)
    errors: list[str]
    maps: list[np.ndarray | None] | None = None  # None: the model has no defect map
    classes: np.ndarray | None = None  # float32 (n, K), in the order of model_meta.json's classes; None: no types
    type_maps: list[np.ndarray | None] | None = None  # None: the model has no per-type maps

    @property
    def failed(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e]

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """The outputs the model has, by name, the maps stacked (so every image must have been read)."""
        stack = lambda maps: None if maps is None else np.stack(maps)  # noqa: E731
        named = {
            "probability": self.probability,
            "classes": self.classes,
            "defect_map": stack(self.maps),
            "type_maps": stack(self.type_maps),
        }
        return {name: value for name, value in named.items() if value is not None}


def model_image_size(model: keras.Model) -> tuple[int, int]:
    size = tuple(model.input_shape[1:3])
    if None in size:  # a fully convolutional (mask) model: the size it was trained at is in model_meta.json
        raise UserError("this model takes images of any size: give the image size (model_meta.json's image_size)")
    return size


def indexed_dataset(paths: Sequence[str | bytes], image_size: Sequence[int], batch_size: int) -> tf.data.Dataset:
    """Batches of (indices into `paths`, preprocessed images), in order; images that cannot be read or decoded
    are skipped (their index never appears) and the others are batched as if those were absent. An item of
    `paths` that is a bytes object is the encoded image itself (read from memory, not from a file)."""
    given = [isinstance(p, bytes) for p in paths]
    sources = [p if isinstance(p, bytes) else str(p).encode() for p in paths]
    ds = tf.data.Dataset.from_tensor_slices(
        (
            tf.range(len(paths), dtype=tf.int64),
            tf.constant(sources, dtype=tf.string, shape=[len(paths)]),
            tf.constant(given, dtype=tf.bool, shape=[len(paths)]),
        )
    )

    def load(index, source, is_data):
        data = tf.cond(is_data, lambda: source, lambda: tf.io.read_file(source))
        return index, decode_and_preprocess(data, image_size)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split_outputs(outputs) -> dict[str, np.ndarray]:
    """A model's batch output by name: `probability` (n,), `classes` (n, K), `defect_map` (n, h, w) and
    `type_maps` (n, h, w, K), those it has. `outputs` is an array (a one-output model: the defect probability)
    or a dict of named outputs."""
    outputs = outputs if isinstance(outputs, dict) else {"probability": outputs}
    named = {name: np.asarray(value) for name, value in outputs.items()}
    if "probability" in named:
        named["probability"] = named["probability"].reshape(-1)
    if "defect_map" in named:
        named["defect_map"] = named["defect_map"][..., 0]
    return named


def iter_predictions(
    model: keras.Model,
    paths: Sequence[str],
    batch_size: int,
    image_size: Sequence[int] | None = None,
    decoded: Sequence[np.ndarray | None] | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(indices into `paths`, the outputs by name, see `split_outputs`) batch by batch; unreadable images are
    skipped. Each batch goes through `model.predict_on_batch`: for Keras the same compiled function
    `model.predict` uses; an `openvino_engine.OpenVINOEngine` returns a dict of named outputs, as a dict-output
    Keras model does. `decoded`: for encoded images in memory, those already decoded (see `decoded_batches`)."""
    if not len(paths):
        return
    size = tuple(image_size) if image_size is not None else model_image_size(model)
    if all(isinstance(p, bytes) for p in paths):  # images in memory (the service): no tf.data start-up per call
        batches = decoded_batches(paths, size, batch_size, decoded)
    else:
        batches = ((indices.numpy(), images) for indices, images in indexed_dataset(paths, size, batch_size))
    for indices, images in batches:
        yield indices, split_outputs(model.predict_on_batch(images))


@functools.cache
def _decoder(image_size: tuple[int, int]):
    """`decode_and_preprocess` for one encoded image, traced once per image size."""
    signature = [tf.TensorSpec([], tf.string)]
    return tf.function(lambda data: decode_and_preprocess(data, image_size), input_signature=signature)


def decode_one(data: bytes, image_size: Sequence[int]) -> np.ndarray | None:
    """One encoded image through `decode_and_preprocess` ((h, w, 3) float32), None when it cannot be decoded."""
    try:
        return _decoder(tuple(image_size))(tf.constant(data)).numpy()
    except tf.errors.OpError:
        return None


def decoded_batches(
    images: Sequence[bytes],
    image_size: tuple[int, int],
    batch_size: int,
    decoded: Sequence[np.ndarray | None] | None = None,
):
    """As `indexed_dataset`, for encoded images in memory, decoded one by one in this thread: a call on a few
    images (the service's batch of requests) costs the decoding only, not a tf.data pipeline's start-up (~0.3 s).
    `decoded`: the images already through `decode_one`, one per image (None: decode it here)."""
    ready = []
    for i, data in enumerate(images):
        array = decoded[i] if decoded is not None and decoded[i] is not None else decode_one(data, image_size)
        if array is not None:  # unreadable: its index never appears, as with `indexed_dataset`
            ready.append((i, array))
    for start in range(0, len(ready), batch_size):
        indices, arrays = zip(*ready[start : start + batch_size])
        yield np.array(indices), np.stack(arrays)


def why_unreadable(path: str | bytes, image_size: Sequence[int]) -> str:
    """The reason `path` (a file, or the encoded image as bytes) cannot go through the preprocessing, as one line."""
    try:
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
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
    paths: Sequence[str | bytes],
    batch_size: int,
    image_size: Sequence[int] | None = None,
    progress: Callable[[int], object] | None = None,
    decoded: Sequence[np.ndarray | None] | None = None,
) -> Predictions:
    """Every output of the model for every image in `paths` (files, or encoded images as bytes) that can be read;
    the others get NaN and an error text instead. `progress(n)` is called with the number of paths handled since
    the last call. `decoded`: for encoded images, those already through `decode_one` (None: not yet)."""
    paths = [p if isinstance(p, bytes) else str(p) for p in paths]
    size = tuple(image_size) if image_size is not None else model_image_size(model)
    seen = np.zeros(len(paths), dtype=bool)
    outputs: dict[str, np.ndarray] = {}  # by name: one row per path, NaN until predicted
    done = 0
    for indices, batch in iter_predictions(model, paths, batch_size, size, decoded):
        for name, value in batch.items():
            if len(value) != len(indices):
                raise RuntimeError(f"the model gave {len(value)} {name} rows for a batch of {len(indices)} images")
            outputs.setdefault(name, np.full((len(paths), *value.shape[1:]), np.nan, np.float32))[indices] = value
        seen[indices] = True
        if progress is not None:
            progress(int(indices[-1]) + 1 - done)
        done = int(indices[-1]) + 1
    if progress is not None and done < len(paths):
        progress(len(paths) - done)
    if not outputs:  # no image could be read: which outputs the model has, from one blank image
        blank = split_outputs(model.predict_on_batch(np.zeros((1, *size, 3), np.float32)))
        outputs = {name: np.full((len(paths), *v.shape[1:]), np.nan, np.float32) for name, v in blank.items()}
    errors = ["" if ok else why_unreadable(path, size) for path, ok in zip(paths, seen)]

    def per_image(name: str) -> list | None:  # a map output as one array per image, None where unreadable
        return None if name not in outputs else [m if ok else None for m, ok in zip(outputs[name], seen)]

    probability, classes = outputs.get("probability"), outputs.get("classes")
    return Predictions(paths, probability, errors, per_image("defect_map"), classes, per_image("type_maps"))


def output_names(model) -> list[str]:
    """The names of the model's outputs (a Keras model, or an OpenVINOEngine): `probability` for a one-output
    Keras model, else those of its dict (`probability`, `classes`, `defect_map`, `type_maps`)."""
    if isinstance(model, keras.Model) and not isinstance(model.output, dict):
        return ["probability"]
    return list(model.output_names)


def has_defect_map(model) -> bool:
    """Whether the model (Keras, or an OpenVINOEngine) also outputs a defect map (a mask-supervised model)."""
    return "defect_map" in output_names(model)


def probability_columns(result: Predictions, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The CSV columns of the probabilities: `probability` (when the model has it), then `p_<name>` per defect
    type, `names` being model_meta.json's classes (the order of the model's `classes` output)."""
    columns = {} if result.probability is None else {"probability": result.probability}
    if result.classes is not None:
        if len(names) != result.classes.shape[1]:
            raise UserError(
                f"model_meta.json names {len(names)} defect types ({', '.join(names) or 'none'}) but the model "
                f"gives {result.classes.shape[1]} probabilities per image: the files do not belong together; export "
                "the model again."
            )
        columns.update(zip(types.columns(list(names)), result.classes.T))
    return columns


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
) -> np.ndarray | None:
    """Defect probability for every image in `paths`, in order (see `predict_all`); None for a model without it."""
    return predict_all(model, paths, batch_size, image_size).probability
