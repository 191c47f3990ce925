"""Tests for steeldefect.data.severstal: RLE codec, train.csv and labels-file readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from steeldefect.data.severstal import check_image_id, read_labels, read_masks, rle_decode, rle_encode
from steeldefect.errors import UserError

from helpers import shared


def _write(tmp_path: Path, text: str, name: str = "train.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- RLE codec -------------------------------------------------------------------------------------


def test_known_tiny_case_column_major_one_based():
    # 3 rows x 2 columns; pixel numbers (1-based, down each column first):
    #   1 4
    #   2 5
    #   3 6
    mask = np.array([[False, True], [True, False], [True, False]])
    assert rle_encode(mask) == "2 3"  # pixels 2, 3 (column 0) and 4 (top of column 1)
    assert np.array_equal(rle_decode("2 3", 3, 2), mask)
    only_top_right = np.zeros((3, 2), dtype=bool)
    only_top_right[0, 1] = True
    assert rle_encode(only_top_right) == "4 1"
    assert np.array_equal(rle_decode("1 1 6 1", 3, 2), np.array([[1, 0], [0, 0], [0, 1]], dtype=bool))


def test_empty_and_full():
    assert rle_encode(np.zeros((4, 5), dtype=bool)) == ""
    assert not rle_decode("", 4, 5).any()
    assert not rle_decode("  \t ", 4, 5).any()
    assert rle_decode("", 4, 5).shape == (4, 5)
    assert rle_encode(np.ones((4, 5), dtype=np.uint8)) == "1 20"
    assert rle_decode("1 20", 4, 5).all()


def test_adjacent_runs_decode_and_encode_merged():
    mask = rle_decode("1 2 3 2", 3, 2)
    assert mask.dtype == bool and mask.sum() == 4
    assert rle_encode(mask) == "1 4"


def test_encode_rejects_non_binary_and_non_2d():
    with pytest.raises(ValueError):
        rle_encode(np.array([[0, 2]]))
    with pytest.raises(ValueError):
        rle_encode(np.zeros(5, dtype=bool))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 64).flatmap(
        lambda h: st.integers(1, 64).flatmap(lambda w: arrays(bool, (h, w), elements=st.booleans()))
    )
)
def test_decode_encode_round_trip_random(mask):
    h, w = mask.shape
    s = rle_encode(mask)
    out = rle_decode(s, h, w)
    assert out.shape == (h, w) and out.dtype == bool
    assert np.array_equal(out, mask)
    assert rle_encode(out) == s


WHERE = "train.csv row 17 (ImageId 0a1b.jpg, ClassId 3)"


@pytest.mark.parametrize(
    ("rle", "problem"),
    [
        ("1 2 3", "odd number of tokens (3)"),
        ("1 2 x 3", "'x' is not an integer"),
        ("1 2 3 1.5", "'1.5' is not an integer"),
        ("1 2 3 1_0", "'1_0' is not an integer"),
        ("1 0", "length 0"),
        ("1 2 4 -1", "length -1"),
        ("0 2", "starts at 0"),
        ("-3 2", "starts at -3"),
        ("5 1 3 1", "starts must strictly increase"),
        ("5 1 5 1", "starts must strictly increase"),
        ("1 3 2 2", "overlaps run 1"),
        ("5 3", "past the image"),
        ("6 1 7 1", "past the image"),
        ("1 99999999999999999999999", "too large"),
    ],
)
def test_decode_errors_name_location_and_problem(rle, problem):
    with pytest.raises(UserError) as exc:
        rle_decode(rle, 3, 2, where=WHERE)
    msg = str(exc.value)
    assert msg.startswith(WHERE + ": ")
    assert problem in msg


def test_decode_error_without_where():
    with pytest.raises(UserError, match="odd number of tokens"):
        rle_decode("1", 3, 2)


# --- real data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["severstal-sample", "magnetic-tile"])
def test_real_rle_round_trip(name):
    folder = shared(name)
    df = read_masks(folder / "train.csv").masks
    assert len(df) > 0
    sizes: dict[str, tuple[int, int]] = {}
    for image_id, cls, rle, row in df[["ImageId", "ClassId", "EncodedPixels", "row"]].itertuples(index=False):
        if image_id not in sizes:
            with Image.open(folder / "train_images" / image_id) as im:
                sizes[image_id] = im.size  # (width, height)
        width, height = sizes[image_id]
        where = f"{folder.name}/train.csv row {row} (ImageId {image_id}, ClassId {cls})"
        mask = rle_decode(rle, height, width, where=where)
        assert mask.any(), where
        assert rle_encode(mask) == rle, where


def test_read_masks_severstal_sample():
    parsed = read_masks(shared("severstal-sample") / "train.csv")
    df = parsed.masks
    assert parsed.format == "2019"
    assert list(df.columns) == ["ImageId", "ClassId", "EncodedPixels", "row"]
    assert len(df) == 12
    assert df["ImageId"].nunique() == 11
    images = parsed.images
    assert len(images) == 25 and images == sorted(images)
    assert set(df["ClassId"]) <= {1, 2, 3, 4}
    assert df["row"].is_monotonic_increasing and df["row"].min() >= 2
    # the first image's third class is on line 4 of the file (header = line 1)
    first = df.iloc[0]
    assert (first.ImageId, first.ClassId, first.row) == ("f9d912044.jpg", 3, 4)


def test_read_masks_magnetic_tile():
    tiles = shared("magnetic-tile")
    parsed = read_masks(tiles / "train.csv")
    df = parsed.masks
    assert parsed.format == "long"
    assert set(df["ClassId"]) <= {1, 2, 3, 4, 5}
    assert list(df["row"]) == list(range(2, len(df) + 2))
    labels = read_labels(tiles / "defect_and_no_defect.csv")
    defective = set(labels.loc[labels["label"] == 1, "ImageId"])
    assert set(parsed.images) <= defective
    assert len(defective - set(parsed.images)) == 4


def test_read_labels_magnetic_tile():
    labels = read_labels(shared("magnetic-tile") / "defect_and_no_defect.csv")
    assert list(labels.columns) == ["ImageId", "label"]
    assert len(labels) == 1344
    assert int(labels["label"].sum()) == 392
    assert labels["ImageId"].is_unique


# --- read_masks on crafted files -------------------------------------------------------------------------


def test_read_masks_2019_format(tmp_path):
    p = _write(
        tmp_path,
        "ImageId_ClassId,EncodedPixels\n"
        "a.jpg_1,\na.jpg_2,1 3\na.jpg_3,\na.jpg_4,\n"
        "NA_1,\nNA_2,\nNA_3,\nNA_4,5 1\n"
        "clean.jpg_1,\nclean.jpg_2,\nclean.jpg_3,\nclean.jpg_4,\n",
    )
    parsed = read_masks(p)
    df = parsed.masks
    assert parsed.format == "2019"
    assert parsed.images == ["NA", "a.jpg", "clean.jpg"]
    assert df.to_dict("records") == [
        {"ImageId": "a.jpg", "ClassId": 2, "EncodedPixels": "1 3", "row": 3},
        {"ImageId": "NA", "ClassId": 4, "EncodedPixels": "5 1", "row": 9},
    ]


def test_read_masks_long_format_with_blank_line(tmp_path):
    p = _write(tmp_path, "ImageId,ClassId,EncodedPixels\nb.jpg,2,1 1\n\nA_b.jpg,10,3 2\nc.jpg,1,\n")
    parsed = read_masks(p)
    df = parsed.masks
    assert parsed.format == "long"
    assert parsed.images == ["A_b.jpg", "b.jpg", "c.jpg"]
    assert df[["ImageId", "ClassId", "row"]].values.tolist() == [["b.jpg", 2, 2], ["A_b.jpg", 10, 4]]


def test_read_masks_unknown_header(tmp_path):
    p = _write(tmp_path, "Image,Class,Pixels\na.jpg,1,1 1\n")
    with pytest.raises(UserError, match="unknown header") as exc:
        read_masks(p)
    assert str(p) in str(exc.value)


@pytest.mark.parametrize("key", ["a.jpg", "a.jpg_x", "a.jpg_0", "a.jpg_-1", "_3", "a.jpg_"])
def test_read_masks_bad_image_id_class_id(tmp_path, key):
    p = _write(tmp_path, f"ImageId_ClassId,EncodedPixels\nok.jpg_1,\n{key},1 1\n")
    with pytest.raises(UserError) as exc:
        read_masks(p)
    msg = str(exc.value)
    assert f"{p} row 3" in msg and "ImageId_ClassId" in msg and repr(key) in msg


@pytest.mark.parametrize("cls", ["0", "-1", "x", "1.0", ""])
def test_read_masks_bad_class_id_long(tmp_path, cls):
    p = _write(tmp_path, f"ImageId,ClassId,EncodedPixels\na.jpg,{cls},1 1\n")
    with pytest.raises(UserError, match="ClassId .* is not a positive integer") as exc:
        read_masks(p)
    assert f"{p} row 2" in str(exc.value)


@pytest.mark.parametrize("image_id", ["../x.jpg", "a/b.jpg", "/etc/passwd", "a\\b.jpg", "..", "."])
def test_read_masks_path_traversal(tmp_path, image_id):
    p = _write(tmp_path, f"ImageId,ClassId,EncodedPixels\nok.jpg,1,1 1\n{image_id},1,1 1\n")
    with pytest.raises(UserError, match="not a plain file name") as exc:
        read_masks(p)
    assert f"{p} row 3" in str(exc.value)

    p2 = _write(tmp_path, f"ImageId_ClassId,EncodedPixels\n{image_id}_1,\n", name="old.csv")
    with pytest.raises(UserError, match="not a plain file name"):
        read_masks(p2)


def test_read_masks_empty_image_id(tmp_path):
    p = _write(tmp_path, "ImageId,ClassId,EncodedPixels\n,1,1 1\n")
    with pytest.raises(UserError, match="not a plain file name"):
        read_masks(p)


def test_read_masks_duplicate_mask(tmp_path):
    p = _write(tmp_path, "ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\nb.jpg,1,1 1\na.jpg,1,1 1\na.jpg,1,5 2\n")
    with pytest.raises(UserError) as exc:
        read_masks(p)
    msg = str(exc.value)  # row 4 repeats row 2 exactly (dropped); row 5 conflicts with it
    assert str(p) in msg and "rows 2 and 5" in msg and "a.jpg" in msg and "two different masks for ClassId 1" in msg


@pytest.mark.parametrize(
    "text",
    [
        "ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\na.jpg,3,5 2\na.jpg,1,1 1\nb.jpg,1,1 1\na.jpg,3,5 2\n",
        "ImageId_ClassId,EncodedPixels\na.jpg_1,1 1\na.jpg_3,5 2\na.jpg_1,1 1\nb.jpg_1,1 1\na.jpg_3,5 2\n",
    ],
    ids=["long", "2019"],
)
def test_read_masks_drops_repeated_rows_and_counts_them(tmp_path, text):
    parsed = read_masks(_write(tmp_path, text))
    assert parsed.duplicates_dropped == 2
    rows = parsed.masks[["ImageId", "ClassId", "row"]].values.tolist()
    assert rows == [["a.jpg", 1, 2], ["a.jpg", 3, 3], ["b.jpg", 1, 5]]  # the first of each, two types on a.jpg


def test_read_masks_duplicate_key_with_empty_mask_is_allowed(tmp_path):
    p = _write(tmp_path, "ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1,1 1\n")
    assert len(read_masks(p).masks) == 1 and read_masks(p).duplicates_dropped == 0


def test_read_masks_missing_and_empty_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_masks(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="empty"):
        read_masks(_write(tmp_path, ""))


# --- read_labels on crafted files -----------------------------------------------------------------------


@pytest.mark.parametrize("header", ["ImageID,label", "ImageId,label"])
def test_read_labels_dedupes_agreeing_rows(tmp_path, header):
    p = _write(tmp_path, f"{header}\nb.jpg,1\na.jpg,0\nb.jpg,1\nNA,0\n", name="labels.csv")
    df = read_labels(p)
    assert df.to_dict("records") == [
        {"ImageId": "b.jpg", "label": 1},
        {"ImageId": "a.jpg", "label": 0},
        {"ImageId": "NA", "label": 0},
    ]


def test_read_labels_conflict(tmp_path):
    p = _write(tmp_path, "ImageID,label\na.jpg,1\nb.jpg,0\na.jpg,0\n", name="labels.csv")
    with pytest.raises(UserError) as exc:
        read_labels(p)
    msg = str(exc.value)
    assert str(p) in msg and "a.jpg" in msg and "row 2" in msg and "row 4" in msg


@pytest.mark.parametrize("label", ["2", "-1", "yes", "", "1.0"])
def test_read_labels_bad_label(tmp_path, label):
    p = _write(tmp_path, f"ImageID,label\na.jpg,1\nb.jpg,{label}\n", name="labels.csv")
    with pytest.raises(UserError, match="is not 0 or 1") as exc:
        read_labels(p)
    assert f"{p} row 3" in str(exc.value)


def test_read_labels_unknown_header_and_unsafe_id(tmp_path):
    with pytest.raises(UserError, match="unknown header"):
        read_labels(_write(tmp_path, "image,defect\na.jpg,1\n", name="l1.csv"))
    with pytest.raises(UserError, match="not a plain file name") as exc:
        read_labels(_write(tmp_path, "ImageID,label\n../a.jpg,1\n", name="l2.csv"))
    assert "row 2" in str(exc.value)


def test_check_image_id():
    check_image_id("a.jpg", "x")
    check_image_id("NA", "x")
    check_image_id("..a.jpg", "x")
    for bad in ["", ".", "..", "a/b", "a\\b", "/etc/passwd"]:
        with pytest.raises(UserError, match="^here: "):
            check_image_id(bad, "here")
