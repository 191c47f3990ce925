"""Model build on tiny input, local weights files, and the frozen-feature shortcut."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from steeldefect.errors import UserError
from steeldefect.model import build_backbone, build_model
from steeldefect.params import HeadParams, TrainParams

TINY = TrainParams(image_size=(64, 96), backbone_layer="conv2_block3_out", head=HeadParams(dense_units=8))


@pytest.mark.parametrize("pooling", ["avgmax", "flatten"])
@pytest.mark.parametrize("layer", ["conv2_block3_out", None])
def test_model_builds_and_predicts_probabilities(pooling, layer):
    p = dataclasses.replace(TINY, backbone_layer=layer, head=HeadParams(pooling=pooling, dense_units=8))
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
