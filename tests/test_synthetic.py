"""Tests for steeldefect.data.synthetic: deterministic images, exact masks, and defects that are really there."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steeldefect.data.severstal import rle_decode
from steeldefect.data.synthetic import HEIGHT, WIDTH, make_image, write_dataset

from helpers import defaults

SEED = 42
CFG = defaults(synthesize={"n_images": 30}).synthesize  # the project's class weights and defect fraction, few images
N_STATS = 200


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("synth_a") / "data", tmp_path_factory.mktemp("synth_b") / "data"
    write_dataset(CFG, SEED, a)
    write_dataset(CFG, SEED, b)
    return a, b


@pytest.fixture(scope="module")
def generated() -> dict:
    """make_image for indices 0..N_STATS-1: the first CFG.n_images kept whole, the rest as counts."""
    kept, classes, n_defective = {}, Counter(), 0
    for i in range(N_STATS):
        img, masks = make_image(CFG, SEED, i)
        if i < CFG.n_images or len(set(masks) - {c for k in kept.values() for c in k[1]}):
            kept[i] = (img, masks)
        n_defective += bool(masks)
        classes.update(masks.keys())
    return {"kept": kept, "classes": classes, "defective": n_defective}


# --- determinism ----------------------------------------------------------------------------------------


def test_write_dataset_twice_gives_byte_identical_files(written):
    a, b = written
    files_a, files_b = _files(a), _files(b)
    assert len(files_a) == CFG.n_images + 2
    assert set(files_a) == set(files_b)
    assert {"train.csv", "defect_and_no_defect.csv"} <= set(files_a)
    different = [name for name in files_a if files_a[name] != files_b[name]]
    assert different == []


def test_make_image_is_a_pure_function():
    img1, masks1 = make_image(CFG, SEED, 7)
    img2, masks2 = make_image(CFG, SEED, 7)
    assert np.array_equal(img1, img2)
    assert masks1.keys() == masks2.keys()
    assert all(np.array_equal(masks1[c], masks2[c]) for c in masks1)


def test_a_different_seed_gives_different_images(written, tmp_path):
    other = tmp_path / "seed7"
    write_dataset(defaults(synthesize={"n_images": 10}).synthesize, 7, other)
    base = written[0] / "train_images"
    for p in sorted((other / "train_images").iterdir()):
        assert p.read_bytes() != (base / p.name).read_bytes(), p.name
    for i in range(3):
        assert not np.array_equal(make_image(CFG, 7, i)[0], make_image(CFG, SEED, i)[0])


def test_different_indices_give_different_images(generated):
    kept = generated["kept"]
    assert not np.array_equal(kept[0][0], kept[1][0])


# --- make_image ------------------------------------------------------------------------------------------


def test_make_image_shape_dtype_and_masks(generated):
    assert (HEIGHT, WIDTH) == (256, 1600)
    for i, (img, masks) in generated["kept"].items():
        assert img.dtype == np.uint8 and img.shape == (256, 1600), i
        assert img.std() > 3  # a textured surface, not a flat fill
        assert set(masks) <= {1, 2, 3, 4}, i
        for cls, mask in masks.items():
            assert mask.dtype == bool and mask.shape == (256, 1600), (i, cls)
            assert mask.any(), (i, cls)
            assert not mask.all(), (i, cls)


def test_defective_share_is_near_defect_fraction(generated):
    share = generated["defective"] / N_STATS
    assert abs(share - CFG.defect_fraction) <= 0.1


def test_class_3_is_the_most_common(generated):
    classes = generated["classes"]
    assert classes.most_common(1)[0][0] == 3
    assert classes[3] > 2 * max(classes[c] for c in (1, 2, 4))  # weight 0.73 vs at most 0.12


def test_class_weights_are_respected():
    only_class_2 = dataclasses.replace(CFG, n_images=10, defect_fraction=0.99, class_weights=(0, 1, 0, 0))
    seen = Counter()
    for i in range(8):
        seen.update(make_image(only_class_2, SEED, i)[1].keys())
    assert set(seen) == {2}
    assert seen[2] >= 6


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1) square (separable: rows, then columns), no wrap-around."""
    out = mask.copy()
    for axis in (0, 1):
        padded = np.pad(out, [(r, r) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        out = np.logical_or.reduce([np.take(padded, range(k, k + n), axis=axis) for k in range(2 * r + 1)])
    return out


def _contrast(img: np.ndarray, masks: dict[int, np.ndarray], cls: int) -> float:
    union = np.logical_or.reduce(list(masks.values()))
    ring = _dilate(masks[cls], 8) & ~_dilate(union, 2)
    assert ring.sum() > 50
    return abs(img[masks[cls]].mean() - img[ring].mean())


def test_each_defect_class_changes_the_pixels_inside_its_mask():
    cfg = dataclasses.replace(CFG, faint_fraction=0, edge_fraction=0, mark_fraction=0, class_weights=(1, 1, 1, 1))
    checked = set()
    for i in range(40):
        img, masks = make_image(cfg, SEED, i)
        for cls in set(masks) - checked:
            assert _contrast(img, masks, cls) > 10, (i, cls)
            checked.add(cls)
    assert checked == {1, 2, 3, 4}  # every class was seen among the generated images


def test_faint_defects_have_the_faint_contrast():
    """The same scratches (class 3 keeps its mask when faint), at full and at faint contrast."""
    normal = dataclasses.replace(CFG, faint_fraction=0, edge_fraction=0, mark_fraction=0, class_weights=(0, 0, 1, 0))
    faint = dataclasses.replace(normal, faint_fraction=1.0, faint_contrast=0.4)
    ratios = []
    for i in range(12):
        (img, masks), (faint_img, faint_masks) = make_image(normal, SEED, i), make_image(faint, SEED, i)
        assert masks.keys() == faint_masks.keys()
        if masks:
            assert np.array_equal(masks[3], faint_masks[3])
            ratios.append(_contrast(faint_img.astype(float), masks, 3) / _contrast(img.astype(float), masks, 3))
    assert len(ratios) >= 3 and 0.25 < np.median(ratios) < 0.55, ratios


def _border_distance(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    return int(min(ys.min(), HEIGHT - 1 - ys.max(), xs.min(), WIDTH - 1 - xs.max()))


def test_edge_defects_touch_a_border_and_others_mostly_do_not():
    edge, inside = ([], [])
    for fraction, out in ((1.0, edge), (0.0, inside)):
        cfg = dataclasses.replace(
            CFG, edge_fraction=fraction, defect_fraction=0.99, mark_fraction=0, class_weights=(1,) * 4
        )
        for i in range(24):
            out += [_border_distance(m) for m in make_image(cfg, SEED, i)[1].values()]
    assert max(edge) <= 16, edge
    assert np.median(inside) > 30, inside  # cracks across the strip and big patches may reach a border too


def test_harmless_marks_change_the_image_but_not_the_masks():
    without = dataclasses.replace(CFG, mark_fraction=0)
    marked, doubled = (dataclasses.replace(CFG, mark_fraction=1, mark_contrast=k) for k in (1.0, 2.0))
    for i in range(10):
        (img, masks), (marked_img, marked_masks) = make_image(without, SEED, i), make_image(marked, SEED, i)
        assert masks.keys() == marked_masks.keys() and all(np.array_equal(masks[c], marked_masks[c]) for c in masks)
        diff = np.abs(marked_img.astype(float) - img)
        assert 5 < diff.max() <= 25  # faint: at mark_contrast 1 no stronger than a faint defect
        doubled_diff = np.abs(make_image(doubled, SEED, i)[0].astype(float) - img)
        assert 1.7 < doubled_diff.max() / diff.max() < 2.3  # mark_contrast scales them


# --- the written files ------------------------------------------------------------------------------------


def test_train_csv_masks_decode_to_make_image_masks(written, generated):
    root = written[0]
    rows = _rows(root / "train.csv")
    assert list(rows[0]) == ["ImageId", "ClassId", "EncodedPixels"]
    by_image: dict[str, dict[int, np.ndarray]] = {}
    for r in rows:
        by_image.setdefault(r["ImageId"], {})[int(r["ClassId"])] = rle_decode(r["EncodedPixels"], 256, 1600)
    for i in range(CFG.n_images):
        _, masks = generated["kept"][i]
        decoded = by_image.pop(f"synth_{i:05d}.jpg", {})
        assert sorted(decoded) == sorted(masks), i
        for cls in masks:
            assert np.array_equal(decoded[cls], masks[cls]), (i, cls)
    assert by_image == {}  # no rows for images that do not exist


def test_jpegs_hold_the_generated_images(written, generated):
    folder = written[0] / "train_images"
    assert sorted(p.name for p in folder.iterdir()) == [f"synth_{i:05d}.jpg" for i in range(CFG.n_images)]
    for i in (0, 1, CFG.n_images - 1):
        data = (folder / f"synth_{i:05d}.jpg").read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.size == (1600, 256)
            grey = np.asarray(im.convert("L"), dtype=float)
        assert np.abs(grey - generated["kept"][i][0]).mean() < 4  # lossy, but the same picture


def test_labels_file_one_row_per_image_and_label_is_has_mask(written, generated):
    root = written[0]
    rows = _rows(root / "defect_and_no_defect.csv")
    assert list(rows[0]) == ["ImageID", "label"]
    names = [r["ImageID"] for r in rows]
    assert names == [f"synth_{i:05d}.jpg" for i in range(CFG.n_images)]
    with_mask = {r["ImageId"] for r in _rows(root / "train.csv")}
    for i, r in enumerate(rows):
        assert r["label"] in ("0", "1")
        assert r["label"] == str(int(r["ImageID"] in with_mask)), r
        assert r["label"] == str(int(bool(generated["kept"][i][1]))), r
    labels = [r["label"] for r in rows]
    assert "0" in labels and "1" in labels


def test_write_dataset_replaces_an_existing_folder(tmp_path):
    out = tmp_path / "synthetic"
    (out / "train_images").mkdir(parents=True)
    (out / "train_images" / "stale.jpg").write_bytes(b"old")
    write_dataset(dataclasses.replace(CFG, n_images=2), SEED, out)
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ["synth_00000.jpg", "synth_00001.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
