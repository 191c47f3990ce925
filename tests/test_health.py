"""Degenerate training runs: the check itself, and a real run forced to collapse, flagged in the metrics and by
a warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.train.health import MIN_ROC_AUC, check
from steeldefect.train.runtime import Runtime
from steeldefect.train.training import train

from helpers import TINY_TRAIN, defaults

LABELS = np.array([0, 0, 1, 1, 0, 1])


def test_a_model_that_ranks_well_is_healthy():
    report = check(LABELS, [0.1, 0.2, 0.9, 0.7, 0.3, 0.6])
    assert report == {"degenerate": False, "val_roc_auc": 1.0, "val_prob_spread": pytest.approx(0.8), "reasons": []}


def test_constant_predictions_are_degenerate():
    report = check(LABELS, [0.53] * 6)
    assert report["degenerate"] and report["val_prob_spread"] == 0.0
    assert "constant predictions" in report["reasons"][0] and "0.530" in report["reasons"][0]


def test_chance_ranking_is_degenerate():
    report = check(LABELS, [0.2, 0.8, 0.2, 0.8, 0.5, 0.5])
    assert report["degenerate"] and report["val_roc_auc"] <= MIN_ROC_AUC
    assert "no better than chance" in report["reasons"][0]


def test_non_finite_predictions_are_degenerate():
    report = check(LABELS, [0.1, np.nan, 0.9, 0.7, 0.3, 0.6])
    assert report["degenerate"] and "not finite" in report["reasons"][0]


def test_one_class_in_validation_cannot_be_ranked_but_constant_predictions_still_count():
    assert check([1, 1, 1], [0.2, 0.5, 0.9]) == {
        "degenerate": False,
        "val_roc_auc": None,
        "val_prob_spread": pytest.approx(0.7),
        "reasons": [],
    }
    assert check([1, 1, 1], [0.5, 0.5, 0.5])["degenerate"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(defaults(synthesize={"n_images": 16}).synthesize, seed=1, out_dir=root / "data")
    return prepare(root / "data", "fail", defaults().data)[0]


def test_an_absurd_learning_rate_is_flagged_in_the_metrics_and_by_a_warning(images, tmp_path, caplog):
    p = defaults(train={**TINY_TRAIN, "learning_rate": 1e6}).train  # absurd: the head diverges at the first step
    with caplog.at_level(logging.WARNING, logger="steeldefect.train.training"):
        report = train(p, 0, images[:12], images[12:], tmp_path / "w.weights.h5", tmp_path / "live", Runtime())
    assert report["degenerate"]
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["degenerate"] is True
    assert "degenerate training run" in caplog.text and "train.learning_rate" in caplog.text
    assert (tmp_path / "w.weights.h5").is_file()  # written all the same: the stage warns, it does not fail
