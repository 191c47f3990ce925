"""Tests for steeldefect.params: params.yaml is the one place values are written, every key must be given, and
one clear error per bad value."""

from __future__ import annotations

import ast
import dataclasses
import typing

import pytest
import yaml

import steeldefect.params
from steeldefect.errors import UserError
from steeldefect.params import Params, load_params, map_stride, parse_params
from steeldefect.presets import leaves

from helpers import REPO, repo_params

REPO_PARAMS = REPO / "params.yaml"


def parse(override: dict) -> Params:
    """The repository's params with `override` merged in, parsed."""
    return parse_params(repo_params(override))


# --- the repository's params.yaml: read as written, the same keys as the code ------------------------------


def plain(obj: object) -> object:
    """Params as the YAML would write them: mappings and lists."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def fields(cls: type, prefix: str = "") -> set[str]:
    """The dotted keys of a params dataclass, nested ones expanded."""
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        out |= fields(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else {f"{prefix}{f.name}"}
    return out


def test_params_yaml_is_read_as_written():
    assert plain(load_params(REPO_PARAMS)) == yaml.safe_load(REPO_PARAMS.read_text())


def test_the_dataclasses_and_params_yaml_have_the_same_keys():
    """A key in params.yaml that no dataclass declares, or a field params.yaml does not give, fails here."""
    declared, written = fields(Params), set(leaves(yaml.safe_load(REPO_PARAMS.read_text())))
    assert not declared - written, "declared in params.py, missing from params.yaml"
    assert not written - declared, "in params.yaml, declared by no dataclass of params.py"


def test_every_param_is_read_by_the_code():
    """Each param's name is used as an attribute somewhere in src/ or stages/ (params.py aside): none is dead."""
    used = {
        node.attr
        for path in [*(REPO / "src").rglob("*.py"), *(REPO / "stages").glob("*.py")]
        if path.name != "params.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
    }
    assert not {key for key in fields(Params) if key.rsplit(".", 1)[-1] not in used}


def test_the_dataclasses_write_no_default():
    """params.yaml is the only place a value is written."""
    classes = [c for c in vars(steeldefect.params).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    with_default = [
        f"{c.__name__}.{f.name}"
        for c in classes
        for f in dataclasses.fields(c)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert len(classes) == 13 and not with_default


# --- every key must be given --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["seed", "baseline", "train.epochs", "train.mask.crop_size", "data.clean_names"])
def test_a_missing_key_is_named(key):
    raw = repo_params()
    *sections, last = key.split(".")
    node = raw
    for part in sections:
        node = node[part]
    del node[last]
    with pytest.raises(UserError) as exc:
        parse_params(raw)
    assert str(exc.value) == (
        f"params.yaml: missing key {key}; every param must be given (see the repository's params.yaml)."
    )


def test_an_empty_file_or_a_null_section_names_every_missing_key(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(UserError, match="missing keys seed, data, synthesize, prepare, split, pretrain, train, export"):
        load_params(empty)
    with pytest.raises(UserError, match="missing keys evaluate.threshold, evaluate.target_recall, evaluate.gallery"):
        parse({"evaluate": None})


def test_load_params_reads_every_section_typed(tmp_path):
    f = tmp_path / "params.yaml"
    text = (
        "seed: 7\ndata:\n  source: /some/folder\nsynthesize:\n  n_images: 50\n  class_weights: [1, 0, 3, 1]\n"
        "prepare:\n  on_bad_image: skip\nsplit:\n  val_size: 0.2\n"
        "train:\n  epochs: 3\n  image_size: [64, 400]\n  learning_rate: 1e-4\n  head:\n    dropout: 0\n"
        "export:\n  saved_model: false\nevaluate:\n  threshold: auto\n"
    )
    f.write_text(yaml.safe_dump(repo_params(yaml.safe_load(text))))
    p = load_params(f)
    assert (p.seed, p.data.source, p.synthesize.n_images) == (7, "/some/folder", 50)
    assert p.synthesize.class_weights == (1.0, 0.0, 3.0, 1.0)
    assert (p.prepare.on_bad_image, p.split.val_size) == ("skip", 0.2)
    assert (p.train.epochs, p.train.image_size, p.train.learning_rate) == (3, (64, 400), 1e-4)
    assert p.train.head.dropout == 0.0 and type(p.train.head.dropout) is float
    assert (p.export.saved_model, p.evaluate.threshold) == (False, "auto")


# --- accepted shapes ------------------------------------------------------------------------------------


def test_image_size_single_number_means_square():
    p = parse({"train": {"image_size": 256}})
    assert p.train.image_size == (256, 256)
    assert all(type(v) is int for v in p.train.image_size)


def test_image_size_list_becomes_tuple():
    assert parse({"train": {"image_size": [64, 400]}}).train.image_size == (64, 400)


def test_integers_are_accepted_for_floats_and_become_floats():
    p = parse({"train": {"learning_rate": 1}, "synthesize": {"class_weights": [1, 0, 3, 1]}})
    assert p.train.learning_rate == 1.0 and type(p.train.learning_rate) is float
    assert p.synthesize.class_weights == (1.0, 0.0, 3.0, 1.0)
    assert all(type(w) is float for w in p.synthesize.class_weights)


@pytest.mark.parametrize("threshold", ["auto", 0, 0.0, 0.25, 1, 1.0])
def test_threshold_auto_and_numbers_in_range_are_accepted(threshold):
    assert parse({"evaluate": {"threshold": threshold}}).evaluate.threshold == threshold


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_prepare_on_bad_image_policies_are_accepted(policy):
    assert parse({"prepare": {"on_bad_image": policy}}).prepare.on_bad_image == policy


@pytest.mark.parametrize("weights", [None, "imagenet"])
def test_weights_null_and_imagenet_are_accepted(weights):
    assert parse({"train": {"weights": weights}}).train.weights == weights


def test_weights_existing_local_file_is_accepted(tmp_path):
    h5 = tmp_path / "resnet50.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert parse({"train": {"weights": str(h5)}}).train.weights == str(h5)


def test_params_are_frozen():
    p = load_params(REPO_PARAMS)
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
        parse(raw)
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
        ({"pretrain": {"epochs": -1}}, "pretrain.epochs", "-1"),
        ({"pretrain": {"batch_size": 0}}, "pretrain.batch_size", "0"),
        ({"pretrain": {"learning_rate": 0}}, "pretrain.learning_rate", "0.0"),
        ({"pretrain": {"mask_ratio": 1}}, "pretrain.mask_ratio", "1.0"),
        ({"pretrain": {"patch_size": 0}}, "pretrain.patch_size", "0"),
        ({"pretrain": {"extra_images": " "}}, "pretrain.extra_images", "' '"),
        ({"pretrain": {"extra_images": None}}, "pretrain.extra_images", "None"),
        ({"pretrain": {"epochs": 1, "patch_size": 12}}, "pretrain.patch_size", "12"),  # conv3: stride 8
        ({"pretrain": {"epochs": 1}, "train": {"image_size": [100, 800]}}, "train.image_size", "[100, 800]"),
    ],
)
def test_bad_value_names_key_and_value(raw, key, shown):
    with pytest.raises(UserError) as exc:
        parse(raw)
    assert f"{key} = {shown}" in str(exc.value)


def test_weights_path_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "nowhere" / "resnet50.h5")
    with pytest.raises(UserError) as exc:
        parse({"train": {"weights": missing}})
    msg = str(exc.value)
    assert f"train.weights = {missing!r}" in msg
    assert "imagenet" in msg  # says what is allowed instead


def test_weights_pretrained_needs_pretraining_on():
    assert parse({"pretrain": {"epochs": 3}, "train": {"weights": "pretrained"}}).train.weights == "pretrained"
    with pytest.raises(UserError) as exc:
        parse({"pretrain": {"epochs": 0}, "train": {"weights": "pretrained"}})
    assert "train.weights = 'pretrained'" in str(exc.value) and "pretrain.epochs = 0" in str(exc.value)


def test_weights_path_that_is_a_folder_is_rejected(tmp_path):
    with pytest.raises(UserError, match="train.weights"):
        parse({"train": {"weights": str(tmp_path)}})


def test_error_says_what_is_allowed():
    with pytest.raises(UserError) as exc:
        parse({"train": {"head": {"pooling": "max"}}})
    assert "'avgmax'" in str(exc.value) and "'flatten'" in str(exc.value)
    with pytest.raises(UserError) as exc:
        parse({"evaluate": {"threshold": "high"}})
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
    f.write_text(REPO_PARAMS.read_text().replace("epochs: 60", "epochs: 0"))
    with pytest.raises(UserError, match=r"train\.epochs = 0"):
        load_params(f)
    changed = {"seed": 7, "train": {"image_size": 256}, "evaluate": {"threshold": "auto"}}
    f.write_text(yaml.safe_dump(repo_params(changed)))
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
    assert parse(yaml.safe_load("train:\n  learning_rate: 1e-4\n")).train.learning_rate == 1e-4


@pytest.mark.parametrize(("key", "value"), [("optimizer", "rmsprop")])
def test_unknown_optimizer_is_refused(key, value):
    with pytest.raises(UserError, match=rf"train.{key} = '{value}' is not allowed; expected one of"):
        parse({"train": {key: value}})


@pytest.mark.parametrize(
    "layer, stride", [("conv2_block3_out", 4), ("conv3_block4_out", 8), ("conv4_block6_out", 16), (None, 32)]
)
def test_map_stride_follows_the_cut(layer, stride):
    p = parse({"train": {"supervision": "mask", "backbone_layer": layer, "mask": {"crop_size": None}}})
    assert map_stride(p.train) == stride


def test_mask_crop_null_means_the_whole_image():
    p = parse({"train": {"supervision": "mask", "mask": {"crop_size": None}}})
    assert p.train.mask.crop_size is None
