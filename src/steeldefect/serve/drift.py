"""The drift figure: the population stability index (PSI) of served probabilities against the validation split's,
over fixed bins. The export stage writes the reference beside the model (`drift_reference.json`: a histogram per
probability output, `probability` and `p_<name>` per defect type); the service compares its recent images with it.

PSI = sum over bins of (observed share - reference share) * ln(observed share / reference share); the usual
reading: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a shift worth retraining for."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from steeldefect import atomic
from steeldefect.errors import UserError

DRIFT_REFERENCE = "drift_reference.json"
EDGES = tuple(round(i / 10, 1) for i in range(11))  # ten bins of width 0.1 over [0, 1], the last one closed
FLOOR = 1e-4  # the share an empty bin counts as (PSI's logarithm needs shares > 0)


def bins(values) -> np.ndarray:
    """The bin index (0..9) of each probability; NaN (an unreadable image) is left out."""
    values = np.asarray(values, dtype=float).reshape(-1)
    return np.searchsorted(EDGES[1:-1], values[~np.isnan(values)], side="right")


def histogram(values) -> list[int]:
    return np.bincount(bins(values), minlength=len(EDGES) - 1).tolist()


def write_reference(model_dir: Path, outputs: Mapping[str, np.ndarray], source: str) -> Path:
    """models/drift_reference.json: the histogram of each probability output (name: values over the images of
    `source`), written atomically."""
    path = Path(model_dir) / DRIFT_REFERENCE
    counts = {name: histogram(values) for name, values in outputs.items()}
    atomic.write_json(path, {"edges": list(EDGES), "source": source, "counts": counts})
    return path


def read_reference(model_dir: Path) -> dict[str, np.ndarray] | None:
    """The reference share per bin of each output, None when the export wrote no reference (an older export);
    UserError when the file is unreadable or its bins are not these."""
    path = Path(model_dir) / DRIFT_REFERENCE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data["edges"] != list(EDGES):
            raise ValueError(f"its bin edges {data['edges']} are not {list(EDGES)}")
        counts = {name: np.asarray(c, dtype=float) for name, c in data["counts"].items()}
        if any(c.shape != (len(EDGES) - 1,) or c.sum() <= 0 for c in counts.values()):
            raise ValueError("a histogram has the wrong number of bins or no images")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: cannot read the drift reference ({type(e).__name__}: {e}); export the model again "
            "(`dvc repro export`) or delete the file to serve without the drift figure."
        ) from e
    return {name: c / c.sum() for name, c in counts.items()}


def psi(reference: np.ndarray, counts: np.ndarray) -> float:
    """The population stability index of the observed bin `counts` against the `reference` shares (NaN without
    observations)."""
    counts = np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return float("nan")
    observed, expected = np.maximum(counts / counts.sum(), FLOOR), np.maximum(reference, FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))
