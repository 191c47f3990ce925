"""Stage export: models/model.json + models/model.weights.h5 (+ model_meta.json), the serving SavedModel
models/saved_model/ and the OpenVINO IR models/openvino/, all checked against the trained model. With train.target
classes the model has one output per defect type (the names of --classes, data/prepared/classes.csv) and the defect
probability only when the training split has clean images."""

import json
import sys

import pandas as pd

from steeldefect.data.types import read_types
from steeldefect.errors import paths, run
from steeldefect.evaluate.metrics import choose_threshold
from steeldefect.params import load_params
from steeldefect.serve.export import export, model_meta
from steeldefect.serve.model_files import read_meta
from steeldefect.serve.openvino_engine import IRRequest
from steeldefect.train.sizing import with_image_size


def main() -> None:
    a, p = paths("split", "weights", "train_metrics", "classes", "out"), load_params()
    train, val, test = (pd.read_csv(a.split / f"{n}.csv", keep_default_na=False) for n in ("train", "val", "test"))
    p = with_image_size(p, train)  # the size the train stage trained at
    # the train stage's health check travels with the model: `steeldefect predict` warns about a degenerate one
    degenerate = bool(json.loads(a.train_metrics.read_text()).get("degenerate", False))
    if degenerate:
        print(f"WARNING: exporting a degenerate model ({a.train_metrics}: degenerate: true)", file=sys.stderr)
    x, e = p.export, p.evaluate
    names = read_types(a.classes)[1] if p.train.target == "classes" else None  # the defect types, in output order

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
        a.weights,
        a.out,
        list(test.path[:4]),
        {**model_meta(p, train, names), "degenerate": degenerate},
        saved_model=x.saved_model,
        openvino=ir if x.openvino != "none" else None,
        drift_paths=list(val.path),  # drift_reference.json: `steeldefect serve`'s drift figure compares with it
    )
    saved = f"{a.out}/saved_model (SavedModel)" if x.saved_model else "no SavedModel (export.saved_model: false)"
    print(f"exported {a.out}/model.json + model.weights.h5 and {saved}; reload check: max difference {diff:.2g}")
    ir = read_meta(a.out).get("openvino")
    if ir:
        on = " (on the defect types, each at 0.5)" if ir.get("decisions_on") == "classes" else ""
        print(
            f"OpenVINO {ir['precision']} IR {a.out}/{ir['path']}: {ir['decisions_changed']} of {ir['images_checked']} "
            f"validation decisions changed{on}, "
            f"largest probability difference {ir['max_probability_difference']:.2g}"
        )


if __name__ == "__main__":
    run(main)
