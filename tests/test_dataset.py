"""Tests for steeldefect.data.dataset: prepare (checked rows, one error listing every bad file), split, samples."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steeldefect.data.dataset import IMAGE_COLUMNS, load_masks, pick_samples, resolve_source, split
from steeldefect.data.prepare import prepare
from steeldefect.data.severstal import rle_decode
from steeldefect.data.synthetic import make_image, write_dataset
from steeldefect.errors import UserError

from helpers import defaults, shared

SEED = 42
DATA = defaults().data


@pytest.fixture(scope="module")
def synth40(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth40") / "synthetic"
    write_dataset(defaults(synthesize={"n_images": 40}).synthesize, SEED, out)
    return out


@pytest.fixture(scope="module")
def prepared40(synth40):
    return prepare(synth40, "fail", DATA)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    write_dataset(defaults(synthesize={"n_images": 10}).synthesize, SEED, out)
    return out


@pytest.fixture
def tiny(tiny_source, tmp_path) -> Path:
    """A fresh copy of a 10-image synthetic set, free to damage."""
    return Path(shutil.copytree(tiny_source, tmp_path / "data"))


def _labels(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "defect_and_no_defect.csv", dtype={"ImageID": str, "label": int})


def _masks(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)


# --- prepare on good data ---------------------------------------------------------------------------------


def test_prepare_synthetic_one_row_per_image(prepared40, synth40):
    images, masks, excluded, _ = prepared40
    assert excluded.empty and list(excluded.columns) == ["ImageId", "problem"]
    assert list(images.columns) == IMAGE_COLUMNS
    names = sorted(p.name for p in (synth40 / "train_images").iterdir())
    assert len(names) == 40
    assert sorted(images.ImageId) == names
    assert images.ImageId.is_unique
    assert (images.height == 256).all() and (images.width == 1600).all()
    for r in images.itertuples():
        assert Path(r.path) == synth40 / "train_images" / r.ImageId
        assert r.md5 == hashlib.md5(Path(r.path).read_bytes()).hexdigest()


def test_prepare_synthetic_labels_classes_and_areas_match_the_generator(prepared40):
    images, masks, _, _ = prepared40
    cfg = defaults(synthesize={"n_images": 40}).synthesize
    for i in (0, 1, 2, 3, 4, 5):
        row = images.set_index("ImageId").loc[f"synth_{i:05d}.jpg"]
        _, truth = make_image(cfg, SEED, i)
        assert row.label == int(bool(truth))
        assert row.classes == " ".join(str(c) for c in sorted(truth))
        assert row.n_masks == len(truth)
        loaded = load_masks(masks, f"synth_{i:05d}.jpg", 256, 1600)
        assert sorted(loaded) == sorted(truth)
        for c in truth:
            assert np.array_equal(loaded[c], truth[c])
    assert list(masks.columns) == ["ImageId", "ClassId", "EncodedPixels", "area"]
    for r in masks.itertuples():
        assert r.area == rle_decode(r.EncodedPixels, 256, 1600).sum() > 0


def test_prepare_synthetic_metrics_are_consistent(prepared40):
    images, masks, _, m = prepared40
    assert m["images"] == len(images) == 40
    assert m["defective"] + m["clean"] == m["images"]
    assert m["defective"] == int(images.label.sum()) > 0
    assert m["clean"] > 0
    assert m["masks"] == len(masks) == int(images.n_masks.sum())
    per_class = m["images_per_class"]
    assert set(per_class) <= {"1", "2", "3", "4"}
    assert sum(per_class.values()) == m["masks"]  # at most one mask per (image, class)
    assert sum(per_class.values()) >= m["defective"]
    assert m["images_with_2plus_classes"] == int((images.n_masks >= 2).sum())
    assert m["defective_without_mask"] == 0  # the generator writes a mask for every defect
    assert m["clean_derived_from_missing_csv_rows"] == 0  # the labels file lists every image
    assert m["excluded_bad_images"] == 0
    assert ((images.label == 1) == (images.n_masks > 0)).all()
    assert sum(m["images_by_number_of_masks"].values()) == m["images"]
    assert m["images_by_number_of_masks"]["0"] == m["clean"]
    assert m["image_sizes"]["distinct"] == 1 and m["image_sizes"]["most_common"] == "1600x256"
    shares = m["defect_area_share_mean_per_class"]
    assert len(shares) == len(per_class) and all(0 < v < 1 for v in shares.values())


def test_prepare_without_labels_file_derives_clean_images_from_the_folder(tiny):
    expected = _labels(tiny)
    (tiny / "defect_and_no_defect.csv").unlink()
    images, _, _, m = prepare(tiny, "fail", DATA)
    assert sorted(images.ImageId) == sorted(expected.ImageID)
    got = images.set_index("ImageId").label.sort_index()
    assert got.tolist() == expected.set_index("ImageID").label.sort_index().tolist()
    # long-format train.csv lists only defects, so every clean image comes from the folder
    assert m["clean_derived_from_missing_csv_rows"] == m["clean"] == int((expected.label == 0).sum())


def test_prepare_severstal_two_types_on_one_image_and_repeated_rows(tiny):
    masks = _masks(tiny)
    image = masks.ImageId[0]
    other = next(c for c in "1234" if c not in set(masks.ClassId[masks.ImageId == image]))
    extra = pd.DataFrame({"ImageId": [image, image], "ClassId": [other, masks.ClassId[0]]})
    extra["EncodedPixels"] = ["1 10", masks.EncodedPixels[0]]  # a second type; a repeat of row 2
    pd.concat([masks, extra]).to_csv(tiny / "train.csv", index=False)
    images, prepared, _, m = prepare(tiny, "fail", DATA)
    types = sorted({*masks.ClassId[masks.ImageId == image], other}, key=int)
    assert images.set_index("ImageId").classes[image] == " ".join(types)
    assert prepared[prepared.ImageId == image].ClassId.astype(str).tolist() == types  # in ClassId order
    assert m["duplicate_mask_rows_dropped"] == 1 and m["masks"] == len(masks) + 1 == len(prepared)
    assert other in m["class_names"].values() and m["has_clean_images"] is True and "note" not in m
    extra.loc[1, "EncodedPixels"] = "5 3"  # now conflicting with row 2: refused
    pd.concat([masks, extra]).to_csv(tiny / "train.csv", index=False)
    with pytest.raises(UserError, match=f"rows 2 and {len(masks) + 3}: ImageId {image} has two different masks"):
        prepare(tiny, "fail", DATA)


def test_resolve_source():
    assert resolve_source("synthetic") == Path("data/synthetic")
    assert resolve_source("real/severstal", Path("/d")) == Path("/d/real/severstal")
    assert resolve_source("/abs/data", Path("data")) == Path("/abs/data")


def test_prepare_real_severstal_sample():
    images, masks, excluded, m = prepare(shared("severstal-sample"), "fail", DATA)
    assert excluded.empty
    assert (m["images"], m["defective"], m["clean"], m["masks"]) == (25, 11, 14, 12)
    assert len(images) == 25 and len(masks) == 12
    assert m["defective_without_mask"] == 0
    assert (images.height == 256).all() and (images.width == 1600).all()
    assert sum(m["images_per_class"].values()) == 12


def test_prepare_real_magnetic_tile():
    images, masks, _, m = prepare(shared("magnetic-tile"), "fail", DATA)
    assert (m["images"], m["defective"], m["clean"]) == (1344, 392, 952)
    assert m["defective_without_mask"] == 4
    assert m["clean_derived_from_missing_csv_rows"] == 0
    assert set(m["images_per_class"]) == {"1", "2", "3", "4", "5"}
    assert images.height.nunique() > 1  # sizes vary: masks were decoded over each image's own size
    assert m["image_sizes"]["distinct"] > 1
    assert (masks.area > 0).all()


@pytest.mark.parametrize("name", ["severstal-sample", "magnetic-tile"])
def test_split_real_folders(name):
    images = prepare(shared(name), "fail", DATA)[0]
    parts, report = split(images, 0.15, 0.15, SEED)
    ids = [set(df.ImageId) for df in parts.values()]
    assert sum(len(i) for i in ids) == len(images) and set.union(*ids) == set(images.ImageId)
    share = images.label.mean()
    for df in parts.values():
        assert abs(df.label.mean() - share) < 0.1
    assert report["sizes"] == {k: len(v) for k, v in parts.items()}


# --- prepare on bad data: one UserError, naming what to fix ------------------------------------------------


def test_missing_and_corrupt_images_are_reported_together(tiny):
    names = sorted(p.name for p in (tiny / "train_images").iterdir())
    missing, corrupt = names[2], names[5]
    (tiny / "train_images" / missing).unlink()
    (tiny / "train_images" / corrupt).write_bytes(b"\xff\xd8garbage!")
    with pytest.raises(UserError) as exc:
        prepare(tiny, "fail", DATA)
    msg = str(exc.value)
    assert missing in msg and corrupt in msg
    assert "2 listed image(s)" in msg
    assert str(tiny / "train_images") in msg


def _damage_two(tiny: Path) -> tuple[str, str]:
    """Delete one image with a mask and corrupt one clean image; return their names."""
    labels = _labels(tiny)
    missing = sorted(set(_masks(tiny).ImageId))[0]
    corrupt = sorted(labels.ImageID[labels.label == 0])[0]
    (tiny / "train_images" / missing).unlink()
    (tiny / "train_images" / corrupt).write_bytes(b"\xff\xd8garbage!")
    return missing, corrupt


def test_on_bad_image_fail_lists_every_bad_image(tiny):
    missing, corrupt = _damage_two(tiny)
    with pytest.raises(UserError) as exc:
        prepare(tiny, "fail", DATA)
    assert missing in str(exc.value) and corrupt in str(exc.value)


def test_on_bad_image_skip_leaves_them_out_and_lists_them(tiny):
    missing, corrupt = _damage_two(tiny)
    images, masks, excluded, m = prepare(tiny, "skip", DATA)
    assert sorted(excluded.ImageId) == sorted([missing, corrupt])
    assert excluded.set_index("ImageId").problem[missing] == "file not found"
    assert "decode" in excluded.set_index("ImageId").problem[corrupt]
    assert len(images) == 8 and not {missing, corrupt} & set(images.ImageId)
    assert missing not in set(masks.ImageId)  # its masks go too
    assert m["excluded_bad_images"] == 2
    assert m["images"] == 8 and m["defective"] + m["clean"] == 8
    assert m["masks"] == len(masks) == int(images.n_masks.sum())


def test_skipped_clean_image_is_not_counted_as_derived_clean(tiny):
    (tiny / "defect_and_no_defect.csv").unlink()
    clean_on_disk = {p.name for p in (tiny / "train_images").iterdir()} - set(_masks(tiny).ImageId)
    corrupt = sorted(clean_on_disk)[0]
    (tiny / "train_images" / corrupt).write_bytes(b"not a jpeg")
    images, _, excluded, m = prepare(tiny, "skip", DATA)
    assert list(excluded.ImageId) == [corrupt]
    assert m["clean"] == int((images.label == 0).sum()) == len(clean_on_disk) - 1
    assert m["clean_derived_from_missing_csv_rows"] == m["clean"]


def test_truncated_jpeg_is_reported(tiny):
    name = sorted(p.name for p in (tiny / "train_images").iterdir())[0]
    path = tiny / "train_images" / name
    path.write_bytes(path.read_bytes()[:2000])  # a real JPEG header, cut short
    with pytest.raises(UserError, match=name):
        prepare(tiny, "fail", DATA)


def test_image_with_mask_labelled_clean_is_named(tiny):
    labels = _labels(tiny)
    defective = set(_masks(tiny).ImageId)
    victim = sorted(defective)[0]
    labels.loc[labels.ImageID == victim, "label"] = 0
    labels.to_csv(tiny / "defect_and_no_defect.csv", index=False)
    with pytest.raises(UserError) as exc:
        prepare(tiny, "fail", DATA)
    msg = str(exc.value)
    assert victim in msg
    assert "defect_and_no_defect.csv" in msg


def test_mask_for_image_missing_from_labels_file_is_named(tiny):
    labels = _labels(tiny)
    victim = sorted(set(_masks(tiny).ImageId))[0]
    labels[labels.ImageID != victim].to_csv(tiny / "defect_and_no_defect.csv", index=False)
    with pytest.raises(UserError, match=victim):
        prepare(tiny, "fail", DATA)


@pytest.mark.parametrize("remove", ["train.csv", "train_images"])
def test_folder_without_train_csv_or_images_names_the_path(tiny, remove):
    target = tiny / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError) as exc:
        prepare(tiny, "fail", DATA)
    assert str(target) in str(exc.value)


def test_source_folder_that_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="nowhere: not a folder"):
        prepare(tmp_path / "nowhere", "fail", DATA)


def test_rle_past_the_image_end_names_file_row_and_image(tiny):
    masks = _masks(tiny)
    k = len(masks) - 1  # the last data row: file line k + 2 (line 1 is the header)
    image_id = masks.ImageId[k]
    masks.loc[k, "EncodedPixels"] = f"{256 * 1600 - 5} 10"
    masks.to_csv(tiny / "train.csv", index=False)
    with pytest.raises(UserError) as exc:
        prepare(tiny, "fail", DATA)
    msg = str(exc.value)
    assert str(tiny / "train.csv") in msg
    assert f"row {k + 2}" in msg
    assert image_id in msg


# --- split --------------------------------------------------------------------------------------------------


def _frame(combos: dict[str, int]) -> pd.DataFrame:
    """An images table with the given number of images per class combination ("" = clean)."""
    rows = []
    for classes, n in combos.items():
        for _ in range(n):
            i = len(rows)
            rows.append((f"img_{i:04d}.jpg", f"/x/img_{i:04d}.jpg", int(bool(classes)), classes, len(classes.split())))
    df = pd.DataFrame(rows, columns=IMAGE_COLUMNS[:5])
    return df.assign(height=256, width=1600, md5="0" * 32)


COMBOS = {"": 90, "3": 70, "1": 15, "4": 12, "2": 5, "1 3": 2, "3 4": 6}  # 200 images, 110 defective


@pytest.fixture(scope="module")
def images200() -> pd.DataFrame:
    return _frame(COMBOS)


def test_split_sizes_match_the_fractions(images200):
    parts, report = split(images200, 0.15, 0.15, SEED)
    n = len(images200)
    assert abs(len(parts["test"]) - 0.15 * n) <= 1
    assert abs(len(parts["val"]) - 0.15 * n) <= 1
    assert abs(len(parts["train"]) - 0.70 * n) <= 1
    assert report["sizes"] == {k: len(v) for k, v in parts.items()}
    assert report["defective"] == {k: int(v.label.sum()) for k, v in parts.items()}


def test_split_other_fractions(images200):
    parts, _ = split(images200, 0.2, 0.1, SEED)
    assert abs(len(parts["test"]) - 40) <= 1 and abs(len(parts["val"]) - 20) <= 1


def test_split_every_image_in_exactly_one_part(images200):
    parts, _ = split(images200, 0.15, 0.15, SEED)
    ids = pd.concat([p.ImageId for p in parts.values()])
    assert ids.is_unique
    assert sorted(ids) == sorted(images200.ImageId)
    for p in parts.values():
        assert list(p.columns) == IMAGE_COLUMNS
        assert p.ImageId.is_monotonic_increasing  # sorted, for stable files


def test_split_keeps_the_defective_share(images200):
    overall = images200.label.mean()
    parts, report = split(images200, 0.15, 0.15, SEED)
    assert report["stratified_by"] == "label and defect classes"
    for name, p in parts.items():
        assert abs(p.label.mean() - overall) <= 0.05, name
    # stratified by class combination too: the big class 3 stratum is spread like the whole set
    for name, p in parts.items():
        assert abs((p.classes == "3").mean() - 70 / 200) <= 0.05, name


def test_split_same_seed_same_split_other_seed_other_split(images200):
    a, _ = split(images200, 0.15, 0.15, SEED)
    b, _ = split(images200, 0.15, 0.15, SEED)
    c, _ = split(images200, 0.15, 0.15, SEED + 1)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(a["test"].ImageId) != set(c["test"].ImageId)
    assert set(a["val"].ImageId) != set(c["val"].ImageId)


def test_split_reports_rare_class_combinations_as_folded(images200):
    _, report = split(images200, 0.15, 0.15, SEED)
    assert report["folded_strata"] == ["1:1 3"]  # 2 images; "1:2" (5) and "1:3 4" (6) are big enough


def test_split_too_few_images_is_a_user_error():
    tiny = _frame({"": 3, "3": 1})
    with pytest.raises(UserError, match="split"):
        split(tiny, 0.15, 0.15, SEED)


def test_split_of_a_set_with_no_clean_images_is_stratified_by_type():
    images = _frame({"1": 60, "2": 30, "3": 10, "1 2": 2})  # every image defective
    parts, report = split(images, 0.2, 0.2, SEED)
    assert report["stratified_by"] == "defect classes (no clean images)" and report["folded_strata"] == ["1:1 2"]
    assert report["defective"] == report["sizes"] and sum(report["sizes"].values()) == 102
    for name, part in parts.items():
        for classes, n in (("1", 60), ("2", 30), ("3", 10)):
            assert abs((part.classes == classes).sum() - n * len(part) / 102) <= 1.5, (name, classes)


def test_split_of_prepared_synthetic_data(prepared40):
    images = prepared40[0]
    parts, report = split(images, 0.15, 0.15, SEED)
    assert sorted(pd.concat([p.ImageId for p in parts.values()])) == sorted(images.ImageId)
    assert sum(report["sizes"].values()) == 40
    assert all(p.label.sum() > 0 for p in parts.values())  # stratified: defects in every part


# --- pick_samples -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 10, 16])
def test_pick_samples_at_most_n_defective_first(images200, n):
    picked = pick_samples(images200, n, SEED)
    assert 1 <= len(picked) <= n
    assert picked.ImageId.is_unique
    assert set(picked.ImageId) <= set(images200.ImageId)
    labels = picked.label.astype(int).tolist()
    assert labels == sorted(labels, reverse=True), labels  # all defective rows come before clean ones
    assert labels[0] == 1
    if n >= 3:
        assert 0 in labels  # clean images are shown too


def test_pick_samples_round_robin_over_class_combinations(images200):
    picked = pick_samples(images200, 16, SEED)
    defective = picked[picked.label.astype(int) == 1]
    combos = {c for c in COMBOS if c}
    assert set(defective.classes.head(len(combos))) == combos  # one of each combination first


def test_pick_samples_more_than_available(prepared40):
    images = prepared40[0]
    picked = pick_samples(images, 100, SEED)
    assert sorted(picked.ImageId) == sorted(images.ImageId)
    assert picked.label.astype(int).tolist() == sorted(picked.label.astype(int), reverse=True)


def test_pick_samples_is_seeded(images200):
    a = pick_samples(images200, 10, SEED).ImageId.tolist()
    assert a == pick_samples(images200, 10, SEED).ImageId.tolist()
    assert a != pick_samples(images200, 10, SEED + 1).ImageId.tolist()
