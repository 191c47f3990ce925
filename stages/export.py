"""Stage export: models/model.json + models/model.weights.h5 (+ model_meta.json) and the serving SavedModel
models/saved_model/, all checked by reloading."""

import json
import sys
from pathlib import Path

import pandas as pd

from steeldefect.errors import run
from steeldefect.export import export, model_meta
from steeldefect.params import load_params


def main() -> None:
    p = load_params()
    test = pd.read_csv("data/split/test.csv", keep_default_na=False)
    train = pd.read_csv("data/split/train.csv", keep_default_na=False)
    # the train stage's health check travels with the model: `steeldefect predict` warns about a degenerate one
    degenerate = bool(json.loads(Path("metrics/train/metrics.json").read_text()).get("degenerate", False))
    if degenerate:
        print("WARNING: exporting a degenerate model (metrics/train/metrics.json: degenerate: true)", file=sys.stderr)
    diff = export(
        p.train,
        Path("models/trained.weights.h5"),
        Path("models"),
        list(test.path[:4]),
        {**model_meta(p, train), "degenerate": degenerate},
        saved_model=p.export.saved_model,
    )
    saved = "models/saved_model (SavedModel)" if p.export.saved_model else "no SavedModel (export.saved_model: false)"
    print(f"exported models/model.json + models/model.weights.h5 and {saved}; reload check: max difference {diff:.2g}")


if __name__ == "__main__":
    run(main)
