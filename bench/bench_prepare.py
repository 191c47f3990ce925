"""Benchmark: the prepare step on the real magnetic-tile images, in the Severstal layout and in every other layout.

The 1,344 images are rearranged (original bytes) as published (class folders with x.jpg + x.png masks), MVTec AD,
KolektorSDD2, class folders and COCO (polygons, compressed RLE) by `bench/make_layouts.py`, into a temporary
folder unless --layouts names one it made. Measured side by side in one process, rounds interleaved, best of 3:
reading and decoding every image with PIL and nothing else (the floor for any prepare that checks each image
decodes), then prepare on each layout. Prints images/s, and each layout's time as a ratio of the Severstal
layout's (goal: at most 1.3), with the load average before and after.

    .venv/bin/python bench/bench_prepare.py [--source DIR] [--layouts DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from steeldefect.data.prepare import prepare
from steeldefect.params import load_params

HERE = Path(__file__).resolve().parent
P = load_params(HERE.parent / "params.yaml")  # the repository's params
SOURCE = HERE.parents[1] / "shared" / "data" / "magnetic-tile"
LAYOUTS = ["published", "mvtec", "kolektor2", "folders", "coco_polygons", "coco_rle"]


def decode_only(folder: Path) -> int:
    paths = sorted((folder / "train_images").glob("*.jpg"))
    for path in paths:
        with Image.open(path) as im:
            im.load()
    return len(paths)


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="a Severstal-layout folder (magnetic-tile)")
    parser.add_argument("--layouts", type=Path, help="a folder written by bench/make_layouts.py from --source")
    args = parser.parse_args()
    if not (args.source / "train.csv").is_file():
        sys.exit(f"{args.source}: no train.csv; pass a Severstal-layout folder with --source")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="steeldefect-layouts.") as tmp:
        layouts = args.layouts
        if layouts is None:
            layouts = Path(tmp) / "layouts"
            subprocess.run(
                [sys.executable, str(HERE / "make_layouts.py"), str(layouts), "--source", str(args.source)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        folders = {"severstal": args.source, **{name: layouts / name for name in LAYOUTS}}
        for folder in folders.values():  # warm the page cache so every run reads from memory
            prepare(folder, "fail", P.data)
        best: dict[str, float] = {}
        counts: dict[str, tuple[int, str]] = {}
        for _ in range(3):
            seconds, n = timed(decode_only, args.source)
            best["decode"] = min(best.get("decode", seconds), seconds)
            counts["decode"] = (n, "")
            for name, folder in folders.items():
                seconds, (images, _, _, metrics) = timed(prepare, folder)
                best[name] = min(best.get(name, seconds), seconds)
                counts[name] = (len(images), metrics["layout"])
    print(f"{args.source}: best of 3, rounds interleaved")
    print(
        f"  {'PIL decode only (floor)':34s} {counts['decode'][0] / best['decode']:7.0f} img/s  {best['decode']:.2f} s"
    )
    for name in folders:
        n, layout = counts[name]
        print(
            f"  prepare {name:16s} ({layout:9s}) {n / best[name]:7.0f} img/s  {best[name]:.2f} s  "
            f"x{best[name] / best['severstal']:.2f} of severstal"
        )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
