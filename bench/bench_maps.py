"""What the defect maps cost `steeldefect predict`: the same images through the command with a mask model,
without and with `--maps` (one overlay PNG per image), at the default params with train.supervision: mask.
The model is untrained (random init): the cost does not depend on the weights.

    python bench/bench_maps.py [--images 100] [--repeat 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from steeldefect.data.synthetic import write_dataset  # noqa: E402
from steeldefect.params import parse_params  # noqa: E402
from steeldefect.serve.cli import predict  # noqa: E402
from steeldefect.serve.export import export, model_meta  # noqa: E402
from steeldefect.train.model import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["train"]["supervision"] = "mask"
    p = parse_params(raw)
    with tempfile.TemporaryDirectory(prefix="bench-maps.") as tmp:
        root = Path(tmp)
        write_dataset(dataclasses.replace(p.synthesize, n_images=args.images), seed=0, out_dir=root / "data")
        images = sorted(str(f) for f in (root / "data" / "train_images").iterdir())
        model, _, _ = build_model(p.train, weights=None)
        model.save_weights(root / "w.weights.h5")
        meta = model_meta(p, pd.DataFrame({"md5": ["x"]}))
        export(p.train, root / "w.weights.h5", root / "models", images[:2], meta, saved_model=False)
        size = "x".join(map(str, p.train.image_size))
        print(f"{len(images)} synthetic 1600x256 JPEGs, mask model at {size}, batch {p.train.batch_size}")
        predict(images[:8], root / "models", root / "warm.csv", progress=False)  # warm-up: graph tracing
        for label, maps in (("without --maps", None), ("with --maps", root / "maps")):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                predict(images, root / "models", root / "out.csv", progress=False, maps_dir=maps)
                times.append(time.perf_counter() - start)
            best = min(times)
            print(f"RESULT {label}: best of {args.repeat} {best:.1f} s = {len(images) / best:.1f} img/s")


if __name__ == "__main__":
    main()
