"""ResNet50 backbone (optionally cut after a given layer) + the notebook's classification head."""

from __future__ import annotations

import keras

from steeldefect.errors import UserError
from steeldefect.params import HeadParams, TrainParams


def build_backbone(image_size: tuple[int, int], weights: str | None, layer: str | None) -> keras.Model:
    """Keras ResNet50 (include_top=False), cut after `layer` when given. `weights` is None (random init),
    "imagenet" (downloaded by Keras: only when the params ask for it) or a local weights file."""
    try:
        resnet = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(*image_size, 3))
    except Exception as e:  # Keras raises bare Exception/ValueError for fetch failures and bad files
        if weights == "imagenet":
            raise UserError(
                "train.weights = 'imagenet': Keras could not download the ImageNet weights "
                f"({e}). Download resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 on a machine with "
                "internet access and set train.weights to its local path."
            ) from e
        raise UserError(
            f"train.weights = {weights!r}: not a ResNet50 (include_top=False) weights file "
            f"that Keras can load ({type(e).__name__}: {e})."
        ) from e
    if layer is None:
        return keras.Model(resnet.input, resnet.output, name="backbone")
    try:
        output = resnet.get_layer(layer).output
    except ValueError as e:
        raise UserError(
            f"train.backbone_layer = {layer!r} is not a ResNet50 layer; use e.g. "
            "'conv2_block3_out', 'conv3_block4_out', 'conv4_block6_out' or null."
        ) from e
    return keras.Model(resnet.input, output, name="backbone")


def build_head(feature_shape: tuple[int, ...], p: HeadParams) -> keras.Model:
    """Pooling -> Dense(relu) -> Dropout -> Dense(1, sigmoid). `flatten` is the notebook's AvgPool(4) +
    Flatten (tied to one input size); `avgmax` concatenates global average and max pooling (any size)."""
    inputs = keras.Input(feature_shape)
    if p.pooling == "flatten":
        x = keras.layers.AveragePooling2D(p.pool_size, padding="same")(inputs)
        x = keras.layers.Flatten()(x)
    else:
        x = keras.layers.Concatenate()(
            [keras.layers.GlobalAveragePooling2D()(inputs), keras.layers.GlobalMaxPooling2D()(inputs)]
        )
    x = keras.layers.Dense(p.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(p.dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x), name="head")


def build_model(p: TrainParams, weights: str | None) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(whole model, backbone, head); the backbone starts from `weights` (train passes p.weights, export
    None before loading the trained weights). With p.freeze_backbone the backbone is frozen (BatchNorm in
    inference mode)."""
    backbone = build_backbone(p.image_size, weights, p.backbone_layer)
    backbone.trainable = not p.freeze_backbone
    head = build_head(tuple(backbone.output.shape[1:]), p.head)
    inputs = keras.Input((*p.image_size, 3), name="image")
    model = keras.Model(inputs, head(backbone(inputs)), name="steeldefect")
    return model, backbone, head


def compile_for_training(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
