"""Stage baseline: the classical texture classifier the deep model must beat, on the same split.

It writes the baseline's probabilities; `evaluate` applies the same threshold policy to both models."""

import pandas as pd

from steeldefect.errors import paths, run
from steeldefect.evaluate.baseline import run_baseline, save
from steeldefect.params import load_params


def main() -> None:
    a, p = paths("split", "out"), load_params()
    train, val, test = (pd.read_csv(a.split / f"{n}.csv", keep_default_na=False) for n in ("train", "val", "test"))
    result = run_baseline(train, val, test, p.baseline, p.seed, p.evaluate)
    save(result, a.out)
    auc = result.metrics["roc_auc"]
    print(
        f"baseline: features of {len(train) + len(val) + len(test)} images in {result.feature_seconds:.1f} s, "
        f"fit in {result.fit_seconds:.1f} s; test ROC AUC {'n/a' if auc is None else f'{auc:.3f}'}"
    )


if __name__ == "__main__":
    run(main)
