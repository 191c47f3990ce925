"""Stage export: models/model.json + models/model.weights.h5 (+ model_meta.json), the serving SavedModel
models/saved_model/ and the OpenVINO IR models/openvino/, all checked against the trained model."""

import json
import sys
from pathlib import Path

import pandas as pd

from steeldefect.errors import run
from steeldefect.export import export, model_meta, read_meta
from steeldefect.metrics import choose_threshold
from steeldefect.openvino_engine import IRRequest
from steeldefect.params import load_params


def main() -> None:
    p = load_params()
    test = pd.read_csv("data/split/test.csv", keep_default_na=False)
    train = pd.read_csv("data/split/train.csv", keep_default_na=False)
    # the train stage's health check travels with the model: `steeldefect predict` warns about a degenerate one
    degenerate = bool(json.loads(Path("metrics/train/metrics.json").read_text()).get("degenerate", False))
    if degenerate:
        print("WARNING: exporting a degenerate model (metrics/train/metrics.json: degenerate: true)", file=sys.stderr)
    val = pd.read_csv("data/split/val.csv", keep_default_na=False)
    x, e = p.export, p.evaluate

    def threshold(prob):  # the evaluate stage's: fixed, or chosen on the validation split
        return (
            e.threshold if e.threshold != "auto" else choose_threshold(val.label.to_numpy(), prob, e.target_recall)[0]
        )

    ir = IRRequest(
        precision=x.openvino,
        calibration_paths=list(train.path.sample(min(x.openvino_calibration_images, len(train)), random_state=p.seed)),
        check_paths=list(val.path),
        threshold=threshold,
        max_changed=x.openvino_max_changed,
        tolerance=x.openvino_tolerance,
        batch_size=p.train.batch_size,
    )
    diff = export(
        p.train,
        Path("models/trained.weights.h5"),
        Path("models"),
        list(test.path[:4]),
        {**model_meta(p, train), "degenerate": degenerate},
        saved_model=x.saved_model,
        openvino=ir if x.openvino != "none" else None,
    )
    saved = "models/saved_model (SavedModel)" if x.saved_model else "no SavedModel (export.saved_model: false)"
    print(f"exported models/model.json + models/model.weights.h5 and {saved}; reload check: max difference {diff:.2g}")
    ir = read_meta(Path("models")).get("openvino")
    if ir:
        print(
            f"OpenVINO {ir['precision']} IR models/{ir['path']}: {ir['decisions_changed']} of {ir['images_checked']} "
            f"validation decisions changed, largest probability difference {ir['max_probability_difference']:.2g}"
        )


if __name__ == "__main__":
    run(main)
