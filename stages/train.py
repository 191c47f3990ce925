"""Stage train: fit ResNet50 + head on the train split, keep the best val_loss weights, flag a degenerate run.

Strategy and caches are runtime settings from the environment (steeldefect.runtime), not params."""

from pathlib import Path

import pandas as pd

from steeldefect.errors import run
from steeldefect.params import load_params
from steeldefect.runtime import load_runtime
from steeldefect.training import train


def main() -> None:
    p = load_params()
    train_df, val_df = (pd.read_csv(f"data/split/{name}.csv", keep_default_na=False) for name in ("train", "val"))
    runtime = load_runtime()
    print(
        f"runtime settings (environment, not params): strategy {runtime.strategy}, "
        f"feature cache {runtime.feature_cache or 'off'}, image cache {runtime.image_cache or 'off'}"
    )
    train(p.train, p.seed, train_df, val_df, Path("models/trained.weights.h5"), Path("metrics/train"), runtime)


if __name__ == "__main__":
    run(main)
