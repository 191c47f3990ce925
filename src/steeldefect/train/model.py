"""ResNet50 backbone (optionally cut after a given layer) + the notebook's classification head (image
supervision), or + a segmentation head and a classifier on features and map (mask supervision)."""

from __future__ import annotations

import keras

from steeldefect.data.types import GIVEN_DEFECT
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


def pool(features: keras.KerasTensor, p: HeadParams) -> keras.KerasTensor:
    """The head's parameter-free first part. `flatten` is the notebook's AvgPool(4) + Flatten (tied to one
    input size); `avgmax` concatenates global average and max pooling (any input size, small)."""
    if p.pooling == "flatten":
        return keras.layers.Flatten()(keras.layers.AveragePooling2D(p.pool_size, padding="same")(features))
    return keras.layers.Concatenate()(
        [keras.layers.GlobalAveragePooling2D()(features), keras.layers.GlobalMaxPooling2D()(features)]
    )


def type_outputs(x: keras.KerasTensor, types: int, defect: bool) -> dict:
    """The outputs of train.target classes on the pooled features `x`. Without `defect` (a set with no clean
    images): `classes`, one sigmoid per type. With it: `probability` (the image is defective), GIVEN_DEFECT (one
    sigmoid per type, trained only on the images that carry a type: which defect, given there is one) and their
    product `classes` (the image carries type k). So the type head never learns clean against defective, the
    defect probability's job, and every consumer reads `classes` as P(type k) on any image."""
    dense = lambda n, name: keras.layers.Dense(n, activation="sigmoid", dtype="float32", name=name)(x)  # noqa: E731
    if not defect:
        return {"classes": dense(types, "classes")}
    probability, given = dense(1, "probability"), dense(types, GIVEN_DEFECT)
    classes = keras.layers.Multiply(dtype="float32", name="classes")([probability, given])
    return {"probability": probability, GIVEN_DEFECT: given, "classes": classes}


def build_classifier(n_features: int, p: HeadParams, types: int = 0, defect: bool = True) -> keras.Model:
    """The head's trainable part: [BatchNormalization ->] Dense(relu) -> Dropout -> Dense(1, sigmoid). The
    normalisation makes the head independent of the features' scale (momentum 0.9: the running statistics
    used at inference follow the batches within a few epochs). With `types` > 0 (train.target classes) its output
    is the dict of `type_outputs`."""
    inputs = keras.Input((n_features,))
    x = keras.layers.BatchNormalization(momentum=0.9)(inputs) if p.normalize == "batchnorm" else inputs
    x = keras.layers.Dense(p.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(p.dropout)(x)
    # float32 even under a mixed precision policy, so the probabilities (and the loss) stay float32
    if not types:
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x), name="classifier")
    return keras.Model(inputs, type_outputs(x, types, defect), name="classifier")


def named(outputs: dict) -> dict:
    """A nested model's dict of outputs, each through an Identity layer named by its key, so that the outer model's
    `output_names` are the keys (Keras names a nested model's outputs after the nested model)."""
    return {k: keras.layers.Identity(name=k)(v) for k, v in sorted(outputs.items())}


def build_model(
    p: TrainParams, weights: str | None, types: int = 0, defect: bool = True
) -> tuple[keras.Model, keras.Model | None, keras.Model | None]:
    """(whole model, feature extractor, classifier), sharing layers: model = classifier(features(image)).
    `types` > 0 (train.target classes, the number of defect types): the outputs are the dict of `type_outputs`
    (`defect`: the data has clean images).
    With p.supervision "mask": (the two-output model of `build_mask_model`, None, None).
    The features are the backbone's output after the head's pooling; the backbone starts from `weights`
    (train passes p.weights, export None before loading the trained weights). With p.freeze_backbone the
    backbone is frozen (BatchNorm in inference mode), so the features of an image never change."""
    if p.supervision == "mask":
        return build_mask_model(p, weights, types, defect), None, None
    backbone = build_backbone(p.image_size, weights, p.backbone_layer)
    backbone.trainable = not p.freeze_backbone
    inputs = keras.Input((*p.image_size, 3), name="image")
    pooled = pool(backbone(inputs), p.head)
    classifier = build_classifier(pooled.shape[-1], p.head, types, defect)
    features = keras.Model(inputs, pooled, name="features")
    outputs = classifier(pooled)
    model = keras.Model(inputs, named(outputs) if types else outputs, name="steeldefect")
    return model, features, classifier


def build_mask_model(p: TrainParams, weights: str | None, types: int = 0, defect: bool = True) -> keras.Model:
    """One fully convolutional model (input: preprocessed images of any size, multiples of the map stride)
    with two float32 outputs, as in Bozic et al. 2021:
    - `defect_map` (N, H/s, W/s, 1): sigmoid probability that a map cell (s x s input pixels, s =
      `params.map_stride(p)`) holds any defect, from a 3x3 convolution on the backbone's feature map;
    - `probability` (N, 1): the image is defective, from a small convolutional classifier on the segmentation
      features and the map, then global average and max of both (so also the map's maximum);
    - with `types` > 0: the outputs of `type_outputs` on the same pooled features (without `defect`, only
      `classes`), and `type_maps` (N, H/s, W/s, types): one sigmoid map per defect type, from its own 1x1
      convolution on the same segmentation features. `defect_map` stays its own channel, trained on the union of
      every mask: so it also learns from masks that carry no type, and its consumers read it unchanged.
    The whole network trains end to end (BatchNorm momentum `train.mask.bn_momentum`)."""
    backbone = build_backbone((None, None), weights, p.backbone_layer)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = p.mask.bn_momentum
    inputs = keras.Input((None, None, 3), name="image")
    seg = keras.layers.Conv2D(p.mask.seg_channels, 3, padding="same", activation="relu", name="seg_conv")(
        backbone(inputs)
    )
    defect_map = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="defect_map")(seg)
    x = keras.layers.Concatenate(name="cls_input")([seg, defect_map])
    for i, filters in enumerate((16, 32)):
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"cls_pool{i}")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"cls_conv{i}")(x)
    pooled = keras.layers.Concatenate(name="cls_features")(
        [
            keras.layers.GlobalAveragePooling2D()(x),
            keras.layers.GlobalMaxPooling2D()(x),
            keras.layers.GlobalAveragePooling2D(dtype="float32")(defect_map),
            keras.layers.GlobalMaxPooling2D(dtype="float32")(defect_map),
        ]
    )
    if types:
        type_maps = keras.layers.Conv2D(types, 1, activation="sigmoid", dtype="float32", name="type_maps")(seg)
        heads = {**type_outputs(pooled, types, defect), "type_maps": type_maps}
    else:
        heads = {
            "probability": keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(pooled)
        }
    return keras.Model(inputs, {"defect_map": defect_map, **heads}, name="steeldefect")


OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "nadam": keras.optimizers.Nadam,
    "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
}


def learning_rate(p: TrainParams, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """train.learning_rate as the optimizer takes it: a number (train.schedule plateau: callbacks lower it), or
    a cosine decay to 0 over train.epochs (cosine)."""
    if p.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=p.epochs * steps_per_epoch)
    return p.learning_rate


def output_metrics(name: str) -> list:
    """What is logged of an output: accuracy and ROC AUC (per type, averaged, for `classes`)."""
    if name == "classes":  # the share of (image, type) pairs right at 0.5 ("accuracy" would take the argmax)
        return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc", multi_label=True)]
    return ["accuracy", keras.metrics.AUC(name="auc")]


def trained_outputs(model: keras.Model) -> list[str]:
    """The image-level outputs with a loss: `probability` and GIVEN_DEFECT, or `classes` where there is no
    GIVEN_DEFECT (no clean images); `classes` as the product of the two is only measured."""
    names = [n for n in ("probability", GIVEN_DEFECT, "classes") if n in model.output_names]
    return [n for n in names if not (n == "classes" and GIVEN_DEFECT in names)]


def measured_outputs(model: keras.Model) -> list[str]:
    return [n for n in ("probability", "classes") if n in model.output_names]


def output_losses(model: keras.Model) -> dict:
    """The loss of each trained output of a dict-output model: binary cross-entropy (for the types, Keras' mean
    over the types; their sum trained worse on magnetic-tile, docs/training.md)."""
    return {n: "binary_crossentropy" for n in trained_outputs(model)}


def compile_for_training(model: keras.Model, learning_rate, optimizer: str = "adam") -> None:
    """Binary cross-entropy on the one output, or on each trained output of a dict (their sum is `loss`)."""
    multi = "classes" in model.output_names
    model.compile(
        optimizer=OPTIMIZERS[optimizer](learning_rate),
        loss=output_losses(model) if multi else "binary_crossentropy",
        metrics={n: output_metrics(n) for n in measured_outputs(model)} if multi else output_metrics("probability"),
    )
