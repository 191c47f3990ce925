"""Typed params: `params.yaml` is parsed and validated here, and only here.

params.yaml is the one place a value is written: the dataclasses below give each param's type and allowed range,
no default, so every key must be in the file. Missing and unknown keys, wrong types and out-of-range values stop a
stage before any work, with one message naming the key, the value and what is allowed. The checks read the types
off the dataclasses; pydantic v2 was tried instead and dropped: the models came out no shorter (strict types per
field, a validator per range) and its messages lost our wording of the allowed values for unions and ranges.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from steeldefect.errors import UserError


@dataclass(frozen=True)
class DataParams:
    # "synthetic" (the built-in data made by the synthesize stage) or a folder of images in one of the layouts of
    # `format`; a relative path is taken from the data/ folder (as DVC reads the prepare stage's deps).
    source: str
    # auto (detected from the folder's content), severstal (train_images/ + train.csv), folders (class folders,
    # no masks), pairs (image + mask files), mvtec (MVTec AD) or coco (COCO instances JSON); docs/data.md
    format: Literal["auto", "severstal", "folders", "pairs", "mvtec", "coco"]
    # class folders with these names (whole name or its last _/- part, any case) hold clean images; others: defects
    clean_names: tuple[str, ...]


@dataclass(frozen=True)
class SynthesizeParams:
    n_images: int
    defect_fraction: float  # share of images with a defect
    class_weights: tuple[float, float, float, float]  # relative frequency of defect classes 1..4
    two_class_fraction: float
    # the difficulty (see synthetic.py): faint defects, defects at the borders, harmless marks
    faint_fraction: float  # share of defects drawn faint (and faint pits tiny)
    faint_contrast: float  # a faint defect's contrast relative to a normal one
    edge_fraction: float  # share of defects at an image border, partly cut off
    mark_fraction: float  # share of images (clean or defective) with oil stains, water spots or roll marks
    mark_contrast: float  # contrast of the harmless marks relative to their base (6-18 grey levels)


@dataclass(frozen=True)
class PrepareParams:
    sample_images: int  # images in the figure of samples with their masks
    # missing or undecodable images: "fail" lists them all in one error; "skip" leaves them out and lists them
    # in data/prepared/excluded.csv (and counts them in metrics/data.json)
    on_bad_image: Literal["fail", "skip"]


@dataclass(frozen=True)
class SplitParams:
    test_size: float
    val_size: float


@dataclass(frozen=True)
class PretrainParams:
    """The pretrain stage: self-supervised masked-patch reconstruction of the backbone on the training split's
    images (and `extra_images`), labels never read (steeldefect.train.pretrain, docs/training.md)."""

    epochs: int  # 0 = off (the stage writes only a README); > 0: then set train.weights: pretrained
    batch_size: int
    learning_rate: float
    patch_size: int  # side in pixels of the square patches hidden; a multiple of the cut's stride
    mask_ratio: float  # share of the patches hidden in each image
    # a folder of extra unlabeled images (searched recursively), relative paths taken from data/ as data.source
    extra_images: str


@dataclass(frozen=True)
class HeadParams:
    pooling: Literal["avgmax", "flatten"]  # global avg+max, or the notebook's AvgPool(4) + Flatten
    pool_size: int
    dense_units: int
    dropout: float
    # batchnorm: BatchNormalization of the pooled features first, so the head does not depend on their scale
    # (raw pooled activations of a random backbone have an arbitrary one); none: the notebook's head
    normalize: Literal["batchnorm", "none"]


@dataclass(frozen=True)
class FineTuneParams:
    epochs: int  # after the head converges: epochs with the last `stages` ResNet stages unfrozen (0 = off)
    stages: int
    learning_rate: float


@dataclass(frozen=True)
class MaskParams:
    """train.supervision = mask: the segmentation + classification recipe (see docs/training.md, Supervision)."""

    # [height, width] crops of the image_size image, trained on; null = the whole image_size image (the squash)
    crop_size: tuple[int, int] | None
    crop_defect_share: float  # share of crops placed on a defect pixel; the rest: anywhere in clean images
    seg_loss_weight: float  # weight of the pixel (map) loss
    cls_loss_weight: float  # weight of the image (probability) loss
    cls_ramp_epochs: int  # classification weight ramped linearly from 0 over these epochs (0 = constant)
    seg_positive_weight: float  # pixel loss weight of defective map cells (clean cells weigh 1)
    seg_channels: int  # channels of the segmentation head's 3x3 convolution
    bn_momentum: float  # BatchNormalization momentum of the backbone (Keras' default 0.99 lags from scratch)
    # map loss: bce (pixel binary cross-entropy) or dice_bce (plus 1 - soft Dice of the map over the pixels whose
    # mask is known, per batch, weighted seg_loss_weight)
    seg_loss: Literal["bce", "dice_bce"]
    # after the crops: epochs training only the classifier (cls_conv0, cls_conv1, probability) on whole images, kept
    # only if the validation AUC improves (0 = off; needs crop_size)
    whole_image_epochs: int


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    # height, width fed to the network; "auto": the median training image's aspect within pixel_budget pixels
    # (steeldefect.train.sizing), so long strips and tall parts keep their shape
    image_size: tuple[int, int] | Literal["auto"]
    pixel_budget: int  # image_size auto: about this many pixels per input image (256 x 320 = 81920)
    learning_rate: float
    optimizer: Literal["adam", "nadam", "sgd"]  # the notebook used nadam
    # None (random init), "imagenet" (download), "pretrained" (the pretrain stage's output), or a local .h5 path
    weights: str | None
    freeze_backbone: bool
    backbone_layer: str | None  # cut ResNet50 after this layer; None = whole network
    head: HeadParams
    patience: int  # EarlyStopping on val_loss; ReduceLROnPlateau uses half of it
    # plateau: ReduceLROnPlateau (halved after patience/2 epochs without progress); cosine: cosine decay from
    # learning_rate to 0 over train.epochs (a fixed budget, no plateau cuts)
    schedule: Literal["plateau", "cosine"]
    augment: bool  # random flips (and quarter turns of square images), brightness, contrast; no feature cache
    fine_tune: FineTuneParams
    # None (float32), "mixed_float16" (GPUs) or "mixed_bfloat16" (TPUs, recent CPUs / GPUs); the output stays float32
    mixed_precision: Literal["mixed_float16", "mixed_bfloat16"] | None
    # image: image labels only (frozen backbone + head, feature cache); mask: also the pixel masks, the whole
    # network trained end to end with a segmentation head (defect map) and a classifier on features + map
    supervision: Literal["image", "mask"]
    mask: MaskParams
    # defect: one probability (defect or clean); classes: also one sigmoid per defect type (multi-label, the types of
    # data/prepared/classes.csv), the defect probability kept where the data has clean images
    target: Literal["defect", "classes"]


@dataclass(frozen=True)
class ExportParams:
    saved_model: bool  # also write models/saved_model: a TensorFlow SavedModel serving encoded JPEG bytes
    # models/openvino/model.xml + .bin, an OpenVINO IR for `steeldefect predict --engine openvino`: "none", "fp32",
    # or "int8" (NNCF post-training quantization calibrated on a seeded sample of training images)
    openvino: Literal["none", "fp32", "int8"]
    openvino_calibration_images: int
    # the IR is refused (nothing exported) when, on the validation images, more than this share of decisions at
    # the evaluate threshold change against Keras, or a probability moves by more than openvino_tolerance
    openvino_max_changed: float
    openvino_tolerance: float


@dataclass(frozen=True)
class EvaluateParams:
    # a number, or "auto": the highest threshold reaching target_recall for defects on the validation split
    threshold: float | Literal["auto"]
    target_recall: float
    gallery_size: int
    # mask models: a defect-map cell counts as defect when its value >= this; with types, a number for every map or
    # a map from type name to number (the any-defect map then uses the smallest); auto: chosen on the validation
    # split, map by map (steeldefect.evaluate.map_choice)
    map_threshold: float | dict[str, float] | Literal["auto"]
    # mask models: a predicted defect region (8-connected map cells >= map_threshold) smaller than this many pixels
    # of the original image is dropped (Dice, mean_dice_pairs, the defect list of `steeldefect predict`); a number
    # or, with types, a map from type name to pixels (the any-defect map then uses the smallest), or auto
    min_area: float | dict[str, float] | Literal["auto"]
    # train.target classes: a type is predicted when its probability >= its threshold: one number for every type,
    # "auto" (per type, the best F1 on the validation split), or a map from type name to number
    class_threshold: float | Literal["auto"] | dict[str, float]


@dataclass(frozen=True)
class BaselineParams:
    # the classical baseline: texture features (LBP, HOG, intensity statistics) of the grey image resized to
    # image_size (height, width), then scikit-learn's HistGradientBoostingClassifier
    image_size: tuple[int, int]
    max_iter: int
    learning_rate: float


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    synthesize: SynthesizeParams
    prepare: PrepareParams
    split: SplitParams
    pretrain: PretrainParams
    train: TrainParams
    export: ExportParams
    evaluate: EvaluateParams
    baseline: BaselineParams


# runtime settings that were params: they choose how and where training runs, not the model (steeldefect.train.runtime)
MOVED = {
    "train.strategy": "STEELDEFECT_STRATEGY",
    "train.feature_cache": "STEELDEFECT_FEATURE_CACHE (on / off) and STEELDEFECT_CACHE_DIR",
    "train.image_cache": "STEELDEFECT_IMAGE_CACHE (on / off) and STEELDEFECT_CACHE_DIR",
}


def _bad(key: str, value: object, allowed: str) -> UserError:
    return UserError(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}.")


def _convert(key: str, value: object, hint: object) -> object:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return _convert(key, value, inner)
            except UserError as e:
                if isinstance(value, list) and typing.get_origin(inner) is tuple:
                    raise  # a list meant as this tuple: its own error names the bad item, e.g. image_size[0]
                errors.append(str(e).split("expected ", 1)[-1].rstrip("."))
        raise _bad(key, value, " or ".join(errors + (["null"] if type(None) in args else [])))
    if origin is Literal:
        if value not in args:
            raise _bad(key, value, "one of " + ", ".join(map(repr, args)))
        return value
    if origin is dict:  # e.g. evaluate.class_threshold by type name
        if not isinstance(value, dict):
            raise _bad(key, value, f"a mapping of names to {args[1].__name__}s")
        return {str(k): _convert(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if origin is tuple and args[-1] is Ellipsis:  # a list of any length, e.g. data.clean_names
        if not isinstance(value, list | tuple):
            raise _bad(key, value, f"a list of {args[0].__name__}s")
        return tuple(_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if origin is tuple:
        if isinstance(value, int) and not isinstance(value, bool) and len(set(args)) == 1:
            value = [value] * len(args)  # e.g. image_size: 256 means 256x256
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise _bad(key, value, f"a list of {len(args)} {args[0].__name__}s")
        return tuple(_convert(f"{key}[{i}]", v, args[i]) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _bad(key, value, f"a value of type {hint.__name__}")
    return value


def _build(cls: type, raw: object, prefix: str = "") -> object:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _bad(prefix or "params", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(raw) - set(names)))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        if key in MOVED:
            raise UserError(
                f"params.yaml: {key} is no longer a param: it is a runtime setting (it does not change the model, "
                f"so DVC does not track it). Remove it from params.yaml and set the environment variable "
                f"{MOVED[key]} instead."
            )
        raise UserError(f"params.yaml: unknown key {key!r}; known keys here: {', '.join(sorted(names))}.")
    missing = [f"{prefix}.{k}" if prefix else k for k in names if k not in raw]
    if missing:
        raise UserError(
            f"params.yaml: missing key{'s' * (len(missing) > 1)} {', '.join(missing)}; every param must be given "
            "(see the repository's params.yaml)."
        )
    return cls(**{k: _convert(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in raw.items()})


def _need(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise _bad(key, value, allowed)


def _check(p: Params) -> None:
    need, s, t = _need, p.synthesize, p.train
    need(s.n_images >= 10, "synthesize.n_images", s.n_images, "an integer >= 10")
    need(0 < s.defect_fraction < 1, "synthesize.defect_fraction", s.defect_fraction, "a fraction in (0, 1)")
    need(
        min(s.class_weights) >= 0 and sum(s.class_weights) > 0,
        "synthesize.class_weights",
        s.class_weights,
        "four non-negative weights, not all zero",
    )
    for key in ("two_class_fraction", "faint_fraction", "edge_fraction", "mark_fraction"):
        need(0 <= getattr(s, key) <= 1, f"synthesize.{key}", getattr(s, key), "a fraction in [0, 1]")
    need(0 < s.faint_contrast <= 1, "synthesize.faint_contrast", s.faint_contrast, "a number in (0, 1]")
    need(0 <= s.mark_contrast <= 3, "synthesize.mark_contrast", s.mark_contrast, "a number in [0, 3]")
    names = p.data.clean_names
    need(all(n.strip() for n in names), "data.clean_names", list(names), "a list of non-empty folder names")
    need(p.prepare.sample_images >= 1, "prepare.sample_images", p.prepare.sample_images, "an integer >= 1")
    for key in ("test_size", "val_size"):
        v = getattr(p.split, key)
        need(0 < v < 1, f"split.{key}", v, "a fraction in (0, 1)")
    need(
        p.split.test_size + p.split.val_size < 1,
        "split.test_size + split.val_size",
        p.split.test_size + p.split.val_size,
        "a sum below 1, leaving images to train on",
    )
    need(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    auto = t.image_size == "auto"  # resolved from the training split by train.sizing, then checked again
    need(
        auto or min(t.image_size) >= 32,
        "train.image_size",
        t.image_size if auto else list(t.image_size),
        "[height, width], each >= 32",
    )
    need(t.pixel_budget >= 32 * 32, "train.pixel_budget", t.pixel_budget, "an integer >= 1024 (32 x 32)")
    need(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a number > 0")
    need(t.patience >= 1, "train.patience", t.patience, "an integer >= 1")
    need(t.fine_tune.epochs >= 0, "train.fine_tune.epochs", t.fine_tune.epochs, "an integer >= 0")
    need(1 <= t.fine_tune.stages <= 4, "train.fine_tune.stages", t.fine_tune.stages, "an integer from 1 to 4")
    need(t.fine_tune.learning_rate > 0, "train.fine_tune.learning_rate", t.fine_tune.learning_rate, "a number > 0")
    need(t.head.pool_size >= 1, "train.head.pool_size", t.head.pool_size, "an integer >= 1")
    need(t.head.dense_units >= 1, "train.head.dense_units", t.head.dense_units, "an integer >= 1")
    need(0 <= t.head.dropout < 1, "train.head.dropout", t.head.dropout, "a fraction in [0, 1)")
    _check_mask(t, need)
    _check_pretrain(p, need)
    _check_export(p.export)
    _check_evaluate(p.evaluate, need)
    b = p.baseline
    need(min(b.image_size) >= 32, "baseline.image_size", list(b.image_size), "[height, width], each >= 32")
    need(b.max_iter >= 1, "baseline.max_iter", b.max_iter, "an integer >= 1")
    need(b.learning_rate > 0, "baseline.learning_rate", b.learning_rate, "a number > 0")


def _check_evaluate(e: EvaluateParams, need) -> None:
    need(
        e.threshold == "auto" or 0 <= e.threshold <= 1,
        "evaluate.threshold",
        e.threshold,
        "a number in [0, 1] or 'auto'",
    )
    need(0 < e.target_recall <= 1, "evaluate.target_recall", e.target_recall, "a fraction in (0, 1]")
    need(e.gallery_size >= 1, "evaluate.gallery_size", e.gallery_size, "an integer >= 1")
    for key, value in e.map_threshold.items() if isinstance(e.map_threshold, dict) else [("", e.map_threshold)]:
        need(
            value == "auto" or 0 <= value <= 1,
            f"evaluate.map_threshold{'.' + key if key else ''}",
            value,
            "a number in [0, 1], auto, or a map from type name to a number in [0, 1]",
        )
    for key, value in e.min_area.items() if isinstance(e.min_area, dict) else [("", e.min_area)]:
        need(
            value == "auto" or value >= 0,
            f"evaluate.min_area{'.' + key if key else ''}",
            value,
            "a number of pixels >= 0 (0: keep every region), auto, or a map from type name to one",
        )
    ct = e.class_threshold
    for key, value in ct.items() if isinstance(ct, dict) else [("", ct)]:
        need(
            value == "auto" or 0 <= value <= 1,
            f"evaluate.class_threshold{'.' + key if key else ''}",
            value,
            "a number in [0, 1], 'auto', or a map from type name to a number in [0, 1]",
        )


STAGE_STRIDES = {"conv1": 2, "pool1": 4, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}


def map_stride(p: TrainParams) -> int:
    """Input pixels per defect-map cell: the stride of the backbone's cut (ResNet50 stage n: 2**n, the whole
    network: 32)."""
    if p.backbone_layer is None:
        return 32
    return STAGE_STRIDES.get(p.backbone_layer.split("_")[0], 0)


def _check_mask(t: TrainParams, need) -> None:
    m = t.mask
    need(0 <= m.crop_defect_share <= 1, "train.mask.crop_defect_share", m.crop_defect_share, "a fraction in [0, 1]")
    for key in ("seg_loss_weight", "cls_loss_weight"):
        need(getattr(m, key) >= 0, f"train.mask.{key}", getattr(m, key), "a number >= 0")
    need(
        m.seg_loss_weight + m.cls_loss_weight > 0,
        "train.mask.seg_loss_weight + train.mask.cls_loss_weight",
        m.seg_loss_weight + m.cls_loss_weight,
        "a sum > 0 (at least one loss must count)",
    )
    need(m.cls_ramp_epochs >= 0, "train.mask.cls_ramp_epochs", m.cls_ramp_epochs, "an integer >= 0")
    need(m.seg_positive_weight > 0, "train.mask.seg_positive_weight", m.seg_positive_weight, "a number > 0")
    need(m.seg_channels >= 1, "train.mask.seg_channels", m.seg_channels, "an integer >= 1")
    need(0 <= m.bn_momentum < 1, "train.mask.bn_momentum", m.bn_momentum, "a fraction in [0, 1)")
    need(m.whole_image_epochs >= 0, "train.mask.whole_image_epochs", m.whole_image_epochs, "an integer >= 0")
    if t.supervision != "mask":
        return
    need(t.mixed_precision is None, "train.mixed_precision", t.mixed_precision, "null with train.supervision mask")
    stride = map_stride(t)
    need(
        stride > 0,
        "train.backbone_layer",
        t.backbone_layer,
        "with train.supervision mask, a ResNet50 layer named convN_... (N = 2..5) or null",
    )
    image_size = None if t.image_size == "auto" else t.image_size
    for key, size in (("train.image_size", image_size), ("train.mask.crop_size", m.crop_size)):
        need(
            size is None or all(s % stride == 0 and s >= 2 * stride for s in size),
            key,
            None if size is None else list(size),
            f"[height, width], multiples of the map stride {stride} (of {t.backbone_layer}), each >= {2 * stride}",
        )
    if m.crop_size is not None and image_size is not None:
        need(
            all(c <= s for c, s in zip(m.crop_size, t.image_size)),
            "train.mask.crop_size",
            list(m.crop_size),
            f"a crop no larger than train.image_size {list(t.image_size)}, or null (the whole image)",
        )
    if m.crop_size is None and m.whole_image_epochs > 0:
        raise UserError(
            f"params.yaml: train.mask.whole_image_epochs = {m.whole_image_epochs} retrains the classifier on whole "
            "images after training on crops, but train.mask.crop_size is null: the model already trains on whole "
            "images. Set train.mask.whole_image_epochs: 0, or set train.mask.crop_size to a crop, e.g. [128, 128]."
        )


def _check_pretrain(p: Params, need) -> None:
    """pretrain.* and train.weights (which may name the pretrain stage's output)."""
    r, t = p.pretrain, p.train
    need(r.epochs >= 0, "pretrain.epochs", r.epochs, "an integer >= 0 (0 = off)")
    need(r.batch_size >= 1, "pretrain.batch_size", r.batch_size, "an integer >= 1")
    need(r.learning_rate > 0, "pretrain.learning_rate", r.learning_rate, "a number > 0")
    need(0 < r.mask_ratio < 1, "pretrain.mask_ratio", r.mask_ratio, "a fraction in (0, 1)")
    need(r.patch_size >= 1, "pretrain.patch_size", r.patch_size, "an integer >= 1")
    need(r.extra_images.strip() != "", "pretrain.extra_images", r.extra_images, "a folder (may hold no image)")
    if r.epochs:
        stride = map_stride(t)
        need(stride > 0, "train.backbone_layer", t.backbone_layer, "with pretrain.epochs > 0, convN_... or null")
        need(
            r.patch_size >= stride and r.patch_size % stride == 0,
            "pretrain.patch_size",
            r.patch_size,
            f"a multiple of the stride {stride} of train.backbone_layer {t.backbone_layer or 'null'}",
        )
        need(
            t.image_size == "auto" or all(s % stride == 0 for s in t.image_size),
            "train.image_size",
            list(t.image_size),
            f"with pretrain.epochs > 0, [height, width] multiples of the stride {stride} of "
            f"train.backbone_layer {t.backbone_layer or 'null'}",
        )
    if t.weights == "pretrained" and not r.epochs:
        raise UserError(
            "params.yaml: train.weights = 'pretrained' starts training from the pretrain stage's backbone, but "
            "pretrain.epochs = 0 turns pretraining off. Set pretrain.epochs > 0 (e.g. 30), or set train.weights "
            "to null, 'imagenet' or a weights file."
        )
    if t.weights not in (None, "imagenet", "pretrained"):
        need(
            Path(t.weights).is_file(),
            "train.weights",
            t.weights,
            "null, 'imagenet', 'pretrained', or the path of an existing local .h5 weights file",
        )


def _check_export(x: ExportParams) -> None:
    for key, ok, allowed in [
        ("openvino_calibration_images", x.openvino_calibration_images >= 1, "an integer >= 1"),
        ("openvino_max_changed", 0 <= x.openvino_max_changed <= 1, "a share in [0, 1]"),
        ("openvino_tolerance", x.openvino_tolerance >= 0, "a number >= 0"),
    ]:
        if not ok:
            raise _bad(f"export.{key}", getattr(x, key), allowed)


def parse_params(raw: object) -> Params:
    """Typed, validated params from the parsed YAML mapping, which must give every key."""
    return checked(_build(Params, raw))


def checked(params: Params) -> Params:
    """`params` after the checks of every key (UserError on the first bad one), e.g. once a derived value is set."""
    _check(params)
    return params


def read_yaml(path: Path) -> object:
    """The parsed YAML of a params file, read problems as one UserError naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the params file ({e.strerror}).") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e}); save the params file as UTF-8.") from e
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from e


def load_params(path: Path = Path("params.yaml")) -> Params:
    return parse_params(read_yaml(path))
