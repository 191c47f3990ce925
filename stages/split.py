"""Stage split: seeded, stratified train / val / test lists."""

import pandas as pd

from steeldefect import atomic
from steeldefect.data.dataset import split
from steeldefect.errors import paths, run
from steeldefect.params import load_params


def main() -> None:
    a, p = paths("images", "out", "metrics"), load_params()
    images = pd.read_csv(a.images, keep_default_na=False, dtype={"classes": str})
    parts, report = split(images, p.split.test_size, p.split.val_size, p.seed)
    with atomic.atomic_dir(a.out) as tmp:
        for name, df in parts.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
    atomic.write_json(a.metrics, report)


if __name__ == "__main__":
    run(main)
