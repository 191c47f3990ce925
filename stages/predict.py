"""Stage predict: the defect probability and, with train.target classes, the probability of each defect type of every
validation and test image, from the exported model only, and their defect maps when the model has them (a
mask-supervised model: the test maps for the localization metrics, the validation maps for map thresholds chosen on
them). It predicts through the same `Predictor` as `steeldefect predict` (Keras engine, no thresholds: those are
the evaluate stage's, downstream)."""

import numpy as np
import pandas as pd

from steeldefect import atomic
from steeldefect.errors import UserError, paths, run
from steeldefect.params import load_params
from steeldefect.serve.maps import save_maps
from steeldefect.serve.predictor import Predictor

# only for a model with a defect map: what the evaluate stage's localization needs (and, for map_threshold or
# min_area auto, the validation maps)
TEST_MAPS, VAL_MAPS = "test_maps.npz", "val_maps.npz"


def main() -> None:
    a, p = paths("models", "split", "out"), load_params()
    # a mask model takes any size: it predicts at the trained one (model_meta.json), as the command does
    predictor = Predictor(a.models, "keras", batch_size=p.train.batch_size, decide=False)
    with atomic.atomic_dir(a.out) as tmp:
        for name in ("val", "test"):
            df = pd.read_csv(a.split / f"{name}.csv", keep_default_na=False)
            result = predictor.predict(df.path)
            if result.failed:
                bad = result.table.iloc[result.failed]
                listed = "; ".join(f"{r.path}: {r.error}" for r in bad[:5].itertuples())
                more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
                raise UserError(f"{len(bad)} of {len(df)} images cannot be predicted: {listed}{more}.")
            # ImageId, label, probability (when the model has it), p_<name> per defect type (when it has types)
            probabilities = result.table.drop(columns=["path", "engine", "precision", "error"])
            table = df[["ImageId", "label"]].assign(**probabilities)
            table.to_csv(tmp / f"{name}.csv", index=False)
            if result.maps is not None:
                type_maps = None if result.type_maps is None else np.stack(result.type_maps)
                stride = predictor.meta["map_stride"]
                out = tmp / (TEST_MAPS if name == "test" else VAL_MAPS)
                save_maps(out, list(df.ImageId), np.stack(result.maps), stride, type_maps)


if __name__ == "__main__":
    run(main)
