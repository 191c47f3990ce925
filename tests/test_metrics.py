"""Tests for steeldefect.evaluate.metrics against numbers worked out by hand (real scikit-learn underneath)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from steeldefect.evaluate.metrics import (
    NOT_APPLICABLE,
    binary_metrics,
    choose_threshold,
    recall_per_class,
    scored_metrics,
    threshold_sweep,
)

from helpers import defaults

# 4 defective (1) and 6 clean (0) images. At threshold 0.5 (prob >= 0.5 is defective):
#   predicted = 1 1 0 1 | 1 0 0 0 0 1  ->  tp 3 (0, 1, 3), fn 1 (2), fp 2 (4, 9), tn 4 (5, 6, 7, 8)
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PROB = np.array([0.9, 0.5, 0.49, 0.8, 0.5, 0.1, 0.2, 0.3, 0.05, 0.6])


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, PROB, 0.5)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (3, 4, 2, 1)
    assert m["images"] == 10
    assert m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["fp_rate"] == pytest.approx(2 / 6)
    assert m["fn_rate"] == pytest.approx(1 / 4)
    assert m["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # AUC = share of (defective, clean) pairs ranked right, ties count half:
    # 0.9 -> 6, 0.8 -> 6, 0.5 -> 4 + 0.5 (tie with a clean 0.5), 0.49 -> 4; 20.5 of 24 pairs
    assert m["roc_auc"] == pytest.approx(20.5 / 24)
    assert 0 < m["average_precision"] <= 1


def test_binary_metrics_are_json_ready():
    m = binary_metrics(Y, PROB, 0.5)
    json.dumps(m, allow_nan=False)
    assert all(type(m[k]) is int for k in ("tp", "tn", "fp", "fn", "images"))


def test_threshold_semantics_equal_probability_counts_as_defective():
    at = binary_metrics(Y, PROB, 0.49)  # the defective 0.49 is now caught
    assert (at["tp"], at["fn"], at["fp"]) == (4, 0, 2)
    above = binary_metrics(Y, PROB, np.nextafter(0.5, 1))  # both 0.5s (one of each label) drop out
    assert (above["tp"], above["fn"], above["fp"], above["tn"]) == (2, 2, 1, 5)
    assert binary_metrics(Y, PROB, 0.0)["fp"] == 6
    top = binary_metrics(Y, PROB, 1.0)
    assert (top["tp"], top["fp"]) == (0, 0)
    assert top["precision"] == 0  # zero_division=0, no warning or nan


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_binary_metrics_with_one_class_only():
    m = binary_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.7, 0.9]), 0.5)
    assert (m["fp"], m["tn"]) == (2, 2)
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["fn_rate"] == 0.0 and m["fp_rate"] == 0.5
    json.dumps(m, allow_nan=False)


# --- ROC / PR points ------------------------------------------------------------------------------------


# --- choose_threshold --------------------------------------------------------------------------------------


def _recall(y, prob, t):
    return ((prob >= t) & (y == 1)).sum() / (y == 1).sum()


@pytest.mark.parametrize(
    "target, expected_t, expected_recall",
    [(0.25, 0.9, 0.25), (0.5, 0.8, 0.5), (0.75, 0.5, 0.75), (0.99, 0.49, 1.0), (1.0, 0.49, 1.0)],
)
def test_choose_threshold_by_hand(target, expected_t, expected_recall):
    # defective probabilities 0.9, 0.8, 0.5, 0.49; the clean 0.6 sits between (it adds no recall)
    t, recall, reached = choose_threshold(Y, PROB, target)
    assert (t, recall, reached) == (expected_t, expected_recall, True)


def test_choose_threshold_is_the_highest_reaching_the_target():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    prob = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(3)  # rounded: ties happen
    for target in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        t, recall, reached = choose_threshold(y, prob, target)
        assert reached
        assert t in set(prob.tolist())
        assert recall == pytest.approx(_recall(y, prob, t)) and recall >= target
        higher = prob[prob > t]
        assert all(_recall(y, prob, h) < target for h in np.unique(higher)), target


def test_choose_threshold_reports_an_unreachable_target():
    # no defective image: no threshold reaches any recall; the lowest threshold (best recall) comes back
    t, recall, reached = choose_threshold(np.zeros(5, int), np.array([0.2, 0.9, 0.4, 0.1, 0.6]), 0.9)
    assert (t, recall, reached) == (0.1, 0.0, False)
    # a target above 1 cannot be reached either; best recall (1.0) at the lowest probability
    t, recall, reached = choose_threshold(Y, PROB, 1.01)
    assert (t, recall, reached) == (0.05, 1.0, False)


# --- recall_per_class --------------------------------------------------------------------------------------


def test_recall_per_class_on_a_tiny_frame():
    df = pd.DataFrame({"classes": ["1", "3", "1 3", "", "3", "2", None, "10"]})
    pred = np.array([1, 0, 1, 1, 1, 0, 1, 1])
    out = recall_per_class(df, pred)
    assert list(out) == ["1", "2", "3", "10"]  # numeric order, clean rows ignored
    assert out["1"] == 1.0  # rows 0, 2
    assert out["2"] == 0.0  # row 5
    assert out["3"] == pytest.approx(2 / 3)  # rows 1, 2, 4
    assert out["10"] == 1.0  # "10" is not class "1"
    json.dumps(out, allow_nan=False)


def test_recall_per_class_without_defects_is_empty():
    assert recall_per_class(pd.DataFrame({"classes": ["", ""]}), np.array([0, 1])) == {}


# --- threshold_sweep ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chosen", [0.37, 0.35, 0.3, 0.5, 0.0, 1.0, 0.123456])
def test_threshold_sweep_marks_exactly_the_chosen_threshold(chosen):
    df = threshold_sweep(Y, PROB, chosen)
    assert list(df.columns) == ["threshold", "false_positives", "false_negatives", "chosen_threshold"]
    marked = df[df.chosen_threshold > 0]
    assert len(marked) == 1
    assert marked.threshold.iloc[0] == chosen
    top = max(df.false_positives.max(), df.false_negatives.max())
    assert marked.chosen_threshold.iloc[0] == top  # the marker spans the plot


def test_threshold_sweep_grid_and_monotone_counts():
    df = threshold_sweep(Y, PROB, 0.373)
    t = df.threshold.to_numpy()
    assert t[0] == 0.0 and t[-1] == 1.0
    assert np.all(np.diff(t) > 0)
    assert len(df) == 102  # 101 steps plus the chosen one, off the grid
    assert len(threshold_sweep(Y, PROB, 0.0)) == 101  # on the grid: no extra row
    fp, fn = df.false_positives.to_numpy(), df.false_negatives.to_numpy()
    assert np.all(np.diff(fp) <= 0)  # a higher threshold flags fewer images
    assert np.all(np.diff(fn) >= 0)  # ... and misses more defects
    assert (fp[0], fn[0]) == (6, 0)
    assert (fp[-1], fn[-1]) == (0, 4)


def test_threshold_sweep_counts_agree_with_binary_metrics():
    df = threshold_sweep(Y, PROB, 0.373)
    rows = df[np.isin(df.threshold.round(3), [0.05, 0.3, 0.373, 0.49, 0.5, 0.6, 0.95])]
    assert len(rows) == 7
    for r in rows.itertuples():
        m = binary_metrics(Y, PROB, r.threshold)
        assert (r.false_positives, r.false_negatives) == (m["fp"], m["fn"]), r.threshold


def test_dice_and_iou_match_hand_computed_values():
    from steeldefect.evaluate.metrics import dice_iou

    predicted = np.zeros((4, 4), bool)
    predicted[0, 0:3] = True  # 3 cells
    true = np.zeros((4, 4), bool)
    true[0, 1:3] = True
    true[1, 1] = True  # 3 cells, 2 shared
    dice, iou = dice_iou(predicted, true)
    assert dice == pytest.approx(2 * 2 / 6)
    assert iou == pytest.approx(2 / 4)
    assert dice_iou(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)
    assert dice_iou(true, ~true) == (0.0, 0.0)


def test_pointing_hit_is_the_maximum_inside_the_mask():
    from steeldefect.evaluate.metrics import pointing_hit

    true = np.zeros((3, 3), bool)
    true[2, 2] = True
    heat = np.zeros((3, 3))
    heat[2, 2] = 0.9
    assert pointing_hit(heat, true)
    heat[0, 0] = 0.95
    assert not pointing_hit(heat, true)


# --- scored_metrics: the defect decision where there is a probability, the types where asked -----------------


def _frame(with_probability: bool) -> pd.DataFrame:
    df = pd.DataFrame({"label": Y, "classes": ["1", "2", "1 2", "2", "", "", "", "", "", ""], "p_a": PROB[::-1]})
    return df.assign(p_b=PROB, probability=PROB) if with_probability else df.assign(p_b=PROB)


def test_scored_metrics_without_a_probability_says_why_the_defect_metrics_do_not_apply():
    p = defaults().evaluate
    df = _frame(with_probability=False)
    m = scored_metrics(p, df, df, (["1", "2"], ["a", "b"]))
    assert m["defect_decision"] == NOT_APPLICABLE and NOT_APPLICABLE["applicable"] is False
    assert "no clean images" in NOT_APPLICABLE["reason"]
    assert not {"accuracy", "roc_auc", "fp", "fn", "threshold", "threshold_choice"} & set(m)  # nothing made up
    assert set(m["classes"]) == {"a", "b"} and m["classes"]["b"]["support"] == 3
    json.dumps(m, allow_nan=False)


def test_scored_metrics_with_probability_and_types_has_both_and_the_defect_part_unchanged():
    p = defaults().evaluate
    df = _frame(with_probability=True)
    both = scored_metrics(p, df, df, (["1", "2"], ["a", "b"]))
    defect_only = scored_metrics(p, df, df)
    assert (
        {k: both[k] for k in defect_only}
        == defect_only
        == {
            **binary_metrics(Y, PROB, 0.5),
            "threshold_choice": {"threshold": 0.5, "policy": "fixed"},
        }
    )
    assert not {"classes", "classes_macro", "type_accuracy"} & set(defect_only)
    assert {"classes", "classes_macro", "type_accuracy", "type_accuracy_images", "class_threshold_choice"} <= set(both)
