"""Per-type metrics (steeldefect.evaluate.types) on fixed predictions, against scikit-learn: keys, values, thresholds
per type (a number, a map, auto = best validation F1), type accuracy, and the per-type comparison with the baseline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from steeldefect.errors import UserError
from steeldefect.evaluate.evaluation import compare_with_baseline
from steeldefect.evaluate.types import NO_POSITIVES, best_f1_threshold, choose_thresholds, type_metrics

# ClassIds not 1..K and names not the ids: a mix-up of the two fails
TYPES = (["1", "2", "5", "7"], ["scratch", "pit", "patch", "crack"])
KEYS = {"roc_auc", "average_precision", "precision", "recall", "f1", "threshold", "support"}

# 10 test images: rows 0-3, 7, 8 carry one type, row 4 two (scratch + pit), rows 5, 6, 9 are clean; no crack.
TEST = pd.DataFrame(
    {
        "classes": ["1", "1", "2", "2", "1 2", "", "", "5", "1", ""],
        "p_scratch": [0.9, 0.4, 0.3, 0.7, 0.2, 0.1, 0.6, 0.2, 0.8, 0.2],
        "p_pit": [0.2, 0.6, 0.8, 0.5, 0.3, 0.1, 0.2, 0.1, 0.3, 0.7],
        "p_patch": [0.1, 0.1, 0.2, 0.1, 0.9, 0.1, 0.3, 0.8, 0.6, 0.4],
        "p_crack": [0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.1, 0.2, 0.1, 0.4],  # below 0.5 everywhere: never predicted
    }
)
TRUTH = {
    "scratch": [1, 1, 0, 0, 1, 0, 0, 0, 1, 0],
    "pit": [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
    "patch": [0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    "crack": [0] * 10,
}


def test_per_type_keys_and_values_match_scikit_learn():
    m = type_metrics(0.5, TYPES, TEST, TEST)
    assert list(m["classes"]) == TYPES[1]
    for name in ("scratch", "pit", "patch"):
        got, y, prob = m["classes"][name], np.array(TRUTH[name]), TEST[f"p_{name}"].to_numpy()
        assert set(got) == KEYS
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
        assert got["average_precision"] == pytest.approx(skm.average_precision_score(y, prob))
        assert got["precision"] == pytest.approx(skm.precision_score(y, prob >= 0.5))
        assert got["recall"] == pytest.approx(skm.recall_score(y, prob >= 0.5))
        assert got["f1"] == pytest.approx(skm.f1_score(y, prob >= 0.5))
        assert got["threshold"] == 0.5 and got["support"] == y.sum()
    # by hand, pit at 0.5: predicted rows 1, 2, 3, 9 -> TP 2 (2, 3), FP 2, FN 1 (row 4)
    assert (m["classes"]["pit"]["precision"], m["classes"]["pit"]["recall"]) == (0.5, pytest.approx(2 / 3))
    assert [m["classes"][n]["support"] for n in TYPES[1]] == [4, 3, 1, 0]
    json.dumps(m, allow_nan=False)


def test_undefined_metrics_are_none_never_made_up():
    crack = type_metrics(0.5, TYPES, TEST, TEST)["classes"]["crack"]  # no positive, nothing predicted
    assert crack == {k: None for k in KEYS - {"threshold", "support"}} | {"threshold": 0.5, "support": 0}
    flagged = type_metrics(0.3, TYPES, TEST, TEST)["classes"]["crack"]  # rows 3 and 9 flagged, wrongly
    assert flagged["precision"] == 0 and flagged["f1"] == 0 and flagged["recall"] is None


def test_macro_means_over_the_types_where_defined():
    m = type_metrics(0.5, TYPES, TEST, TEST)
    defined = [m["classes"][n] for n in ("scratch", "pit", "patch")]  # crack: one class only
    assert m["classes_macro"] == {
        "roc_auc": pytest.approx(np.mean([d["roc_auc"] for d in defined])),
        "average_precision": pytest.approx(np.mean([d["average_precision"] for d in defined])),
        "types": 4,
        "types_counted": 3,
    }


def test_type_accuracy_counts_only_images_with_exactly_one_type():
    m = type_metrics(0.5, TYPES, TEST, TEST)
    # single-type rows 0, 1, 2, 3, 7, 8; their top types scratch, pit, pit, scratch, patch, scratch: 4 right.
    # Row 4 (two types, top patch) and the clean rows do not count: over all defects it would be 4/7.
    assert m["type_accuracy_images"] == 6
    assert m["type_accuracy"] == pytest.approx(4 / 6)
    clean_only = TEST.assign(classes="")
    assert type_metrics(0.5, TYPES, clean_only, clean_only)["type_accuracy"] is None


def test_missing_probability_columns_are_refused():
    with pytest.raises(UserError, match="no column p_crack"):
        type_metrics(0.5, TYPES, TEST, TEST.drop(columns="p_crack"))


# --- thresholds per type -----------------------------------------------------------------------------------


def _brute_force(y: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    scores = [(skm.f1_score(y, prob >= t), t) for t in np.unique(prob)]
    best = max(f for f, _ in scores)
    return max(t for f, t in scores if f == pytest.approx(best)), best


def test_best_f1_threshold_is_scikit_learns_best_and_the_highest_on_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = (rng.random(60) < 0.3).astype(int)
        y[0] = 1
        prob = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1).round(2)  # rounded: tied probabilities happen
        t, f1 = best_f1_threshold(y, prob)
        assert (t, f1) == pytest.approx(_brute_force(y, prob))
    # at 0.9: TP 1, FN 1 -> F1 2/3; at 0.3: TP 2, FP 2 -> F1 4/6, a tie: the highest threshold wins
    assert best_f1_threshold(np.array([1, 0, 0, 1]), np.array([0.9, 0.6, 0.5, 0.3])) == (0.9, pytest.approx(2 / 3))


def test_auto_thresholds_per_type_on_validation():
    val = TEST.assign(classes=["1", "1", "2", "2", "1 2", "", "", "", "1", ""])  # no patch on validation
    m = type_metrics("auto", TYPES, val, TEST)
    choice = m["class_threshold_choice"]
    assert choice["policy"] == "auto" and "best F1" in choice["rule"] and "ties: the highest" in choice["rule"]
    for name in ("scratch", "pit"):
        y = np.array([c.split().count(TYPES[0][TYPES[1].index(name)]) for c in val.classes])
        t, f1 = _brute_force(y, val[f"p_{name}"].to_numpy())
        assert m["classes"][name]["threshold"] == t
        assert choice["types"][name] == {"policy": "best_f1", "val_f1": pytest.approx(f1), "val_positives": y.sum()}
    for name in ("patch", "crack"):  # no validation positives: 0.5, and the policy says so
        assert m["classes"][name]["threshold"] == 0.5
        assert choice["types"][name] == {"policy": NO_POSITIVES, "val_f1": None, "val_positives": 0}


def test_fixed_and_map_thresholds():
    y, prob = np.zeros((1, 4)), np.zeros((1, 4))
    assert choose_thresholds(0.3, TYPES[1], y, prob) == (dict.fromkeys(TYPES[1], 0.3), {"policy": "fixed"})
    given = {"scratch": 0.2, "pit": 0.7, "patch": 0.5, "crack": 0.9}
    assert choose_thresholds(given, TYPES[1], y, prob) == (given, {"policy": "map"})
    m = type_metrics(given, TYPES, TEST, TEST)
    assert {n: c["threshold"] for n, c in m["classes"].items()} == given
    assert m["classes"]["pit"]["recall"] == pytest.approx(1 / 3)  # only row 2 (0.8) reaches 0.7


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"scratch": 0.2, "pit": 0.7, "patch": 0.5, "crack": 0.9, "dent": 0.5}, "evaluate.class_threshold.dent"),
        ({"scratch": 0.2, "pit": 0.7, "crack": 0.9}, "no threshold for type patch"),
    ],
)
def test_bad_maps_are_refused_naming_the_key_and_the_types(bad, key):
    with pytest.raises(UserError) as e:
        choose_thresholds(bad, TYPES[1], np.zeros((1, 4)), np.zeros((1, 4)))
    assert key in str(e.value) and "scratch, pit, patch, crack" in str(e.value)


# --- vs_baseline per type ----------------------------------------------------------------------------------


def test_vs_baseline_per_type_is_deep_minus_baseline():
    deep = type_metrics(0.5, TYPES, TEST, TEST)
    shuffled = TEST.assign(p_scratch=TEST.p_scratch[::-1].to_numpy())
    base = type_metrics(0.5, TYPES, shuffled, shuffled)
    diff = compare_with_baseline({**deep, "defect_decision": {"applicable": False}}, base)
    assert set(diff) == {"classes", "classes_macro", "type_accuracy"}  # no defect metrics to compare
    assert diff["classes"]["scratch"]["roc_auc"] == pytest.approx(
        deep["classes"]["scratch"]["roc_auc"] - base["classes"]["scratch"]["roc_auc"], abs=1e-6
    )
    assert diff["classes"]["pit"] == {"roc_auc": 0, "average_precision": 0}
    assert diff["classes"]["crack"] == {"roc_auc": None, "average_precision": None}
    assert diff["classes_macro"]["roc_auc"] == pytest.approx(
        deep["classes_macro"]["roc_auc"] - base["classes_macro"]["roc_auc"], abs=1e-6
    )
    assert diff["type_accuracy"] == pytest.approx(deep["type_accuracy"] - base["type_accuracy"], abs=1e-6)
