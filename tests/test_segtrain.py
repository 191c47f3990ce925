"""Mask supervision: the map target, crops and flips shared by image and mask, and training on tiny PNGs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from steeldefect.data.masks import target_map
from steeldefect.data.severstal import rle_encode
from steeldefect.errors import UserError
from steeldefect.params import map_stride
from steeldefect.train import pipeline, segtrain
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import crop_on_defect, defect_target, flip_both, mask_training_dataset, random_crop
from steeldefect.train.runtime import Runtime

from helpers import defaults

SIZE = (64, 96)
MASKED = defaults(
    train={
        "epochs": 2,
        "batch_size": 4,
        "image_size": SIZE,
        "backbone_layer": "conv2_block3_out",
        "augment": True,
        "patience": 5,
        "supervision": "mask",
        "mask": {"crop_size": [32, 32], "crop_defect_share": 0.5, "seg_channels": 8, "cls_ramp_epochs": 1},
    }
).train


def blob_mask(rng: np.random.Generator) -> np.ndarray:
    """A small asymmetric defect (an L shape) somewhere in a SIZE mask."""
    mask = np.zeros(SIZE, np.uint8)
    r, c = rng.integers(0, SIZE[0] - 6), rng.integers(0, SIZE[1] - 9)
    mask[r : r + 6, c : c + 2] = 1
    mask[r + 4 : r + 6, c : c + 9] = 1
    return mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, masks) tables as prepare writes them: 6 defective PNGs whose bright pixels are exactly their
    mask (so a crop or flip applied to one but not the other shows), 1 defective image without a mask, and
    6 clean ones."""
    root, rng = tmp_path_factory.mktemp("segtiny"), np.random.default_rng(0)
    rows, masks = [], []
    for i in range(13):
        mask = blob_mask(rng) if i < 7 else np.zeros(SIZE, np.uint8)
        name = f"img{i:02d}.png"
        Image.fromarray(np.repeat(mask[..., None] * 255, 3, axis=-1)).save(root / name)
        rows.append(
            {"ImageId": name, "path": str(root / name), "label": int(i < 7), "height": SIZE[0], "width": SIZE[1]}
        )
        if i < 6:  # img06 is defective without a mask
            masks.append({"ImageId": name, "ClassId": 3, "EncodedPixels": rle_encode(mask.astype(bool))})
    return pd.DataFrame(rows), pd.DataFrame(masks)


def test_tf_target_equals_masks_target_map():
    mask = (np.random.default_rng(1).random((32, 48)) > 0.97).astype(np.uint8)
    for stride in (4, 8):
        tf_target = defect_target(tf.constant(mask[..., None]), stride).numpy()[..., 0]
        np.testing.assert_array_equal(tf_target, target_map(mask, stride))


def test_every_positive_crop_holds_mask_pixels():
    rng = np.random.default_rng(2)
    for i in range(40):
        mask = np.zeros((64, 96, 1), np.uint8)
        mask[rng.integers(64), rng.integers(96)] = 1  # a single defect pixel, anywhere (corners included)
        image = tf.zeros((64, 96, 3))
        crop_image, crop_mask = crop_on_defect(image, tf.constant(mask), (16, 32), tf.constant([i, 7]))
        assert crop_image.shape == (16, 32, 3) and crop_mask.shape == (16, 32, 1)
        assert int(tf.reduce_sum(tf.cast(crop_mask, tf.int32))) == 1


def test_image_and_mask_get_the_same_crop_and_flips():
    mask = blob_mask(np.random.default_rng(3))[..., None]
    image = tf.constant(np.repeat(mask * 255.0, 3, axis=-1), tf.float32)
    for i in range(10):
        seed = tf.constant([i, 1])
        for got_image, got_mask in (
            flip_both(image, tf.constant(mask), seed),
            random_crop(image, tf.constant(mask), (32, 48), seed),
            crop_on_defect(image, tf.constant(mask), (32, 48), seed),
        ):
            np.testing.assert_array_equal(got_image.numpy()[..., 0] / 255, got_mask.numpy()[..., 0])


def test_training_batches_are_consistent_and_reproducible(tiny):
    images, masks = tiny
    p = dataclasses.replace(MASKED, mask=dataclasses.replace(MASKED.mask, crop_defect_share=1.0))
    ds = mask_training_dataset(images, masks, p, map_stride(p), seed=5, steps_per_epoch=3, epochs=(0, 2))
    seen_unmasked = False
    for x, y, w in ds.take(6):
        bright = tf.cast(x[..., 0:1] + 103.939 > 127, tf.uint8)  # undo caffe preprocessing (channel 0 is B)
        assert np.all(y["probability"].numpy() == 1)  # defect share 1: every crop is positive
        for i, weight in enumerate(w["defect_map"].numpy().reshape(len(x), -1).max(axis=1)):
            if weight == 0:  # the maskless defective image: whole image resized, no pixel loss
                seen_unmasked = True
                continue
            target = y["defect_map"].numpy()[i]
            np.testing.assert_array_equal(defect_target(bright[i], 4).numpy(), target)  # same flip / crop on both
            assert target.max() == 1  # the crop holds mask pixels
    assert seen_unmasked
    fresh = [mask_training_dataset(images, masks, p, map_stride(p), seed=5, steps_per_epoch=3) for _ in range(2)]
    (first, target, _), (second, target_again, _) = (next(iter(d)) for d in fresh)  # same seed, same batches
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_array_equal(target["defect_map"].numpy(), target_again["defect_map"].numpy())


def test_classification_weight_ramps_up(tiny):
    images, masks = tiny
    ds = mask_training_dataset(images, masks, MASKED, map_stride(MASKED), seed=0, steps_per_epoch=4, epochs=(0, 2))
    ramp = [float(w["probability"].numpy()[0]) for _, _, w in ds.take(6)]
    np.testing.assert_allclose(ramp, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    later = mask_training_dataset(images, masks, MASKED, map_stride(MASKED), seed=0, steps_per_epoch=4, epochs=(1, 2))
    (x, _, w), (x_again, _, w_again) = next(iter(ds.skip(4))), next(iter(later))  # epoch 1 alone, as a resumed run
    np.testing.assert_array_equal(x.numpy(), x_again.numpy())
    assert float(w_again["probability"].numpy()[0]) == float(w["probability"].numpy()[0]) == 1.0


@pytest.mark.slow
def test_training_with_a_maskless_defective_image(tiny, tmp_path):
    images, masks = tiny
    train, val = images.iloc[[0, 1, 2, 3, 6, 7, 8, 9, 10]], images.iloc[[4, 5, 11, 12]]
    segtrain.train(MASKED, 0, train, val, masks, tmp_path / "w.weights.h5", tmp_path / "live")
    model = build_model(MASKED, None)[0]
    model.load_weights(tmp_path / "w.weights.h5")
    out = model.predict(np.zeros((1, *SIZE, 3), np.float32), verbose=0)
    assert out["defect_map"].shape == (1, SIZE[0] // 4, SIZE[1] // 4, 1)
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["epochs_run"] == 2 and np.isfinite(summary["eval"]["loss"])
    assert "supervision: mask" in (tmp_path / "live/params.yaml").read_text()
    assert (tmp_path / "live/plots/metrics/eval/accuracy.tsv").is_file()  # the name dvc.yaml plots read


def test_mask_supervision_refuses_data_without_masks(tiny, tmp_path):
    images, masks = tiny
    with pytest.raises(UserError, match="none of the 13 training images has a mask.*train.supervision: image"):
        segtrain.train(MASKED, 0, images, images, masks.iloc[:0], tmp_path / "w.weights.h5", tmp_path / "live")
    assert not (tmp_path / "w.weights.h5").exists()


def test_dice_bce_adds_one_minus_the_dice_of_the_known_pixels():
    """2x2 maps of two images; the second's mask is unknown (weight 0): it counts in neither term."""
    target = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 1]]], np.float32)[..., None]
    pred = np.array([[[0.8, 0.3], [0.1, 0.4]], [[0.2, 0.9], [0.5, 0.5]]], np.float32)[..., None]
    weight = np.array([[[2, 1], [1, 1]], [[0, 0], [0, 0]]], np.float32)  # seg_positive_weight 2 on image 1
    got = float(segtrain.DiceBCE(1.0)(np.concatenate([target, weight[..., None]], axis=-1), pred))
    bce = float(keras.losses.BinaryCrossentropy()(target, pred, sample_weight=weight))  # the bce map loss
    dice = (2 * 0.8 + 1) / ((0.8 + 0.3 + 0.1 + 0.4) + 1 + 1)  # image 1: predicted sum, target sum, smooth 1
    assert got == pytest.approx(bce + 1 - dice, rel=1e-5) and got > bce


def test_dice_bce_of_type_maps_is_the_mean_of_each_types_dice():
    """Two types on one 1x2 map: each type's Dice over the batch, then their mean (not one Dice pooled)."""
    target = np.array([[[[1, 0], [0, 0]]]], np.float32)  # (1, 1, 2 pixels, 2 types): type 0 on pixel 0 only
    pred = np.array([[[[0.6, 0.2], [0.1, 0.3]]]], np.float32)
    weight = np.ones((1, 1, 2, 1), np.float32)
    got = float(segtrain.DiceBCE(1.0)(np.concatenate([target, weight], axis=-1), pred))
    bce = float(keras.losses.BinaryCrossentropy()(target, pred))
    dice = ((2 * 0.6 + 1) / (0.7 + 1 + 1) + 1 / (0.5 + 1)) / 2  # type 0, type 1 (nothing to find: smooth only)
    assert got == pytest.approx(bce + 1 - dice, rel=1e-5)


def test_type_map_targets_are_the_mask_type_channels():
    """`_example` with types: `type_maps` is each type channel's map target, weighted as the map's pixels; a crop
    whose defect has no type (its mask carries none) gets type-map weight 0, a clean one keeps its weight."""
    m = MASKED.mask
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[0:2, 0:2, [0, 1]] = 1  # type 0 top left
    mask[4:8, 4:8, [0, 2]] = 1  # type 1 bottom right
    image, types = tf.zeros((8, 8, 3)), tf.constant([1.0, 1.0])
    _, y, w = pipeline._example(image, tf.constant(mask), 1.0, 1.0, 4, m, types)
    np.testing.assert_array_equal(y["type_maps"].numpy(), [[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
    np.testing.assert_array_equal(w["type_maps"].numpy(), w["defect_map"].numpy())
    untyped = mask.copy()
    untyped[..., 1:] = 0
    _, y, w = pipeline._example(image, tf.constant(untyped), 1.0, 1.0, 4, m, tf.constant([0.0, 0.0]))
    assert w["type_maps"].numpy().max() == 0 and w["defect_map"].numpy().max() > 0
    _, _, w = pipeline._example(image, tf.zeros((8, 8, 3), tf.uint8), 0.0, 1.0, 4, m, tf.constant([0.0, 0.0]))
    np.testing.assert_array_equal(w["type_maps"].numpy(), w["defect_map"].numpy())
    assert w["type_maps"].numpy().min() > 0


@pytest.mark.slow
def test_training_with_types_learns_a_map_per_type(tiny, tmp_path):
    """train.target classes on masks of two types: the model gets `type_maps` (one channel per type), trained with
    the dice_bce map loss in the crops phase and left alone by the whole-image phase."""
    images, masks = tiny
    masks = masks.assign(ClassId=[1, 2] * 3)
    images = images.assign(classes=[str(c) for c in masks.ClassId] + ["1"] + [""] * 6)
    train, val = images.iloc[[0, 1, 2, 3, 6, 7, 8, 9, 10]], images.iloc[[4, 5, 11, 12]]
    mask = dataclasses.replace(MASKED.mask, seg_loss="dice_bce", whole_image_epochs=1)
    p, snapshots = dataclasses.replace(MASKED, epochs=1, target="classes", mask=mask), Snapshots()
    weights = tmp_path / "w.weights.h5"
    segtrain.train(p, 0, train, val, masks, weights, tmp_path / "live", callbacks=[snapshots], class_ids=("1", "2"))
    assert not all(map(np.array_equal, snapshots.begin[0]["type_maps"], snapshots.end[0]["type_maps"]))
    assert all(map(np.array_equal, snapshots.begin[1]["type_maps"], snapshots.end[1]["type_maps"]))
    assert np.isfinite(json.loads((tmp_path / "live/metrics.json").read_text())["eval"]["type_maps_loss"])
    model = build_model(p, None, types=2)[0]
    model.load_weights(weights)
    out = model.predict(np.zeros((1, *SIZE, 3), np.float32), verbose=0)
    assert out["type_maps"].shape == (1, SIZE[0] // 4, SIZE[1] // 4, 2)


class Snapshots(keras.callbacks.Callback):
    """Every layer's weights (the backbone: one layer) at the start and the end of every fit."""

    def __init__(self):
        super().__init__()
        self.begin, self.end = [], []

    def weights(self) -> dict:
        return {layer.name: [np.array(w) for w in layer.weights] for layer in self.model.layers}

    def on_train_begin(self, logs=None):
        self.begin.append(self.weights())

    def on_train_end(self, logs=None):
        self.end.append(self.weights())


def test_whole_image_phase_trains_only_the_classifier_with_dice_bce(tiny, tmp_path):
    images, masks = tiny
    train, val = images.iloc[[0, 1, 2, 3, 6, 7, 8, 9, 10]], images.iloc[[4, 5, 11, 12]]
    mask = dataclasses.replace(MASKED.mask, seg_loss="dice_bce", whole_image_epochs=2)
    p, snapshots = dataclasses.replace(MASKED, epochs=1, mask=mask), Snapshots()
    segtrain.train(p, 0, train, val, masks, tmp_path / "w.weights.h5", tmp_path / "live", callbacks=[snapshots])
    assert len(snapshots.begin) == len(snapshots.end) == 2  # the callbacks reach both fits
    start, end = snapshots.begin[1], snapshots.end[1]  # the second fit starts from the first's best weights
    changed = {name for name in start if not all(map(np.array_equal, start[name], end[name]))}
    assert changed and changed <= set(segtrain.CLASSIFIER)  # backbone (BatchNorm statistics too) and map frozen
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert (summary["epochs_run"], summary["whole_image_epochs_run"]) == (1, 2)
    assert np.isfinite(summary["eval"]["defect_map_loss"])  # the dice_bce map loss, first phase
    auc = pd.read_csv(tmp_path / "live/plots/metrics/eval/probability_auc.tsv", sep="\t")
    assert list(auc.step) == [0, 1, 2]  # dvclive steps continue
    model = build_model(p, None)[0]
    model.load_weights(tmp_path / "w.weights.h5")  # as export does; the frozen layers kept the first phase's
    assert all(map(np.array_equal, model.get_layer("backbone").weights, start["backbone"]))


def test_whole_image_epochs_need_crops():
    with pytest.raises(UserError, match="whole_image_epochs = 2 retrains.*crop_size is null"):
        defaults(train={"supervision": "mask", "mask": {"crop_size": None, "whole_image_epochs": 2}})


@pytest.mark.parametrize(
    "runtime, variable",
    [
        (Runtime(strategy="multi_worker"), "STEELDEFECT_STRATEGY"),
        (Runtime(image_cache=Path("/c")), "STEELDEFECT_IMAGE_CACHE"),
    ],
)
def test_mask_supervision_refuses_runtime_settings_it_cannot_honour(tiny, tmp_path, runtime, variable):
    """Refused before anything trains, naming the variable (not printed as in effect, then dropped)."""
    images, masks = tiny
    with pytest.raises(UserError, match=f"^{variable}.*train.supervision mask"):
        segtrain.train(MASKED, 0, images, images, masks, tmp_path / "w.weights.h5", tmp_path / "live", runtime)
    assert not (tmp_path / "live").exists()
