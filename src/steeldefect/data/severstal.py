"""Severstal data layout: run-length-encoded (RLE) defect masks, ``train.csv`` and the labels file.

RLE strings are "start length" pairs separated by whitespace. Starts are 1-based and pixels are numbered
down each column first (column-major: pixel index = col * height + row) over the image's own size.

Every problem with the user's data raises :class:`~steeldefect.errors.UserError` with a one-paragraph
message saying what is wrong, where (file and line), and how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from steeldefect.errors import UserError

__all__ = ["MasksCsv", "check_image_id", "read_labels", "read_masks", "rle_decode", "rle_encode"]

# A whole RLE string made only of ASCII integers separated by whitespace (numpy alone would also accept
# "1_000" or non-ASCII digits, which no RLE writer produces).
_RLE_RE = re.compile(r"(?:-?[0-9]+\s+)*-?[0-9]+", re.ASCII)
_INT_TOKEN_RE = re.compile(r"-?[0-9]+", re.ASCII)
_POSITIVE_INT_RE = re.compile(r"[0-9]+", re.ASCII)

_HEADER_2019 = ("ImageId_ClassId", "EncodedPixels")
_HEADER_LONG = ("ImageId", "ClassId", "EncodedPixels")
_LABEL_HEADERS = (("ImageID", "label"), ("ImageId", "label"))


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def rle_decode(rle: str, height: int, width: int, where: str = "") -> np.ndarray:
    """Decode an RLE string into a bool mask of shape ``(height, width)``.

    ``where`` is a human-readable location used in error messages, e.g.
    ``"train.csv row 17 (ImageId a.jpg, ClassId 3)"``. An empty or whitespace-only string gives an
    all-False mask. Raises UserError for an odd number of tokens, non-numeric tokens, zero or negative
    lengths, starts < 1, starts that do not strictly increase, overlapping runs, and runs past the image.
    """
    p = _prefix(where)
    if height <= 0 or width <= 0:
        raise UserError(f"{p}image size {width}x{height} (width x height) is empty; check the image file.")
    n = height * width
    text = rle.strip()
    if not text:
        return np.zeros((height, width), dtype=bool)
    starts, lengths = _rle_numbers(text, p, n)
    ends = starts + lengths  # 1-based, exclusive
    _check_runs(starts, lengths, ends, p, height, width)
    # +1 at each run start, -1 just after each run end; the running sum is 1 inside runs.
    delta = np.bincount(starts - 1, minlength=n + 1) - np.bincount(ends - 1, minlength=n + 1)
    flat = np.cumsum(delta[:n]) > 0
    return flat.reshape((height, width), order="F")


def _rle_numbers(text: str, p: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of a non-empty RLE string; UserError (message prefixed by `p`) unless it holds
    "start length" pairs of whole numbers small enough to be pixel indices of an image of `n` pixels."""
    tokens = text.split()
    if len(tokens) % 2:
        raise UserError(
            f'{p}RLE has an odd number of tokens ({len(tokens)}); expected "start length" pairs separated by spaces.'
        )
    if not _RLE_RE.fullmatch(text):
        # Error path only: find the first offending token for the message.
        bad = next(t for t in tokens if not _INT_TOKEN_RE.fullmatch(t))
        raise UserError(
            f"{p}RLE token {bad!r} is not an integer; EncodedPixels must hold only whole numbers "
            'in "start length" pairs separated by spaces.'
        )
    try:
        values = np.array(tokens, dtype=np.int64)
        too_large = bool((np.abs(values) > 2**62).any())  # keeps start + length from overflowing
    except OverflowError:
        too_large = True
    if too_large:
        raise UserError(f"{p}RLE holds a number too large to be a pixel index; the image has only {n} pixels.")
    return values[0::2], values[1::2]


def _check_runs(starts: np.ndarray, lengths: np.ndarray, ends: np.ndarray, p: str, height: int, width: int) -> None:
    """UserError (message prefixed by `p`) for the first bad run: a length below 1, a start below 1, starts
    that do not strictly increase, overlapping runs, a run past the image's height * width pixels."""
    n = height * width

    def _first(bad: np.ndarray) -> int:
        return int(np.flatnonzero(bad)[0])

    bad = lengths <= 0
    if bad.any():
        i = _first(bad)
        raise UserError(
            f"{p}RLE run {i + 1} (start {starts[i]}) has length {lengths[i]}; run lengths must be at least 1."
        )
    bad = starts < 1
    if bad.any():
        i = _first(bad)
        raise UserError(
            f"{p}RLE run {i + 1} starts at {starts[i]}; starts are 1-based pixel indices and must be at least 1."
        )
    bad = starts[1:] <= starts[:-1]
    if bad.any():
        i = _first(bad) + 1
        raise UserError(
            f"{p}RLE run {i + 1} starts at {starts[i]}, not after run {i} (start {starts[i - 1]}); "
            "starts must strictly increase. Sort the runs by start."
        )
    bad = starts[1:] < ends[:-1]
    if bad.any():
        i = _first(bad) + 1
        raise UserError(
            f"{p}RLE run {i + 1} (start {starts[i]}) overlaps run {i}, which covers pixels "
            f"{starts[i - 1]}..{ends[i - 1] - 1}; runs must not overlap."
        )
    bad = ends - 1 > n
    if bad.any():
        i = _first(bad)
        raise UserError(
            f"{p}RLE run {i + 1} (start {starts[i]}, length {lengths[i]}) ends at pixel {ends[i] - 1}, "
            f"past the image's {n} pixels ({width}x{height}, width x height); check that the mask "
            "belongs to this image and that the image has its original size."
        )


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D bool (or 0/1) mask as an RLE string; the inverse of :func:`rle_decode`.

    Adjacent runs are merged (canonical form). Returns ``""`` for a mask with no pixel set.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("rle_encode expects a bool or 0/1 mask")
        m = m.astype(bool)
    flat = m.ravel(order="F").astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return ""
    pairs = np.column_stack((starts + 1, ends - starts)).ravel()
    return " ".join(map(str, pairs.tolist()))


def check_image_id(image_id: str, where: str) -> None:
    """Raise UserError unless ``image_id`` is a plain file name (no folders, no '.'/'..', not empty)."""
    if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\x00" in image_id:
        raise UserError(
            f"{_prefix(where)}ImageId {image_id!r} is not a plain file name; it must name a file "
            "directly inside train_images/ (no folders, no '.' or '..', not empty)."
        )


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """Read a CSV as stripped strings, keeping blank lines so that row ``i`` is on line ``i + 2``."""
    path = Path(csv_path)
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the data folder.") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty; it needs a header line and data rows.") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(
            f"{path}: cannot be read as CSV ({str(e).strip()}); fix the file so that every line has "
            "the header's number of comma-separated fields."
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    df = df.fillna("").astype(str)
    for c in df.columns:
        df[c] = df[c].str.strip()
    df["row"] = np.arange(2, len(df) + 2, dtype=np.int64)
    blank = (df.drop(columns="row") == "").all(axis=1)
    return df.loc[~blank].reset_index(drop=True)


def _parse_class_id(text: str, where: str) -> int:
    if not _POSITIVE_INT_RE.fullmatch(text) or int(text) < 1:
        raise UserError(f"{where}: ClassId {text!r} is not a positive integer; use 1, 2, 3, ...")
    return int(text)


@dataclass(frozen=True)
class MasksCsv:
    """A parsed ``train.csv``: the non-empty masks, every ImageId the file lists (with or without a mask, sorted),
    its format, ``"2019"`` or ``"long"``, and the mask rows dropped as exact repeats of an earlier row."""

    masks: pd.DataFrame
    images: list[str]
    format: str
    duplicates_dropped: int


def read_masks(csv_path: Path) -> MasksCsv:
    """Read ``train.csv`` in the 2019 competition format or the later long format (from the header).

    2019 format: ``ImageId_ClassId,EncodedPixels`` (ids like ``abc.jpg_3``, empty masks where absent).
    Long format: ``ImageId,ClassId,EncodedPixels`` (rows only for defects).

    The masks table has columns ImageId (str), ClassId (int), EncodedPixels (str) and ``row`` (1-based line
    number in the file; the header is line 1), one row per non-empty mask, in file order. A row repeating an
    earlier one (same ImageId, ClassId and EncodedPixels, as concatenated exports have) is dropped and counted;
    two different masks for one (image, class) are refused.
    """
    path = Path(csv_path)
    raw = _read_csv(path)
    fmt = _masks_format(raw, path)
    image_ids, class_ids = _image_and_class_ids(raw, fmt, path)
    df = pd.DataFrame(
        {
            "ImageId": pd.Series(image_ids, dtype=str),
            "ClassId": pd.Series(class_ids, dtype=np.int64),
            "EncodedPixels": raw["EncodedPixels"].astype(str).to_numpy(),
            "row": raw["row"].to_numpy(dtype=np.int64),
        }
    )
    masks = df.loc[df["EncodedPixels"] != ""]
    unique = masks.drop_duplicates(["ImageId", "ClassId", "EncodedPixels"]).reset_index(drop=True)
    _check_one_mask_per_class(unique, path)
    return MasksCsv(unique, sorted(set(image_ids)), fmt, len(masks) - len(unique))


def _masks_format(raw: pd.DataFrame, path: Path) -> str:
    """The format of ``train.csv``, "2019" or "long", from its header."""
    header = tuple(c for c in raw.columns if c != "row")
    if header == _HEADER_2019:
        return "2019"
    if header == _HEADER_LONG:
        return "long"
    raise UserError(
        f"{path}: unknown header {','.join(header)!r}; expected "
        f"{','.join(_HEADER_2019)!r} (2019 format) or {','.join(_HEADER_LONG)!r} (later format)."
    )


def _image_and_class_ids(raw: pd.DataFrame, fmt: str, path: Path) -> tuple[list[str], list[int]]:
    """The ImageId and ClassId of every row, checked (UserError naming the row)."""
    image_ids: list[str] = []
    class_ids: list[int] = []
    for rec in raw.itertuples(index=False):
        row = int(rec.row)
        where = f"{path} row {row}"
        if fmt == "2019":
            key = rec.ImageId_ClassId
            image_id, sep, cls = key.rpartition("_")
            if not sep or not image_id or not _POSITIVE_INT_RE.fullmatch(cls) or int(cls) < 1:
                raise UserError(
                    f"{where}: ImageId_ClassId {key!r} is not of the form <ImageId>_<ClassId> with a "
                    "positive integer ClassId (e.g. 0a1b.jpg_3)."
                )
        else:
            image_id, cls = rec.ImageId, rec.ClassId
        check_image_id(image_id, where)
        class_ids.append(_parse_class_id(cls, where))
        image_ids.append(image_id)
    return image_ids, class_ids


def _check_one_mask_per_class(df: pd.DataFrame, path: Path) -> None:
    """UserError naming the first two rows that give one image two different masks of one class."""
    dup = df.duplicated(["ImageId", "ClassId"], keep=False)
    if dup.any():
        first = df.loc[dup].iloc[0]
        same = df.loc[dup & (df["ImageId"] == first.ImageId) & (df["ClassId"] == first.ClassId), "row"]
        rows = same.tolist()
        raise UserError(
            f"{path} rows {rows[0]} and {rows[1]}: ImageId {first.ImageId} has two different masks for ClassId "
            f"{first.ClassId}; keep one row per (image, class), merging the masks if both are needed."
        )


def read_labels(csv_path: Path) -> pd.DataFrame:
    """Read ``defect_and_no_defect.csv`` (header ``ImageID,label`` or ``ImageId,label``).

    Repeated rows for one image are allowed when their labels agree and are de-duplicated (first
    occurrence order). Returns columns ImageId (str) and label (int, 0 or 1), one row per image.
    """
    path = Path(csv_path)
    raw = _read_csv(path)
    header = tuple(c for c in raw.columns if c != "row")
    if header not in _LABEL_HEADERS:
        raise UserError(f"{path}: unknown header {','.join(header)!r}; expected 'ImageID,label' (or 'ImageId,label').")
    id_col = header[0]
    seen: dict[str, tuple[int, int]] = {}  # ImageId -> (label, row)
    for image_id, label_text, row in zip(raw[id_col], raw["label"], raw["row"], strict=True):
        where = f"{path} row {int(row)}"
        check_image_id(image_id, where)
        if label_text not in ("0", "1"):
            raise UserError(
                f"{where} (ImageId {image_id}): label {label_text!r} is not 0 or 1; use 1 for an image "
                "with a defect and 0 for a clean one."
            )
        label = int(label_text)
        if image_id in seen:
            prev_label, prev_row = seen[image_id]
            if prev_label != label:
                raise UserError(
                    f"{path}: ImageId {image_id} has conflicting labels: {prev_label} on row {prev_row} "
                    f"and {label} on row {int(row)}; keep one label per image."
                )
            continue
        seen[image_id] = (label, int(row))
    return pd.DataFrame(
        {
            "ImageId": pd.Series(list(seen), dtype=str),
            "label": pd.Series([v[0] for v in seen.values()], dtype=np.int64),
        }
    )
