"""Model build on tiny input, local weights files, and the frozen-feature shortcut."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from steeldefect.errors import UserError
from steeldefect.params import map_stride
from steeldefect.train.model import build_backbone, build_model

from helpers import defaults

TINY = defaults(train={"image_size": [64, 96], "backbone_layer": "conv2_block3_out", "head": {"dense_units": 8}}).train


@pytest.mark.parametrize("pooling", ["avgmax", "flatten"])
@pytest.mark.parametrize("layer", ["conv2_block3_out", None])
def test_model_builds_and_predicts_probabilities(pooling, layer):
    p = dataclasses.replace(TINY, backbone_layer=layer, head=dataclasses.replace(TINY.head, pooling=pooling))
    model, features, classifier = build_model(p, weights=None)
    assert model.input_shape == (None, 64, 96, 3) and model.output_shape == (None, 1)
    prob = model.predict(np.random.default_rng(0).normal(0, 50, (3, 64, 96, 3)), verbose=0)
    assert prob.shape == (3, 1) and np.all((prob >= 0) & (prob <= 1))
    assert not features.trainable_weights  # frozen backbone, parameter-free pooling
    assert classifier.trainable_weights and len(model.trainable_weights) == len(classifier.trainable_weights)


def test_unfrozen_backbone_is_trainable():
    _, features, _ = build_model(dataclasses.replace(TINY, freeze_backbone=False), weights=None)
    assert features.trainable_weights


def test_local_weights_file_is_loaded(tmp_path):
    """The path used for ImageNet weights offline: a ResNet50 (include_top=False) weights file on disk."""
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 96, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    backbone = build_backbone((64, 96), str(path), "conv2_block3_out")
    expected = source.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(backbone.get_layer("conv1_conv").get_weights()[0], expected)


def test_bad_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="train.weights .*garbage.h5"):
        build_backbone((64, 96), str(path), None)


def test_unknown_backbone_layer_is_a_clear_error():
    with pytest.raises(UserError, match="backbone_layer = 'conv9'"):
        build_backbone((64, 96), None, "conv9")


def test_head_on_cached_features_equals_whole_model():
    """Training the head on cached backbone features is the same function as the exported whole model."""
    model, features, classifier = build_model(TINY, weights=None)
    x = np.random.default_rng(1).normal(0, 50, (4, 64, 96, 3)).astype("float32")
    via_features = classifier.predict(features.predict(x, verbose=0), verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), via_features, rtol=1e-5, atol=1e-6)


MASK = dataclasses.replace(
    TINY, supervision="mask", mask=dataclasses.replace(TINY.mask, crop_size=(32, 32), seg_channels=8)
)


def test_mask_model_is_fully_convolutional_with_two_named_outputs():
    model, features, classifier = build_model(MASK, weights=None)
    assert features is None and classifier is None
    assert model.input_shape == (None, None, None, 3)
    s = map_stride(MASK)
    for h, w in ((32, 32), (64, 96)):  # a training crop and a whole image
        out = model.predict(np.random.default_rng(0).normal(0, 50, (2, h, w, 3)), verbose=0)
        assert set(out) == {"probability", "defect_map"}
        assert out["probability"].shape == (2, 1) and out["defect_map"].shape == (2, h // s, w // s, 1)
        assert all(v.dtype == np.float32 and np.all((v >= 0) & (v <= 1)) for v in out.values())
    assert model.get_layer("backbone").trainable_weights  # the backbone trains end to end
    bn = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(layer.momentum == MASK.mask.bn_momentum for layer in bn)


def test_mask_model_round_trips_through_json_and_weights(tmp_path):
    model, _, _ = build_model(MASK, weights=None)
    model.save_weights(tmp_path / "m.weights.h5")
    loaded = keras.models.model_from_json(model.to_json())  # safe mode: standard layers only
    loaded.load_weights(tmp_path / "m.weights.h5")
    x = np.random.default_rng(1).normal(0, 50, (2, 64, 96, 3))
    a, b = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for key in ("probability", "defect_map"):
        np.testing.assert_array_equal(a[key], b[key])
