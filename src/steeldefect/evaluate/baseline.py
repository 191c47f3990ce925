"""The classical baseline the deep model must beat: texture features + gradient boosting.

Each image is read, made grey and resized to `image_size`, then described by
- uniform LBP histograms at two scales (8 points radius 1, 16 points radius 2): 10 + 18 values;
- HOG with 8 orientations in 16x16-pixel cells, 1x1 blocks: 8 values per cell (512 at 128x128);
- 5 intensity statistics: mean, standard deviation, 1st, 50th and 99th percentile.
Images are streamed one at a time: only the feature vectors are kept, computed once per image. The classifier is
scikit-learn's HistGradientBoostingClassifier, seeded, trained on the train split: one for defect / clean where the
train split has both, and with train.target classes one per defect type, one-vs-rest ("carries type k", so an image
may carry several types); a type the train split never or always carries gets its training share (0 or 1) as
probability. The thresholds are chosen on the validation split with the same policies as `evaluate`
(steeldefect.evaluate.metrics.scored_metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from skimage.feature import hog, local_binary_pattern
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from steeldefect import atomic
from steeldefect.data.types import columns, multi_hot
from steeldefect.errors import UserError
from steeldefect.evaluate.metrics import scored_metrics
from steeldefect.evaluate.types import Types
from steeldefect.params import BaselineParams, EvaluateParams

log = logging.getLogger(__name__)

LBP_SCALES = ((8, 1), (16, 2))  # (points, radius); "uniform" LBP has points + 2 distinct codes
HOG_ORIENTATIONS, HOG_CELL = 8, 16
PERCENTILES = (1, 50, 99)


def grey_image(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """The image as uint8 grey, resized (antialiased bilinear) to image_size (height, width)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L").resize(image_size[::-1], Image.Resampling.BILINEAR))
    except OSError as e:
        raise UserError(f"{path}: cannot read the image for the baseline ({e}).") from e


def image_features(grey: np.ndarray) -> np.ndarray:
    """The feature vector (float32) of one uint8 grey image."""
    parts = []
    for points, radius in LBP_SCALES:
        codes = local_binary_pattern(grey, points, radius, method="uniform")
        parts.append(np.bincount(codes.astype(int).ravel(), minlength=points + 2) / codes.size)
    parts.append(hog(grey, orientations=HOG_ORIENTATIONS, pixels_per_cell=(HOG_CELL, HOG_CELL), cells_per_block=(1, 1)))
    values = grey.astype(np.float64) / 255
    parts.append([values.mean(), values.std(), *np.percentile(values, PERCENTILES)])
    return np.concatenate(parts).astype(np.float32)


def features(paths: Iterable[str | Path], image_size: tuple[int, int]) -> np.ndarray:
    """One feature row per image, read one image at a time (no decoded image is kept), into one preallocated
    float64 array: what the booster fits on, so it makes no copy."""
    paths = list(paths)
    out = np.empty((len(paths), len(image_features(np.zeros(image_size, np.uint8)))))
    for i, path in enumerate(paths):
        out[i] = image_features(grey_image(Path(path), image_size))
    return out


def classifier(p: BaselineParams, seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_iter=p.max_iter, learning_rate=p.learning_rate, early_stopping=False, random_state=seed
    )


def fit(p: BaselineParams, seed: int, x: np.ndarray, y: np.ndarray) -> HistGradientBoostingClassifier | float:
    """The fitted classifier of y, or y's share when y holds one class only (scikit-learn's booster would then fit,
    but its predict_proba has no column for the other class)."""
    return classifier(p, seed).fit(x, y) if len(set(y)) == 2 else float(np.mean(y))


def probability(model: HistGradientBoostingClassifier | float, x: np.ndarray) -> np.ndarray:
    """P(y = 1) for each row of x: the classifier's, or the share `fit` returned."""
    if isinstance(model, float):
        return np.full(len(x), model)
    return model.predict_proba(x)[:, 1] if len(x) else np.empty(0)


@dataclass
class BaselineResult:
    val: pd.DataFrame  # ImageId, label, then probability and / or p_<name> per type (as the predictions)
    test: pd.DataFrame  # the same columns
    metrics: dict  # as evaluate's: scored_metrics at the thresholds chosen on val
    feature_seconds: float  # features of all three splits (and scoring val and test)
    fit_seconds: float


def run_baseline(
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    p: BaselineParams,
    seed: int,
    threshold: EvaluateParams,
    types: Types | None = None,
) -> BaselineResult:
    """Train on `train`, choose the thresholds on `val` (policies of `threshold`, as evaluate does), score `test`.
    Each DataFrame needs ImageId, path (readable from the working folder) and label (0 clean, 1 defect); with
    `types` (train.target classes) also classes, for one classifier per type (p_<name> columns). The defect /
    clean classifier (probability column) needs clean and defective training images: without clean ones it is
    left out (with types) or refused (without)."""
    targets = {}
    if train.label.nunique() == 2:
        targets["probability"] = train.label.to_numpy()
    elif types is None:
        raise UserError(
            f"baseline: the train split has {len(train)} images, all labelled {sorted(set(train.label))}; "
            "the classifier needs clean and defective images (or, for a set with no clean images, train.target: "
            "classes)."
        )
    else:
        log.info("baseline: the train split has no clean images: no defect / clean classifier, only one per type")
    if types:
        targets |= dict(zip(columns(types[1]), multi_hot(train.classes, types[0]).T))
    clock = time.perf_counter
    start = clock()
    x = features(train.path, p.image_size)
    fit_start = clock()
    # one OpenMP thread: on a busy machine the booster's threads wait for each other (a fit of seconds took
    # minutes with 2 threads at load 12); one thread costs at most 2x on an idle one
    with threadpool_limits(1, "openmp"):
        models = {column: fit(p, seed, x, y) for column, y in targets.items()}
        fit_end = clock()
        del x  # one split's features in memory at a time
        scored = {}
        for name, df in (("val", val), ("test", test)):
            x = features(df.path, p.image_size)
            scored[name] = df.assign(**{column: probability(m, x) for column, m in models.items()})
    seconds = (fit_start - start + clock() - fit_end, fit_end - fit_start)
    metrics = scored_metrics(threshold, scored["val"], scored["test"], types)
    keep = ["ImageId", "label", *models]
    return BaselineResult(scored["val"][keep], scored["test"][keep], metrics, *seconds)


def save(result: BaselineResult, predictions_dir: Path) -> None:
    """The baseline's validation and test probabilities: {val,test}.csv with ImageId, label, then probability
    and / or p_<name> per type, as the predictions."""
    with atomic.atomic_dir(predictions_dir) as tmp:
        result.val.to_csv(tmp / "val.csv", index=False)
        result.test.to_csv(tmp / "test.csv", index=False)
