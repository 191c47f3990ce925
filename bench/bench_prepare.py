"""Benchmark: the prepare step on the real magnetic-tile folder (1,344 images of many sizes).

Baseline, measured side by side in the same process: reading and decoding every image with PIL and nothing
else (the floor for any prepare that checks each image decodes). Prints images/s for both and the ratio.

    .venv/bin/python bench/bench_prepare.py [FOLDER]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PIL import Image

from steeldefect.data.prepare import prepare

FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic-tile"


def decode_only(folder: Path) -> int:
    paths = sorted((folder / "train_images").glob("*.jpg"))
    for path in paths:
        with Image.open(path) as im:
            im.load()
    return len(paths)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER
    if not folder.is_dir():
        sys.exit(f"{folder} not found: pass a Severstal-layout folder")
    decode_only(folder)  # warm the page cache so both runs read from memory
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        n = decode_only(folder)
        t1 = time.perf_counter()
        images, *_ = prepare(folder)
        t2 = time.perf_counter()
        rounds.append((t1 - t0, t2 - t1))
    base, prep = (min(r[i] for r in rounds) for i in (0, 1))
    print(f"{folder}: {len(images)} images (best of 3)")
    print(f"  baseline, PIL decode only: {n / base:8.0f} img/s ({base:.2f} s)")
    print(f"  prepare (CSV, checks, decode, md5, RLE validation): {len(images) / prep:8.0f} img/s ({prep:.2f} s)")
    print(f"  ratio prepare / baseline throughput: {base / prep:.2f}")


if __name__ == "__main__":
    main()
