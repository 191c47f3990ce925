"""Tests for steeldefect.params: defaults, the repository's params.yaml, and one clear error per bad value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from steeldefect.errors import UserError
from steeldefect.params import (
    DataParams,
    EvaluateParams,
    HeadParams,
    Params,
    PrepareParams,
    SplitParams,
    TrainParams,
    load_params,
    map_stride,
    parse_params,
)

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


# --- defaults and the repository's params.yaml ------------------------------------------------------------


def plain(obj: object) -> object:
    """Params as the YAML would write them: mappings and lists."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def test_params_yaml_is_exactly_the_defaults():
    """One source of truth: params.yaml writes every key, each with the value the code uses when it is absent."""
    assert yaml.safe_load(REPO_PARAMS.read_text()) == plain(parse_params({}))
    assert load_params(REPO_PARAMS) == parse_params({})


def test_defaults_are_the_documented_values():
    p = parse_params({})
    assert p.seed == 42
    assert p.data == DataParams(source="synthetic")
    assert (p.synthesize.n_images, p.synthesize.defect_fraction) == (600, 0.53)
    assert p.synthesize.class_weights == (0.12, 0.03, 0.73, 0.12)
    assert p.prepare == PrepareParams(sample_images=10, on_bad_image="fail")
    assert p.split == SplitParams(test_size=0.15, val_size=0.15)
    assert (p.train.epochs, p.train.patience, p.train.batch_size, p.train.learning_rate) == (60, 10, 16, 0.001)
    assert p.train.head == HeadParams(pooling="avgmax", pool_size=4, dense_units=256, dropout=0.3)
    assert (p.train.image_size, p.train.backbone_layer) == ((128, 800), "conv3_block4_out")
    assert p.train.weights is None and p.train.freeze_backbone is True
    assert p.evaluate == EvaluateParams(threshold=0.5, target_recall=0.99, gallery_size=16)


def test_null_sections_and_an_empty_file_give_the_defaults(tmp_path):
    assert parse_params(None) == Params()
    assert parse_params({"train": None, "evaluate": None}) == Params()
    empty = tmp_path / "params.yaml"
    empty.write_text("# only a comment\n")
    assert load_params(empty) == Params()


def test_a_partial_section_keeps_the_other_defaults():
    p = parse_params({"train": {"epochs": 3, "head": {"dropout": 0.0}}})
    assert p.train.epochs == 3
    assert p.train.head.dropout == 0.0
    assert p.train.head.pooling == "avgmax"
    assert p.train.batch_size == TrainParams().batch_size
    assert p.split == SplitParams()


def test_load_params_reads_every_section_typed(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(
        "seed: 7\ndata:\n  source: /some/folder\nsynthesize:\n  n_images: 50\n  class_weights: [1, 0, 3, 1]\n"
        "prepare:\n  on_bad_image: skip\nsplit:\n  val_size: 0.2\n"
        "train:\n  epochs: 3\n  image_size: [64, 400]\n  learning_rate: 1e-4\n  head:\n    dropout: 0\n"
        "export:\n  saved_model: false\nevaluate:\n  threshold: auto\n"
    )
    p = load_params(f)
    assert (p.seed, p.data.source, p.synthesize.n_images) == (7, "/some/folder", 50)
    assert p.synthesize.class_weights == (1.0, 0.0, 3.0, 1.0)
    assert (p.prepare.on_bad_image, p.split.val_size, p.split.test_size) == ("skip", 0.2, 0.15)
    assert (p.train.epochs, p.train.image_size, p.train.learning_rate) == (3, (64, 400), 1e-4)
    assert p.train.head.dropout == 0.0 and type(p.train.head.dropout) is float
    assert p.train.head.dense_units == 256  # absent keys keep their defaults
    assert (p.export.saved_model, p.evaluate.threshold) == (False, "auto")


# --- accepted shapes ------------------------------------------------------------------------------------


def test_image_size_single_number_means_square():
    p = parse_params({"train": {"image_size": 256}})
    assert p.train.image_size == (256, 256)
    assert all(type(v) is int for v in p.train.image_size)


def test_image_size_list_becomes_tuple():
    assert parse_params({"train": {"image_size": [64, 400]}}).train.image_size == (64, 400)


def test_integers_are_accepted_for_floats_and_become_floats():
    p = parse_params({"train": {"learning_rate": 1}, "synthesize": {"class_weights": [1, 0, 3, 1]}})
    assert p.train.learning_rate == 1.0 and type(p.train.learning_rate) is float
    assert p.synthesize.class_weights == (1.0, 0.0, 3.0, 1.0)
    assert all(type(w) is float for w in p.synthesize.class_weights)


@pytest.mark.parametrize("threshold", ["auto", 0, 0.0, 0.25, 1, 1.0])
def test_threshold_auto_and_numbers_in_range_are_accepted(threshold):
    assert parse_params({"evaluate": {"threshold": threshold}}).evaluate.threshold == threshold


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_prepare_on_bad_image_policies_are_accepted(policy):
    assert parse_params({"prepare": {"on_bad_image": policy}}).prepare.on_bad_image == policy


@pytest.mark.parametrize("weights", [None, "imagenet"])
def test_weights_null_and_imagenet_are_accepted(weights):
    assert parse_params({"train": {"weights": weights}}).train.weights == weights


def test_weights_existing_local_file_is_accepted(tmp_path):
    h5 = tmp_path / "resnet50.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert parse_params({"train": {"weights": str(h5)}}).train.weights == str(h5)


def test_params_are_frozen():
    p = parse_params({})
    with pytest.raises(AttributeError):
        p.seed = 1  # type: ignore[misc]


# --- rejected values: one UserError naming the key and the value ----------------------------------------


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"foo": 1}, "foo"),
        ({"train": {"foo": 1}}, "train.foo"),
        ({"train": {"head": {"bar": 2}}}, "train.head.bar"),
        ({"evaluate": {"treshold": 0.5}}, "evaluate.treshold"),
    ],
)
def test_unknown_key_is_named_with_its_full_path(raw, key):
    with pytest.raises(UserError) as exc:
        parse_params(raw)
    msg = str(exc.value)
    assert "unknown key" in msg
    assert repr(key) in msg


@pytest.mark.parametrize(
    "raw, key, shown",
    [
        ({"train": {"batch_size": "16"}}, "train.batch_size", "'16'"),
        ({"train": {"batch_size": True}}, "train.batch_size", "True"),
        ({"train": {"epochs": 2.5}}, "train.epochs", "2.5"),
        ({"train": {"freeze_backbone": "yes"}}, "train.freeze_backbone", "'yes'"),
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "'fast'"),
        ({"train": {"image_size": [128]}}, "train.image_size", "[128]"),
        ({"train": {"image_size": ["a", 800]}}, "train.image_size[0]", "'a'"),
        ({"train": "fast"}, "train", "'fast'"),
        ({"train": {"epochs": 0}}, "train.epochs", "0"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "0"),
        ({"train": {"learning_rate": -0.001}}, "train.learning_rate", "-0.001"),
        ({"train": {"learning_rate": 0}}, "train.learning_rate", "0.0"),
        ({"train": {"image_size": 16}}, "train.image_size", "[16, 16]"),
        ({"train": {"head": {"pooling": "max"}}}, "train.head.pooling", "'max'"),
        ({"train": {"head": {"dropout": 1.0}}}, "train.head.dropout", "1.0"),
        ({"prepare": {"on_bad_image": "ignore"}}, "prepare.on_bad_image", "'ignore'"),
        ({"prepare": {"sample_images": 0}}, "prepare.sample_images", "0"),
        ({"split": {"test_size": 0}}, "split.test_size", "0.0"),
        ({"split": {"test_size": 1.2}}, "split.test_size", "1.2"),
        ({"split": {"val_size": -0.1}}, "split.val_size", "-0.1"),
        ({"split": {"test_size": 0.6, "val_size": 0.4}}, "split.test_size + split.val_size", repr(0.6 + 0.4)),
        ({"split": {"test_size": 0.5, "val_size": 0.7}}, "split.test_size + split.val_size", repr(0.5 + 0.7)),
        ({"synthesize": {"n_images": 5}}, "synthesize.n_images", "5"),
        ({"synthesize": {"defect_fraction": 1}}, "synthesize.defect_fraction", "1.0"),
        ({"synthesize": {"faint_fraction": 1.5}}, "synthesize.faint_fraction", "1.5"),
        ({"synthesize": {"faint_contrast": 0}}, "synthesize.faint_contrast", "0.0"),
        ({"synthesize": {"edge_fraction": -0.1}}, "synthesize.edge_fraction", "-0.1"),
        ({"synthesize": {"mark_fraction": 2}}, "synthesize.mark_fraction", "2.0"),
        ({"synthesize": {"mark_contrast": 4}}, "synthesize.mark_contrast", "4.0"),
        ({"evaluate": {"threshold": 1.5}}, "evaluate.threshold", "1.5"),
        ({"evaluate": {"threshold": -0.1}}, "evaluate.threshold", "-0.1"),
        ({"evaluate": {"threshold": "high"}}, "evaluate.threshold", "'high'"),
        ({"evaluate": {"threshold": True}}, "evaluate.threshold", "True"),
        ({"evaluate": {"target_recall": 0}}, "evaluate.target_recall", "0.0"),
        ({"baseline": {"image_size": 16}}, "baseline.image_size", "[16, 16]"),
        ({"baseline": {"max_iter": 0}}, "baseline.max_iter", "0"),
        ({"baseline": {"learning_rate": 0}}, "baseline.learning_rate", "0.0"),
        ({"train": {"supervision": "pixel"}}, "train.supervision", "'pixel'"),
        ({"train": {"mask": {"crop_defect_share": 1.5}}}, "train.mask.crop_defect_share", "1.5"),
        ({"train": {"mask": {"seg_loss_weight": -1}}}, "train.mask.seg_loss_weight", "-1.0"),
        ({"train": {"mask": {"seg_positive_weight": 0}}}, "train.mask.seg_positive_weight", "0.0"),
        (
            {"train": {"mask": {"seg_loss_weight": 0, "cls_loss_weight": 0}}},
            "train.mask.seg_loss_weight + train.mask.cls_loss_weight",
            "0.0",
        ),
        ({"train": {"mask": {"bn_momentum": 1}}}, "train.mask.bn_momentum", "1.0"),
        ({"train": {"supervision": "mask", "image_size": [130, 800]}}, "train.image_size", "[130, 800]"),
        ({"train": {"supervision": "mask", "mask": {"crop_size": [100, 128]}}}, "train.mask.crop_size", "[100, 128]"),
        ({"train": {"supervision": "mask", "mask": {"crop_size": [256, 128]}}}, "train.mask.crop_size", "[256, 128]"),
        ({"train": {"supervision": "mask", "backbone_layer": "avg_pool"}}, "train.backbone_layer", "'avg_pool'"),
    ],
)
def test_bad_value_names_key_and_value(raw, key, shown):
    with pytest.raises(UserError) as exc:
        parse_params(raw)
    assert f"{key} = {shown}" in str(exc.value)


def test_weights_path_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "nowhere" / "resnet50.h5")
    with pytest.raises(UserError) as exc:
        parse_params({"train": {"weights": missing}})
    msg = str(exc.value)
    assert f"train.weights = {missing!r}" in msg
    assert "imagenet" in msg  # says what is allowed instead


def test_weights_path_that_is_a_folder_is_rejected(tmp_path):
    with pytest.raises(UserError, match="train.weights"):
        parse_params({"train": {"weights": str(tmp_path)}})


def test_error_says_what_is_allowed():
    with pytest.raises(UserError) as exc:
        parse_params({"train": {"head": {"pooling": "max"}}})
    assert "'avgmax'" in str(exc.value) and "'flatten'" in str(exc.value)
    with pytest.raises(UserError) as exc:
        parse_params({"evaluate": {"threshold": "high"}})
    assert "'auto'" in str(exc.value)


def test_top_level_not_a_mapping():
    with pytest.raises(UserError, match="mapping"):
        parse_params([1, 2, 3])


def test_unknown_keys_of_mixed_types_give_a_user_error():
    with pytest.raises(UserError, match="unknown key"):
        parse_params(yaml.safe_load("1: a\nfoo: 2\n"))


# --- load_params: file problems name the file ----------------------------------------------------------


def test_load_params_missing_file_names_it(tmp_path):
    missing = tmp_path / "no-such-params.yaml"
    with pytest.raises(UserError) as exc:
        load_params(missing)
    assert str(missing) in str(exc.value)


def test_load_params_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(UserError) as exc:
        load_params(bad)
    assert str(bad) in str(exc.value)
    assert "YAML" in str(exc.value)


def test_load_params_validates_what_it_reads(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: 0\n")
    with pytest.raises(UserError, match=r"train\.epochs = 0"):
        load_params(f)
    f.write_text("seed: 7\ntrain:\n  image_size: 256\nevaluate:\n  threshold: auto\n")
    p = load_params(f)
    assert (p.seed, p.train.image_size, p.evaluate.threshold) == (7, (256, 256), "auto")


def test_load_params_non_utf8_file_gives_a_user_error(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_bytes("# Gr\u00f6\u00dfe der Bilder\nseed: 1\n".encode("latin-1"))
    with pytest.raises(UserError) as exc:
        load_params(f)
    assert str(f) in str(exc.value)


def test_exponent_without_dot_is_a_number():
    """PyYAML reads `1e-4` as a string (YAML 1.1); a float param accepts it as the number it means."""
    assert parse_params(yaml.safe_load("train:\n  learning_rate: 1e-4\n")).train.learning_rate == 1e-4


@pytest.mark.parametrize(("key", "value"), [("optimizer", "rmsprop")])
def test_unknown_optimizer_is_refused(key, value):
    with pytest.raises(UserError, match=rf"train.{key} = '{value}' is not allowed; expected one of"):
        parse_params({"train": {key: value}})


@pytest.mark.parametrize(
    "layer, stride", [("conv2_block3_out", 4), ("conv3_block4_out", 8), ("conv4_block6_out", 16), (None, 32)]
)
def test_map_stride_follows_the_cut(layer, stride):
    p = parse_params({"train": {"supervision": "mask", "backbone_layer": layer, "mask": {"crop_size": None}}})
    assert map_stride(p.train) == stride


def test_mask_crop_null_means_the_whole_image():
    p = parse_params({"train": {"supervision": "mask", "mask": {"crop_size": None}}})
    assert p.train.mask.crop_size is None
