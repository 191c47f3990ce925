"""Regenerate the pictures of README.md and docs/ from a real run's outputs: nothing in docs/img/ is drawn by hand.

    python docs/make_pictures.py          # after `dvc repro` (or `dvc pull`), from the repository root

Reads what the pipeline wrote and writes small PNGs (palette, at most 250 KB each) to docs/img/:

- roc.png: ROC of the deep model and of the texture baseline on the same test images (plots/roc.json,
  plots/roc_baseline.json: the curves of `dvc plots show`), AUC from metrics/evaluate.json and
  metrics/baseline.json, each model's operating point at the threshold in use;
- missed_defects.png: the evaluate stage's gallery of missed defects (plots/gallery_false_negatives.png);
- samples.png: the prepare stage's training samples with their masks (plots/samples.png);
- defect_map.png, only after a run of a mask-supervised model (`train.supervision: mask`, which leaves
  data/predictions/test_maps.npz): the surest defective test image with its defect map overlaid, as
  `steeldefect predict --maps` draws it (steeldefect.serve.maps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

MAX_BYTES = 250_000


def save_small(image: Image.Image, out: Path, width: int = 800, colours: int = 256) -> None:
    """`image` as a palette PNG of `colours` colours, at most `width` pixels wide, narrower until under MAX_BYTES
    (steel texture is noise to PNG's compression)."""
    image = image.convert("RGB")
    while True:
        small = image if image.width <= width else image.resize((width, round(image.height * width / image.width)))
        small.quantize(colours, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE).save(out, optimize=True)
        if out.stat().st_size <= MAX_BYTES:
            break
        width = int(width * 0.9)
    print(f"{out}: {small.width}x{small.height}, {colours} colours, {out.stat().st_size / 1000:.0f} KB")


def operating_point(metrics: dict) -> tuple[float, float]:
    """(false positive rate, true positive rate) at the threshold the evaluate stage applied."""
    return metrics["fp"] / (metrics["fp"] + metrics["tn"]), metrics["tp"] / (metrics["tp"] + metrics["fn"])


def roc_picture(plots: Path, metrics: Path, out: Path) -> None:
    deep, base = (json.loads((metrics / name).read_text()) for name in ("evaluate.json", "baseline.json"))
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    for file, m, label, colour in (
        ("roc.json", deep, "ResNet50 (the pipeline's model)", "tab:blue"),
        ("roc_baseline.json", base, "texture baseline (LBP + HOG, boosting)", "tab:orange"),
    ):
        curve = pd.DataFrame(json.loads((plots / file).read_text())["roc"])
        ax.step(curve.fpr, curve.tpr, where="post", color=colour, lw=2, label=f"{label}: AUC {m['roc_auc']:.3f}")
        ax.plot(*operating_point(m), "o", color=colour, ms=7)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="chance")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="false positive rate (clean images flagged)",
        ylabel="true positive rate (defects found)",
        title=f"ROC on the {deep['images']} test images (dot: threshold {deep['threshold']:g})",
    )
    ax.title.set_fontsize(10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba()))
    plt.close(fig)
    save_small(image, out)


def defect_map_picture(root: Path, out: Path) -> bool:
    """The surest defective test image with its map overlaid; False when the run has no maps (image model)."""
    maps_file = root / "data/predictions/test_maps.npz"
    if not maps_file.is_file():
        return False
    from steeldefect.serve.maps import load_maps, overlay_image

    maps, _ = load_maps(maps_file)
    predictions = pd.read_csv(root / "data/predictions/test.csv")
    paths = pd.read_csv(root / "data/split/test.csv").set_index("ImageId")["path"]
    defective = predictions[(predictions.label == 1) & predictions.ImageId.isin(list(maps))]
    best = defective.sort_values("probability", ascending=False).iloc[0]
    threshold_file = root / "models/threshold.json"
    threshold = json.loads(threshold_file.read_text()).get("map_threshold", 0.5) if threshold_file.is_file() else 0.5
    with Image.open(root / paths[best.ImageId]) as im:
        pixels = np.asarray(im.convert("RGB"))
    save_small(Image.fromarray(overlay_image(pixels, maps[best.ImageId], threshold)), out)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="the project whose outputs to read")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="where to write the PNGs")
    args = parser.parse_args()
    root, out = args.root, args.out
    out.mkdir(parents=True, exist_ok=True)
    roc_picture(root / "plots", root / "metrics", out / "roc.png")
    with Image.open(root / "plots/gallery_false_negatives.png") as im:
        save_small(im, out / "missed_defects.png")
    with Image.open(root / "plots/samples.png") as im:
        save_small(im, out / "samples.png")
    if not defect_map_picture(root, out / "defect_map.png"):
        print("no defect maps in this run (an image-supervised model): defect_map.png not drawn")


if __name__ == "__main__":
    main()
