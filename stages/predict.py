"""Stage predict: the defect probability and, with train.target classes, the probability of each defect type of every
validation and test image, from the exported model only, and the test images' defect maps when the model has them (a
mask-supervised model)."""

import numpy as np
import pandas as pd

from steeldefect import atomic
from steeldefect.errors import paths, run
from steeldefect.params import load_params
from steeldefect.serve.export import load_model, read_meta
from steeldefect.serve.inference import predict_all, probability_columns
from steeldefect.serve.maps import save_maps

TEST_MAPS = "test_maps.npz"  # only for a model with a defect map: what the evaluate stage's localization needs


def main() -> None:
    a, p = paths("models", "split", "out"), load_params()
    model = load_model(a.models)
    meta = read_meta(a.models)  # a mask model takes any size: predict at the trained one; the types' names
    with atomic.atomic_dir(a.out) as tmp:
        for name in ("val", "test"):
            df = pd.read_csv(a.split / f"{name}.csv", keep_default_na=False)
            result = predict_all(model, df.path, p.train.batch_size, meta["image_size"])
            # ImageId, label, probability (when the model has it), p_<name> per defect type (when it has types)
            table = df[["ImageId", "label"]].assign(**probability_columns(result, meta.get("classes", [])))
            table.to_csv(tmp / f"{name}.csv", index=False)
            if name == "test" and result.maps is not None:
                save_maps(tmp / TEST_MAPS, list(df.ImageId), np.stack(result.maps), meta["map_stride"])


if __name__ == "__main__":
    run(main)
