"""Stage split: seeded, stratified train / val / test lists."""

from pathlib import Path

import pandas as pd

from steeldefect import atomic
from steeldefect.dataset import split
from steeldefect.errors import run
from steeldefect.params import load_params


def main() -> None:
    p = load_params()
    images = pd.read_csv("data/prepared/images.csv", keep_default_na=False, dtype={"classes": str})
    parts, report = split(images, p.split.test_size, p.split.val_size, p.seed)
    with atomic.atomic_dir(Path("data/split")) as tmp:
        for name, df in parts.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
    atomic.write_json(Path("metrics/split.json"), report)


if __name__ == "__main__":
    run(main)
