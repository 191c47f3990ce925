"""Stage train: fit the model on the train split (image or mask supervision), keep the best val_loss weights, flag
a degenerate run.

Strategy and caches are runtime settings from the environment (steeldefect.train.runtime), not params. With
train.weights: pretrained the backbone starts from the pretrain stage's weights (in --pretrained)."""

import dataclasses

import pandas as pd

from steeldefect.data.types import read_types
from steeldefect.errors import paths, run
from steeldefect.params import load_params
from steeldefect.train import segtrain
from steeldefect.train.pretrain import pretrained_weights
from steeldefect.train.runtime import describe, load_runtime
from steeldefect.train.sizing import with_image_size
from steeldefect.train.training import train


def main() -> None:
    a, p = paths("split", "masks", "classes", "weights", "live", "pretrained"), load_params()
    train_df, val_df = (pd.read_csv(a.split / f"{name}.csv", keep_default_na=False) for name in ("train", "val"))
    p = with_image_size(p, train_df)
    t = p.train
    class_ids = tuple(read_types(a.classes)[0]) if t.target == "classes" else ()
    if t.weights == "pretrained":
        t = dataclasses.replace(t, weights=pretrained_weights(a.pretrained))
    runtime = load_runtime()
    if p.train.supervision == "mask":
        masks = pd.read_csv(a.masks, keep_default_na=False)
        segtrain.check(runtime, train_df, masks)  # before the settings are printed as in effect
        print(describe(runtime, t))
        segtrain.train(t, p.seed, train_df, val_df, masks, a.weights, a.live, runtime, class_ids=class_ids)
    else:
        print(describe(runtime, t))
        train(t, p.seed, train_df, val_df, a.weights, a.live, runtime, class_ids=class_ids)


if __name__ == "__main__":
    run(main)
