"""The pretrain stage: masked-patch reconstruction of the backbone on tiny images with the real Keras; its weights
load into both training models, labels are never read, and a killed run resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.train import pretrain as pt
from steeldefect.train.model import build_model
from steeldefect.train.seeding import set_seed

from helpers import defaults, repo_params, run, stage_cmd

SIZE = [64, 64]
OVERRIDES = {
    "pretrain": {"epochs": 4, "batch_size": 4, "patch_size": 16, "mask_ratio": 0.5},
    "train": {"image_size": SIZE, "backbone_layer": "conv2_block1_out"},
}
P = defaults(**OVERRIDES)
CUT_LAYERS = ("conv1_conv", "conv2_block1_1_conv", "conv2_block1_3_bn")  # trained: before the cut
BEYOND = ("conv3_block1_1_conv", "conv5_block3_3_conv")  # after the cut: the seeded random init, untouched


def write_images(folder: Path, n: int = 12) -> list[str]:
    """n textured 64x64 JPEGs (stripes + noise): a hidden patch is predictable from its surroundings."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, (y, x) = np.random.default_rng(0), np.mgrid[:64, :64]
    paths = []
    for i in range(n):
        grey = 128 + 60 * np.sin(x / (3 + i % 4) + i) + 20 * np.cos(y / 5) + rng.normal(0, 5, (64, 64))
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB").save(path)
        paths.append(str(path))
    return paths


class Keep(keras.callbacks.Callback):
    """The trained layers' weights at the end of training, by layer name."""

    def on_train_end(self, logs=None):
        self.weights = {layer.name: layer.get_weights() for layer in self.model.layers}


class StopAt(keras.callbacks.Callback):
    """A kill at the start of epoch `epoch` (0-based): the epochs before it finished and were backed up."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def losses(live: Path) -> pd.DataFrame:
    return pd.read_csv(live / "plots/metrics/loss.tsv", sep="\t")


def layer_weights(path: Path | str, names=CUT_LAYERS + BEYOND) -> dict:
    resnet = keras.applications.ResNet50(include_top=False, weights=str(path), input_shape=(*SIZE, 3))
    return {n: resnet.get_layer(n).get_weights() for n in names}


def assert_equal(a: dict, b: dict, names) -> None:
    for name in names:
        for x, y in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return write_images(tmp_path_factory.mktemp("pretrain_images"))


@pytest.fixture(scope="module")
def pretrained(images, tmp_path_factory) -> dict:
    """One uninterrupted run: its weights file, dvclive folder, metrics and the trained weights in memory."""
    out = tmp_path_factory.mktemp("pretrained")
    keep = Keep()
    metrics = pt.pretrain(P.pretrain, P.train, P.seed, images, out / pt.WEIGHTS_FILE, out / "live", [keep])
    return {"weights": out / pt.WEIGHTS_FILE, "live": out / "live", "metrics": metrics, "trained": keep.weights}


def test_the_loss_falls_and_is_logged(pretrained, images):
    loss = losses(pretrained["live"])
    assert list(loss.step) == [0, 1, 2, 3]
    assert loss.loss.iloc[-1] < 0.8 * loss.loss.iloc[0]
    metrics = json.loads((pretrained["live"] / "metrics.json").read_text())
    assert metrics["images"] == len(images) and metrics["epochs"] == 4 and metrics["pretrain_seconds"] > 0
    assert metrics["final_loss"] == pytest.approx(loss.loss.iloc[-1])


def test_the_weights_load_into_both_training_models(pretrained):
    """train.weights = the file: the cut's layers hold the pretrained weights (not a random init's), the layers
    after the cut the seeded random init, in the image model and in the mask model (input (None, None))."""
    path, trained = str(pretrained["weights"]), pretrained["trained"]
    saved = layer_weights(path)
    assert_equal(saved, trained, CUT_LAYERS)
    set_seed(P.seed)
    random = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(*SIZE, 3))
    for name in CUT_LAYERS:
        assert not np.array_equal(saved[name][0], random.get_layer(name).get_weights()[0]), name
    assert_equal(saved, {n: random.get_layer(n).get_weights() for n in BEYOND}, BEYOND)
    image_model = build_model(P.train, path)[0]
    mask_train = dataclasses.replace(
        P.train, supervision="mask", mask=dataclasses.replace(P.train.mask, crop_size=(32, 32))
    )
    mask_model = build_model(mask_train, path)[0]
    for model in (image_model, mask_model):
        backbone = model.get_layer("backbone")
        assert_equal({n: backbone.get_layer(n).get_weights() for n in CUT_LAYERS}, trained, CUT_LAYERS)


def test_the_stage_reads_no_label(pretrained, images, tmp_path):
    """The stage command of dvc.yaml on a train.csv whose labels are shuffled (and the images listed in the same
    order) writes the same backbone as the library given only the paths."""
    labels = np.random.default_rng(1).permutation([0, 1] * (len(images) // 2))
    (tmp_path / "data/split").mkdir(parents=True)
    (tmp_path / "data/unlabeled").mkdir()
    pd.DataFrame({"ImageId": [Path(p).name for p in images], "path": images, "label": labels}).to_csv(
        tmp_path / "data/split/train.csv", index=False
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(OVERRIDES)))
    run(stage_cmd("pretrain"), tmp_path)
    out = tmp_path / "data/pretrained"
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", pt.WEIGHTS_FILE]
    assert "train.weights: pretrained" in (out / "README.txt").read_text()
    assert_equal(layer_weights(out / pt.WEIGHTS_FILE), layer_weights(pretrained["weights"]), CUT_LAYERS + BEYOND)


def test_a_killed_run_resumes_after_its_last_epoch(pretrained, images, tmp_path, cache_dir, caplog):
    """Killed at the start of epoch 2, run again: it continues there (and says so), logs every epoch once, ends
    with the uninterrupted run's weights, and deletes its backup."""
    weights, live = tmp_path / pt.WEIGHTS_FILE, tmp_path / "live"
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(P.pretrain, P.train, P.seed, images, weights, live, [StopAt(2)])
    assert not weights.exists() and len(list((cache_dir / "pretrain").iterdir())) == 1
    with caplog.at_level(logging.INFO, logger="steeldefect.train.pretrain"):
        metrics = pt.pretrain(P.pretrain, P.train, P.seed, images, weights, live)
    assert "continuing after epoch 2 of 4" in caplog.text
    loss = losses(live)
    assert list(loss.step) == [0, 1, 2, 3] and metrics["epochs"] == 4
    np.testing.assert_allclose(loss.loss, losses(pretrained["live"]).loss, rtol=1e-6)
    assert_equal(layer_weights(weights), layer_weights(pretrained["weights"]), CUT_LAYERS)
    assert not list((cache_dir / "pretrain").iterdir())


class StopAtEnd(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        raise KeyboardInterrupt


def test_a_run_killed_after_its_last_epoch_writes_its_weights_when_run_again(images, tmp_path, caplog):
    p = dataclasses.replace(P.pretrain, epochs=1)
    weights, live = tmp_path / pt.WEIGHTS_FILE, tmp_path / "live"
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(p, P.train, P.seed, images, weights, live, [StopAtEnd()])
    assert not weights.exists()
    with caplog.at_level(logging.INFO, logger="steeldefect.train.pretrain"):
        metrics = pt.pretrain(p, P.train, P.seed, images, weights, live)
    assert "continuing after epoch 1 of 1" in caplog.text and weights.is_file()
    assert list(losses(live).step) == [0] and metrics["final_loss"] == losses(live).loss[0]


def test_epoch_batches_depend_on_seed_and_epoch_only(images):
    """A resumed run's first batch is the uninterrupted run's first batch of that epoch; hidden pixels are 0 in
    the input and marked in the target, a share mask_ratio of the patches."""
    first = next(iter(pt.masked_batches(images, SIZE, P.pretrain, P.seed, 1)))
    steps = -(-len(images) // P.pretrain.batch_size)
    same = next(iter(pt.masked_batches(images, SIZE, P.pretrain, P.seed, 0).skip(steps)))
    for a, b in zip(first, same, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, y = first
    hidden = y[..., 3].numpy()
    assert x.shape == (4, *SIZE, 3) and y.shape == (4, *SIZE, 4)
    assert np.all(x.numpy()[hidden == 1] == 0) and np.all(hidden.mean(axis=(1, 2)) == 0.5)
    grid = hidden[:, ::16, ::16]
    np.testing.assert_array_equal(np.repeat(np.repeat(grid, 16, axis=1), 16, axis=2), hidden)  # whole patches


def test_hidden_mse_counts_the_hidden_pixels_only():
    target = np.zeros((1, 2, 2, 4), np.float32)
    target[0, 0, 0, 3] = 1  # one hidden pixel, its target 0
    pred = np.ones((1, 2, 2, 3), np.float32)
    pred[0, 0, 0] = 2.0
    assert float(pt.hidden_mse(tf.constant(target), tf.constant(pred))) == pytest.approx(4.0)


def test_extra_images_are_found_and_checked(tmp_path, caplog):
    extra = tmp_path / "unlabeled"
    write_images(extra / "line7", 2)
    Image.new("RGB", (8, 8)).save(extra / "a.png")
    (extra / "README.md").write_text("not an image")
    (extra / "scan.tif").write_bytes(b"II*\x00")
    (extra / ".hidden.jpg").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="steeldefect.train.pretrain"):
        found = pt.image_paths(["t.jpg"], extra)
    assert found == ["t.jpg", str(extra / "a.png"), str(extra / "line7/img00.jpg"), str(extra / "line7/img01.jpg")]
    assert "1 TIFF files" in caplog.text
    assert pt.image_paths(["t.jpg"], None) == ["t.jpg"]
    (extra / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"1 file\(s\) under .* do not open as images: .*broken.jpg"):
        pt.image_paths([], extra)
    with pytest.raises(UserError, match="pretrain.extra_images: .*nowhere is not a folder"):
        pt.image_paths([], tmp_path / "nowhere")


def test_an_unusable_cache_folder_is_a_user_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("STEELDEFECT_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(UserError, match="cache folder .* cannot be used .*pretrain.epochs: 0"):
        pt.backup_folder("k")


def test_pretraining_off_writes_only_a_readme(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params()))
    (tmp_path / "data/pretrained").mkdir(parents=True)
    (tmp_path / "data/pretrained" / pt.WEIGHTS_FILE).write_text("stale")
    run(stage_cmd("pretrain"), tmp_path)
    assert [p.name for p in (tmp_path / "data/pretrained").iterdir()] == ["README.txt"]
    assert "pretrain.epochs 0" in (tmp_path / "data/pretrained/README.txt").read_text()
    assert json.loads((tmp_path / "metrics/pretrain/metrics.json").read_text()) == {"epochs": 0}


def test_weights_pretrained_needs_pretraining_and_its_file(tmp_path):
    with pytest.raises(UserError, match="train.weights = 'pretrained'.*pretrain.epochs = 0"):
        defaults(train={"weights": "pretrained"}, pretrain={"epochs": 0})
    with pytest.raises(UserError, match="backbone.weights.h5 does not exist: run the pretrain stage first"):
        pt.pretrained_weights(tmp_path)
