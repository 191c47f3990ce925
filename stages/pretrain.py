"""Stage pretrain: self-supervised pretraining of the backbone (masked-patch reconstruction) on the training split's
images and pretrain.extra_images, labels never read; with pretrain.epochs 0 (off) only a README is written.

The output folder holds backbone.weights.h5 (the whole ResNet50) for train.weights: pretrained. Resumable: a rerun
after a kill continues after the last finished epoch (steeldefect.train.pretrain)."""

import pandas as pd

from steeldefect import atomic
from steeldefect.data.dataset import resolve_source
from steeldefect.errors import paths, run
from steeldefect.params import load_params
from steeldefect.train.sizing import with_image_size


def main() -> None:
    a, p = paths("split", "out", "live"), load_params()
    if not p.pretrain.epochs:
        with atomic.atomic_dir(a.out) as tmp:
            (tmp / "README.txt").write_text("Pretraining is off (pretrain.epochs 0): no backbone weights here.\n")
        with atomic.atomic_dir(a.live) as tmp:  # no dvclive logs of an earlier run left behind
            atomic.write_json(tmp / "metrics.json", {"epochs": 0})
        return
    from steeldefect.train import pretrain  # TensorFlow: only when pretraining runs

    sizes = ["height", "width"] if p.train.image_size == "auto" else []  # for train.image_size auto
    train_df = pd.read_csv(a.split / "train.csv", usecols=["path", *sizes], keep_default_na=False)  # no label read
    p = with_image_size(p, train_df)
    images = pretrain.image_paths(train_df.path, resolve_source(p.pretrain.extra_images))
    with atomic.atomic_dir(a.out) as tmp:
        metrics = pretrain.pretrain(p.pretrain, p.train, p.seed, images, tmp / pretrain.WEIGHTS_FILE, a.live)
        (tmp / "README.txt").write_text(
            f"{pretrain.WEIGHTS_FILE}: ResNet50 weights (include_top=False) pretrained by masked-patch "
            f"reconstruction for {p.pretrain.epochs} epoch(s) on {metrics['images']} unlabeled images (cut "
            f"{p.train.backbone_layer} trained, the rest random). Use them with train.weights: pretrained in "
            "params.yaml (docs/training.md, Self-supervised pretraining).\n"
        )
    print(f"pretrained backbone written to {a.out / pretrain.WEIGHTS_FILE}")


if __name__ == "__main__":
    run(main)
