"""Stage baseline: the classical texture classifier the deep model must beat, on the same split; with
train.target classes also one classifier per defect type (the types of --classes).

It writes the baseline's probabilities; `evaluate` applies the same threshold policies to both models."""

import pandas as pd

from steeldefect.data.types import read_types
from steeldefect.errors import paths, run
from steeldefect.evaluate.baseline import run_baseline, save
from steeldefect.evaluate.types import summary
from steeldefect.params import load_params


def main() -> None:
    a, p = paths("split", "classes", "out"), load_params()
    read = lambda n: pd.read_csv(a.split / f"{n}.csv", keep_default_na=False, dtype={"classes": str})  # noqa: E731
    train, val, test = read("train"), read("val"), read("test")
    types = read_types(a.classes) if p.train.target == "classes" else None
    result = run_baseline(train, val, test, p.baseline, p.seed, p.evaluate, types)
    save(result, a.out)
    auc = result.metrics.get("roc_auc")
    print(
        f"baseline: features of {len(train) + len(val) + len(test)} images in {result.feature_seconds:.1f} s, "
        f"fit in {result.fit_seconds:.1f} s; test ROC AUC {'n/a' if auc is None else f'{auc:.3f}'}"
    )
    if types:
        print(f"baseline types: {summary(result.metrics)}")


if __name__ == "__main__":
    run(main)
