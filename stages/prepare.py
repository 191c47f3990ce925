"""Stage prepare: one checked row per image, data metrics, and a figure of samples with their masks."""

from steeldefect import atomic
from steeldefect.data.dataset import exploration_tables, load_masks, pick_samples, prepare, resolve_source
from steeldefect.errors import paths, run
from steeldefect.evaluate.plots import Tile, gallery
from steeldefect.params import load_params


def main() -> None:
    a, p = paths("out", "plots", "metrics"), load_params()
    source = resolve_source(p.data.source)
    images, masks, excluded, metrics = prepare(source, p.prepare.on_bad_image)
    with atomic.atomic_dir(a.out) as tmp:
        images.to_csv(tmp / "images.csv", index=False)
        masks.to_csv(tmp / "masks.csv", index=False)
        excluded.to_csv(tmp / "excluded.csv", index=False)
    for name, table in exploration_tables(images, masks).items():
        atomic.write_text(a.plots / "data" / f"{name}.csv", table.to_csv(index=False))
    atomic.write_json(a.metrics, metrics)
    tiles = [
        Tile(
            r.path,
            f"{r.ImageId}: " + (f"classes {r.classes}" if r.label else "clean"),
            load_masks(masks, r.ImageId, r.height, r.width),
        )
        for r in pick_samples(images, p.prepare.sample_images, p.seed).itertuples()
    ]
    gallery(tiles, a.plots / "samples.png", f"Samples from {source} (mask colour = defect class)")


if __name__ == "__main__":
    run(main)
