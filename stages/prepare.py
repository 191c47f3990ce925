"""Stage prepare: read the data folder in its layout, one checked row per image, data metrics, and a figure of
samples with their masks."""

import logging

import pandas as pd

from steeldefect import atomic
from steeldefect.data.dataset import class_label, load_masks, pick_samples, resolve_source
from steeldefect.data.prepare import exploration_tables, prepare
from steeldefect.errors import paths, run
from steeldefect.evaluate.plots import Tile, gallery
from steeldefect.params import load_params

log = logging.getLogger("prepare")


def main() -> None:
    a, p = paths("out", "plots", "metrics"), load_params()
    source = resolve_source(p.data.source)
    images, masks, excluded, metrics = prepare(source, p.prepare.on_bad_image, p.data)
    names = metrics["class_names"]
    how = "detected" if p.data.format == "auto" else "data.format"
    log.info(
        "%s: layout %s (%s), %d images (%d defective, %d clean), defect classes: %s%s",
        source,
        metrics["layout"],
        how,
        metrics["images"],
        metrics["defective"],
        metrics["clean"],
        ", ".join(f"{k} {v}" for k, v in names.items()) or "none",
        f"; {metrics['ignored_files']} files neither images nor masks, ignored" if metrics["ignored_files"] else "",
    )
    if not metrics["has_clean_images"]:
        log.warning("%s", metrics["note"])
    for r in excluded.itertuples():
        log.info("skipped %s: %s", r.ImageId, r.problem)
    classes = pd.DataFrame({"ClassId": [int(k) for k in names], "name": list(names.values())})
    with atomic.atomic_dir(a.out) as tmp:
        images.to_csv(tmp / "images.csv", index=False)
        masks.to_csv(tmp / "masks.csv", index=False)
        excluded.to_csv(tmp / "excluded.csv", index=False)
        classes.to_csv(tmp / "classes.csv", index=False)
    for name, table in exploration_tables(images, masks, names).items():
        atomic.write_text(a.plots / "data" / f"{name}.csv", table.to_csv(index=False))
    atomic.write_json(a.metrics, metrics)
    tiles = [
        Tile(
            r.path,
            f"{r.ImageId}: " + (", ".join(class_label(c, names) for c in r.classes.split()) if r.label else "clean"),
            load_masks(masks, r.ImageId, r.height, r.width),
        )
        for r in pick_samples(images, p.prepare.sample_images, p.seed).itertuples()
    ]
    gallery(tiles, a.plots / "samples.png", f"Samples from {source} (mask colour = defect class)")


if __name__ == "__main__":
    run(main)
