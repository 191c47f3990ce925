"""The prepared data: the data folder's path, class names as shown, the seeded stratified split, masks and samples
for figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from steeldefect.data.severstal import rle_decode
from steeldefect.errors import UserError

IMAGE_COLUMNS = ["ImageId", "path", "label", "classes", "n_masks", "height", "width", "md5"]


def resolve_source(source: str, data_dir: Path = Path("data")) -> Path:
    """`synthetic` is data/synthetic; other relative paths are taken from data/ too; absolute stay."""
    return data_dir / source


def class_label(class_id: object, names: dict[str, str]) -> str:
    """How a class is shown: its name, or "class 3" where the name is the ClassId itself (Severstal)."""
    name = names.get(str(class_id), str(class_id))
    return f"class {name}" if name == str(class_id) else name


def split(images: pd.DataFrame, test_size: float, val_size: float, seed: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """Seeded split stratified by label and, where each stratum is big enough, by defect-class combination.

    Returns ({"train", "val", "test"} -> rows of `images`, report). Strata with fewer than 3 images are folded
    into their label's stratum, or, in a set with no clean images (one label), into its most common stratum
    (named in the report)."""
    combo = images.label.astype(str) + ":" + images.classes.fillna("")
    counts = combo.value_counts()
    rare = sorted(counts[counts < 3].index)
    has_clean = bool((images.label == 0).any())
    strata = combo.where(~combo.isin(rare), images.label.astype(str) if has_clean else counts.index[0])
    by = "label and defect classes" if has_clean else "defect classes (no clean images)"
    report = {"stratified_by": by, "folded_strata": rare}
    try:
        rest, test = train_test_split(images, test_size=test_size, stratify=strata, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_size / (1 - test_size), stratify=strata[rest.index], random_state=seed
        )
    except ValueError:
        by = "label only" if has_clean else "nothing (no clean images)"
        report = {"stratified_by": f"{by}: defect-class strata too small", "folded_strata": []}
        try:
            rest, test = train_test_split(images, test_size=test_size, stratify=images.label, random_state=seed)
            train, val = train_test_split(
                rest, test_size=val_size / (1 - test_size), stratify=rest.label, random_state=seed
            )
        except ValueError as e:
            raise UserError(
                f"split: cannot stratify {len(images)} images ({int(images.label.sum())} defective) "
                f"into test {test_size} / val {val_size}: {e}. Use more images or other sizes."
            ) from e
    parts = {"train": train, "val": val, "test": test}
    report["sizes"] = {k: len(v) for k, v in parts.items()}
    report["defective"] = {k: int(v.label.sum()) for k, v in parts.items()}
    return {k: v.sort_values("ImageId").reset_index(drop=True) for k, v in parts.items()}, report


def load_masks(masks: pd.DataFrame, image_id: str, height: int, width: int) -> dict[int, np.ndarray]:
    """{ClassId: bool mask} for one image from the prepared masks table."""
    rows = masks[masks.ImageId == image_id]
    return {int(r.ClassId): rle_decode(r.EncodedPixels, height, width) for r in rows.itertuples(index=False)}


def pick_samples(images: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to n images for a figure: defective ones round-robin over defect-class combinations (about two
    thirds, fewer if there are not enough), then clean ones."""
    shuffled = images.sample(frac=1, random_state=seed)
    clean = shuffled[shuffled.label == 0]
    groups = [g for _, g in shuffled[shuffled.label == 1].groupby("classes", sort=True)]
    picked = [g.iloc[i] for i in range(n) for g in groups if i < len(g)][: n - min(n // 3, len(clean))]
    clean = clean.head(n - len(picked))
    return pd.concat([pd.DataFrame(picked), clean]).head(n)
