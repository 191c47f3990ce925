"""Training on tiny data: feature cache, image cache, fine-tuning, augmentation, mixed precision, dvclive
curves, saved weights."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from steeldefect.cache import feature_key, image_cache_key
from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.data.types import GIVEN_DEFECT
from steeldefect.errors import UserError
from steeldefect.params import TrainParams
from steeldefect.train.model import build_model
from steeldefect.train.pipeline import training_batches
from steeldefect.train.runtime import Runtime
from steeldefect.train.training import check_target, sample_weights, targets, train, unfreeze_last_stages

from helpers import TINY_TRAIN, defaults

CPU_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""

TINY = defaults(train=TINY_TRAIN).train


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(defaults(synthesize={"n_images": 16}).synthesize, seed=1, out_dir=root / "data")
    return prepare(root / "data", "fail", defaults().data)[0]


def run_train(p: TrainParams, images: pd.DataFrame, tmp_path, image_cache=None) -> tuple[np.ndarray, pd.DataFrame]:
    runtime = Runtime(feature_cache=tmp_path / "cache", image_cache=image_cache)
    train(p, 0, images[:12], images[12:], tmp_path / "w.weights.h5", tmp_path / "live", runtime)
    model, _, _ = build_model(p, weights=None)
    model.load_weights(tmp_path / "w.weights.h5")
    curve = pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")
    return model.get_layer("classifier").get_weights()[0], curve


def test_feature_cache_is_written_then_reused(images, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        first, curve = run_train(TINY, images, tmp_path)
    assert "features of 12 images computed" in caplog.text and "features of 4 images computed" in caplog.text
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 2 and len(curve) == 2
    written = {f: f.stat().st_mtime_ns for f in files}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second, _ = run_train(TINY, images, tmp_path)
    # the second run read both files and computed nothing, and the files were left as they were
    assert "computed" not in caplog.text
    assert caplog.text.count("images read from") == 2 and all(f"images read from {f}" in caplog.text for f in files)
    assert {f: f.stat().st_mtime_ns for f in files} == written
    np.testing.assert_array_equal(first, second)  # the same features give the same training


def test_feature_key_depends_on_what_changes_features(images):
    key = feature_key(TINY, 0, images)
    assert key == feature_key(dataclasses.replace(TINY, learning_rate=0.1, epochs=9), 0, images)
    assert key != feature_key(dataclasses.replace(TINY, image_size=(64, 200)), 0, images)
    assert key != feature_key(dataclasses.replace(TINY, backbone_layer=None), 0, images)
    assert key != feature_key(TINY, 1, images)
    assert key != feature_key(TINY, 0, images[1:])


@pytest.mark.slow
def test_fine_tuning_continues_the_curves(images, tmp_path):
    p = dataclasses.replace(TINY, fine_tune=dataclasses.replace(TINY.fine_tune, epochs=2, stages=1), augment=True)
    _, curve = run_train(p, images, tmp_path)
    assert list(curve.step) == [0, 1, 2, 3]  # one dvclive run across both phases


def test_unfreeze_last_stages_leaves_batchnorm_frozen():
    model, _, _ = build_model(dataclasses.replace(TINY, backbone_layer="conv3_block4_out"), weights=None)
    assert unfreeze_last_stages(model, 1) == ["conv3"]
    backbone = model.get_layer("backbone")
    trainable = [layer.name for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable and all(name.startswith("conv3_") and not name.endswith("_bn") for name in trainable)
    assert backbone.trainable_weights and not backbone.get_layer("conv2_block1_1_conv").trainable


def test_image_cache_gives_the_uncached_batches_and_is_read_without_decoding(images, tmp_path):
    """Cached decoded images, then order and augmentation: every epoch equals the uncached pipeline's (so
    augmentation still changes every epoch), and once the cache is complete the JPEGs are never read."""
    copies = tmp_path / "copies"
    copies.mkdir()
    paths = [str(shutil.copy(path, copies)) for path in images.path[:6]]
    kwargs = dict(image_size=(32, 200), batch_size=4, labels=list(images.label[:6]), weights=None, seed=3)
    prefix = str(tmp_path / "images")

    def epochs(cache=None):
        batches = training_batches(paths, **kwargs, epochs=(0, 2), augment_images=True, cache=cache)
        x = np.concatenate([x for x, _ in batches.as_numpy_iterator()])
        return x[:6], x[6:]

    uncached, cached = epochs(), epochs(prefix)
    assert (tmp_path / "images.index").is_file()
    for a, b in zip(uncached, cached):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(cached[0], cached[1])  # another order and augmentation in the second epoch
    shutil.rmtree(copies)  # only the cache is left
    for a, b in zip(uncached, epochs(prefix)):
        np.testing.assert_array_equal(a, b)


def test_an_epochs_batches_depend_on_the_seed_and_the_epoch_only(images):
    """What a resumed run needs: epoch k's batches alone equal the k-th epoch of a run from epoch 0."""
    kwargs = dict(image_size=(32, 200), batch_size=4, labels=list(images.label[:6]), weights=None, augment_images=True)
    whole = [b for b, _ in training_batches(list(images.path[:6]), **kwargs, seed=3, epochs=(0, 3)).as_numpy_iterator()]
    later = [b for b, _ in training_batches(list(images.path[:6]), **kwargs, seed=3, epochs=(2, 3)).as_numpy_iterator()]
    assert len(whole) == 6 and len(later) == 2  # 4 + 2 images per epoch
    for a, b in zip(whole[4:], later):
        np.testing.assert_array_equal(a, b)
    other = [b for b, _ in training_batches(list(images.path[:6]), **kwargs, seed=4, epochs=(2, 3)).as_numpy_iterator()]
    assert not np.array_equal(other[0], later[0])


@pytest.mark.slow
def test_image_cache_is_written_then_read_with_the_uncached_result(images, tmp_path, caplog):
    p = dataclasses.replace(TINY, augment=True)  # trains on the images (the feature cache is off)
    uncached, _ = run_train(p, images, tmp_path / "uncached")
    first, _ = run_train(p, images, tmp_path / "first", image_cache=tmp_path / "images")
    folders = sorted(path.name for path in (tmp_path / "images").iterdir())
    assert folders == sorted(image_cache_key(df, p.image_size) for df in (images[:12], images[12:]))
    assert all((tmp_path / "images" / name / "images.index").is_file() for name in folders)  # complete
    with caplog.at_level(logging.INFO, logger="steeldefect.cache"):
        second, _ = run_train(p, images, tmp_path / "second", image_cache=tmp_path / "images")
    assert caplog.text.count("decoded images of") == 2 and caplog.text.count(" read from ") == 2
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def test_image_cache_key_depends_on_the_images_and_size(images):
    key = image_cache_key(images, (64, 400))
    assert key != image_cache_key(images, (64, 200))
    assert key != image_cache_key(images[1:], (64, 400))
    assert key != image_cache_key(images[::-1], (64, 400))  # the cache holds the images in order


def test_mixed_bfloat16_is_refused_under_the_avx2_pin(images, tmp_path):
    """The pin caps oneDNN below its bfloat16 kernels: a clear refusal before training, not a failed convolution."""
    p = dataclasses.replace(TINY, mixed_precision="mixed_bfloat16")
    with pytest.raises(UserError, match="mixed_bfloat16.*capped at AVX2.*STEELDEFECT_CPU_ISA=native"):
        run_train(p, images, tmp_path)
    assert not (tmp_path / "live").exists()


# bfloat16 with the pin lifted, in a fresh process (this one's oneDNN is capped already): argv[1] the images CSV
BF16 = """
import dataclasses, sys
from pathlib import Path
import keras, numpy as np, pandas as pd
sys.path.insert(0, sys.argv[2])
from test_training import TINY, run_train
from steeldefect.serve.export import export, load_model
from steeldefect.cache import feature_key
from steeldefect.train.pipeline import image_dataset, training_batches
images, tmp_path = pd.read_csv(sys.argv[1], keep_default_na=False), Path(sys.argv[3])
p = dataclasses.replace(TINY, mixed_precision="mixed_bfloat16")
run_train(p, images, tmp_path)  # also loads the weights into a model built in float32
assert keras.mixed_precision.global_policy().name == "float32"  # train() put the policy back
assert feature_key(p, 0, images) != feature_key(TINY, 0, images)
check = list(images.path[12:])
assert export(p, tmp_path / "w.weights.h5", tmp_path / "model", check, {}, saved_model=False) <= 1e-6
reference = load_model(tmp_path / "model").predict(image_dataset(check, p.image_size, 4), verbose=0)
assert reference.dtype == np.float32 and np.all((reference >= 0) & (reference <= 1))
print("BF16 OK")
"""


@pytest.mark.slow
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU") and "avx512_bf16" not in CPU_FLAGS, reason="no bf16")
def test_mixed_bfloat16_trains_and_the_weights_export_and_load(images, tmp_path):
    images.to_csv(tmp_path / "images.csv", index=False)
    env = {**os.environ, "STEELDEFECT_CPU_ISA": "native", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)  # set by this process's `import steeldefect`
    args = [sys.executable, "-c", BF16, str(tmp_path / "images.csv"), str(Path(__file__).parent), str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "BF16 OK" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("shape, turns", [((4, 4), True), ((4, 6), False)])
def test_augment_turns_square_images_a_quarter_and_only_flips_others(shape, turns):
    """The bright pixel's position tells the orientation: flips keep it in its row pair and column pair, a quarter
    turn (square images only: it keeps their shape) swaps rows and columns."""
    from steeldefect.train.pipeline import augment

    image = np.full((*shape, 3), 50, np.float32)
    image[0, 1] = 200
    h, w = shape
    flips = {(r, c) for r in (0, h - 1) for c in (1, w - 2)}
    seen = {
        tuple(np.unravel_index(np.argmax(augment(tf.constant(image), tf.constant([s, 7]))[..., 0]), shape))
        for s in range(40)
    }
    assert seen - flips if turns else seen <= flips
    assert len(seen & flips) > 1  # flips still happen


def test_cosine_schedule_decays_to_zero_and_drops_the_plateau_cut(tmp_path):
    from dvclive import Live

    from steeldefect.train.model import learning_rate
    from steeldefect.train.training import standard_callbacks

    cosine = dataclasses.replace(TINY, schedule="cosine", epochs=4, learning_rate=0.01)
    schedule = learning_rate(cosine, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(20)) == pytest.approx(0.0, abs=1e-9)
    assert 0 < float(schedule(10)) < 0.01
    assert learning_rate(TINY, 5) == TINY.learning_rate  # plateau: a number the callback lowers
    with Live(str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False) as live:
        kinds = {
            p.schedule: [type(c).__name__ for c in standard_callbacks(tmp_path / "b.weights.h5", p, live)]
            for p in (TINY, cosine)
        }
    assert "ReduceLROnPlateau" in kinds["plateau"] and "ReduceLROnPlateau" not in kinds["cosine"]


def _typed(classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ImageId": [f"i{k}" for k in range(len(classes))],
            "classes": classes,
            "label": [int(bool(c)) for c in classes],
        }
    )


def test_targets_carry_every_type_of_an_image_and_the_defect_label():
    df = _typed(["1 3", "", "2"])
    y = targets(df, ("1", "2", "3"), defect=True)
    np.testing.assert_array_equal(y["classes"], [[1, 0, 1], [0, 0, 0], [0, 1, 0]])  # two types on one image
    np.testing.assert_array_equal(y["probability"], [[1], [0], [1]])
    assert set(targets(df[df.label == 1], ("1", "2", "3"), defect=False)) == {"classes"}
    np.testing.assert_array_equal(targets(df, (), defect=True), [1, 0, 1])  # train.target defect: as before


def test_a_target_the_data_cannot_give_is_refused_before_training():
    no_clean = _typed(["1", "2", "1 2"])
    with pytest.raises(UserError, match="train.target: classes"):
        check_target(defaults(train={"target": "defect"}).train, no_clean, no_clean, ("1", "2"))
    check_target(defaults(train={"target": "classes"}).train, no_clean, no_clean, ("1", "2"))
    untyped = pd.DataFrame({"ImageId": ["u"], "classes": [""], "label": [1]})
    check_target(defaults(train={"target": "classes"}).train, pd.concat([no_clean, untyped]), no_clean, ("1", "2"))
    with pytest.raises(UserError, match="none of the 1 training images carries a defect type"):
        check_target(defaults(train={"target": "classes"}).train, untyped, no_clean, ("1", "2"))


def test_the_types_loss_counts_only_typed_images_weighted_by_their_share():
    df = pd.concat([_typed(["1 3", "", "2"]), pd.DataFrame({"ImageId": ["u"], "classes": [""], "label": [1]})])
    w = sample_weights(df, ("1", "2", "3"), defect=True, typed_share=0.5)
    np.testing.assert_array_equal(w[GIVEN_DEFECT], [2, 0, 2, 0])  # clean and untyped images: no type loss
    np.testing.assert_array_equal(w["probability"], [1, 1, 1, 1])
    assert set(targets(df, ("1", "2", "3"), defect=True)) == {"classes", "probability", GIVEN_DEFECT}
    assert set(sample_weights(df, ("1", "2", "3"), defect=False, typed_share=0.5)) == {"classes"}
    assert sample_weights(df, (), defect=True, typed_share=0.5) is None
