"""Stage predict: defect probability of every validation and test image, from the exported model only."""

from pathlib import Path

import pandas as pd

from steeldefect import atomic
from steeldefect.errors import run
from steeldefect.export import load_model
from steeldefect.inference import predict_paths
from steeldefect.params import load_params


def main() -> None:
    p = load_params()
    model = load_model(Path("models"))
    with atomic.atomic_dir(Path("data/predictions")) as tmp:
        for name in ("val", "test"):
            df = pd.read_csv(f"data/split/{name}.csv", keep_default_na=False)
            prob = predict_paths(model, df.path, p.train.batch_size)
            df[["ImageId", "label"]].assign(probability=prob).to_csv(tmp / f"{name}.csv", index=False)


if __name__ == "__main__":
    run(main)
