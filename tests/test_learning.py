"""The model learns: a small run on easy synthetic data separates defects from clean images, its training loss
falls, painting a defect on a clean image raises the probability (directional) and a horizontal flip barely
changes it (invariance). Each test fails when the classifier is a constant (tests/constant_head.py)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import HEIGHT, WIDTH, make_image, write_dataset
from steeldefect.data.synthetic import _pits as paint_pits
from steeldefect.data.synthetic import _scratch as paint_scratch
from steeldefect.serve.inference import predict_paths
from steeldefect.train.model import build_model
from steeldefect.train.runtime import Runtime
from steeldefect.train.training import train

from helpers import defaults, type_folders

# easy data (no faint defects, no harmless marks): learning, not the difficulty of the default dataset
DATA = defaults(synthesize={"n_images": 96, "faint_fraction": 0, "edge_fraction": 0, "mark_fraction": 0}).synthesize
TRAIN = defaults(
    train={
        "epochs": 60,
        "batch_size": 8,
        "image_size": [64, 400],
        "backbone_layer": "conv2_block3_out",
        "head": {"dense_units": 32, "dropout": 0.1},
        "patience": 60,
    }
).train
SEED = 3
FLIP_MEAN_TOLERANCE = 0.15  # mean |p(image) - p(flipped image)| over the validation images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, validation images, probabilities on them, training loss per epoch) of one small run."""
    root = tmp_path_factory.mktemp("learning")
    write_dataset(DATA, SEED, root / "data")
    images = prepare(root / "data", "fail", defaults().data)[0]
    train_df, val_df = images[:64], images[64:]
    train(TRAIN, SEED, train_df, val_df, root / "w.weights.h5", root / "live", Runtime())  # no disk cache
    model, _, _ = build_model(TRAIN, weights=None)
    model.load_weights(root / "w.weights.h5")
    loss = pd.read_csv(root / "live/plots/metrics/train/loss.tsv", sep="\t").loss.to_numpy()
    return model, val_df, predict_paths(model, list(val_df.path), 8), loss


def jpeg(img: np.ndarray, path: Path) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB").save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return str(path)


def clean_images(n: int) -> list[np.ndarray]:
    """The first n clean images the generator makes after the training data (never seen in training)."""
    out, index = [], DATA.n_images
    while len(out) < n:
        img, masks = make_image(DATA, SEED, index)
        if not masks:
            out.append(img.astype(float))
        index += 1
    return out


def test_validation_auc_and_falling_training_loss(trained):
    _, val_df, prob, loss = trained
    assert 0 < val_df.label.sum() < len(val_df)
    assert roc_auc_score(val_df.label, prob) >= 0.8
    assert loss[-1] < 0.7 * loss[0], loss


@pytest.mark.parametrize("paint", [paint_scratch, paint_pits], ids=["scratch", "pits"])
def test_painting_a_defect_raises_the_probability(trained, tmp_path, paint):
    model = trained[0]
    rng = np.random.default_rng(0)
    paths = []
    for i, img in enumerate(clean_images(6)):
        mask, delta = paint(rng, HEIGHT, WIDTH, False, False)
        painted = img.copy()
        painted[mask] += delta
        paths += [jpeg(img, tmp_path / f"clean{i}.jpg"), jpeg(painted, tmp_path / f"painted{i}.jpg")]
    prob = predict_paths(model, paths, 8)
    clean, painted = prob[0::2], prob[1::2]
    assert (painted > clean).all() and (painted - clean).mean() > 0.2, (clean, painted)


def test_horizontal_flip_keeps_the_probability(trained, tmp_path):
    """Defects are as likely on either side, so a flip should not matter. The small model is not exactly
    invariant (its random filters are not mirror-symmetric): on average the probability moves by less than
    FLIP_MEAN_TOLERANCE, and no image the model is sure of (p <= 0.2 or >= 0.8) changes side of 0.5."""
    model, val_df, _, _ = trained
    grey = [np.asarray(Image.open(path).convert("L")).astype(float) for path in val_df.path]
    # both re-encoded as JPEG, so only the flip differs
    same = predict_paths(model, [jpeg(g, tmp_path / f"same{i}.jpg") for i, g in enumerate(grey)], 8)
    flipped = predict_paths(model, [jpeg(g[:, ::-1], tmp_path / f"flip{i}.jpg") for i, g in enumerate(grey)], 8)
    # the images checked include defects the model finds and clean images it passes (a model that says
    # the same for every image cannot pass this test)
    y = val_df.label.to_numpy()
    assert ((same >= 0.8) & (y == 1)).sum() >= 3 and ((same <= 0.2) & (y == 0)).sum() >= 3, same
    assert np.abs(flipped - same).mean() < FLIP_MEAN_TOLERANCE, (same, flipped)
    sure = (same <= 0.2) | (same >= 0.8)
    assert ((flipped[sure] >= 0.5) == (same[sure] >= 0.5)).all(), (same, flipped)


# the same small network on 64x64 type images, with one output per type
TYPES_TRAIN = dataclasses.replace(TRAIN, epochs=40, image_size=(64, 64), patience=40, target="classes")


def type_auc(tmp_path: Path, shuffle: bool) -> float:
    """Validation macro ROC AUC of the types after training on three type folders (labels shuffled or not)."""
    from steeldefect.data.types import multi_hot
    from steeldefect.train.health import macro_auc

    images = prepare(type_folders(tmp_path / "types", per_type=24), "fail", defaults().data)[0]
    images = images.sample(frac=1, random_state=0).reset_index(drop=True)
    train_df, val_df = images[:48].copy(), images[48:]
    if shuffle:  # the types dealt in turn within each true type: the same images, no link from shape to type
        train_df["classes"] = (train_df.groupby("classes").cumcount() % 3 + 1).astype(str).to_numpy()
    class_ids = ("1", "2", "3")
    train(TYPES_TRAIN, SEED, train_df, val_df, tmp_path / "w.weights.h5", tmp_path / "live", Runtime(), None, class_ids)
    model = build_model(TYPES_TRAIN, None, types=3, defect=False)[0]
    model.load_weights(tmp_path / "w.weights.h5")
    from steeldefect.train.pipeline import image_dataset

    prob = model.predict(image_dataset(val_df.path, TYPES_TRAIN.image_size, 8), verbose=0)["classes"]
    return macro_auc(multi_hot(val_df.classes, list(class_ids)), prob)


def test_types_are_learned_and_shuffled_types_are_not(tmp_path):
    """Each type is a shape of its own: the per-type AUC is high with the true types and near chance with types
    that do not follow the shapes (so it measures the types, not something else about the images)."""
    learned, shuffled = type_auc(tmp_path / "true", False), type_auc(tmp_path / "shuffled", True)
    assert learned >= 0.9 and shuffled <= 0.7, (learned, shuffled)
