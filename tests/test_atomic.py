"""Tests for steeldefect.atomic: outputs replace their target only when complete, and leave nothing behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from steeldefect.atomic import atomic_dir, path_for, write_json, write_text


class Boom(Exception):
    pass


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for folders), for comparing whole folders."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --- path_for ---------------------------------------------------------------------------------------------


def test_path_for_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with path_for(target) as tmp:
        assert tmp != target
        assert tmp.parent == target.parent
        assert tmp.name.endswith(".json")  # same suffix, for libraries that check it
        tmp.write_text("new")
        assert target.read_text() == "old"  # not replaced before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_path_for_keeps_multi_part_suffix(tmp_path):
    with path_for(tmp_path / "model.weights.h5") as tmp:
        assert tmp.name.endswith(".weights.h5")
        tmp.write_bytes(b"x")
    assert (tmp_path / "model.weights.h5").read_bytes() == b"x"


def test_path_for_error_leaves_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "model.h5"
    target.write_bytes(b"old weights")
    with pytest.raises(Boom):
        with path_for(target) as tmp:
            tmp.write_bytes(b"half-written")
            raise Boom
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]


def test_path_for_error_without_old_file_leaves_no_file(tmp_path):
    target = tmp_path / "plots" / "roc.png"
    with pytest.raises(Boom):
        with path_for(target) as tmp:
            tmp.write_bytes(b"partial")
            raise Boom
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_path_for_creates_missing_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with path_for(target) as tmp:
        tmp.write_text("hello")
    assert target.read_text() == "hello"
    assert list(target.parent.iterdir()) == [target]


def test_path_for_gives_normal_permissions_under_umask_022(tmp_path, umask_022):
    target = tmp_path / "out.csv"
    with path_for(target) as tmp:
        tmp.write_text("a,b\n")
    assert _mode(target) == 0o644  # mkstemp alone would leave 0600


def test_path_for_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        with path_for(tmp_path / "shared.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "shared.txt") == 0o664


def test_write_text_and_write_json(tmp_path, umask_022):
    write_text(tmp_path / "a.txt", "first")
    write_text(tmp_path / "a.txt", "second")
    assert (tmp_path / "a.txt").read_text() == "second"
    write_json(tmp_path / "m.json", {"b": 1, "a": [0.5, None]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": [0.5, None], "b": 1}
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys, stable diffs
    assert _mode(tmp_path / "m.json") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.json"]


# --- atomic_dir -------------------------------------------------------------------------------------------


def _make_old(folder: Path) -> dict[str, bytes | None]:
    (folder / "sub").mkdir(parents=True)
    (folder / "keep.csv").write_text("old,1\n")
    (folder / "sub" / "stale.txt").write_text("stale")
    return _tree(folder)


def test_atomic_dir_error_leaves_old_folder_intact(tmp_path):
    target = tmp_path / "split"
    before = _make_old(target)
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            assert tmp != target and tmp.parent == target.parent
            assert list(tmp.iterdir()) == []  # starts empty
            (tmp / "keep.csv").write_text("new,2\n")
            (tmp / "train.csv").write_text("partial")
            raise Boom
    assert _tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_atomic_dir_error_without_old_folder_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "results"
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "x.csv").write_text("x")
            raise Boom
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_dir_success_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "split"
    _make_old(target)
    with atomic_dir(target) as tmp:
        (tmp / "keep.csv").write_text("new,2\n")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "val.csv").write_text("v")
        assert (target / "sub" / "stale.txt").exists()  # old one still in place during the block
    # nothing of the old folder survives (no merge), the new content is all there
    assert _tree(target) == {"keep.csv": b"new,2\n", "nested": None, "nested/val.csv": b"v"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_atomic_dir_creates_a_new_folder(tmp_path, umask_022):
    target = tmp_path / "deep" / "prepared"
    with atomic_dir(target) as tmp:
        (tmp / "images.csv").write_text("ImageId\n")
    assert _tree(target) == {"images.csv": b"ImageId\n"}
    assert _mode(target) == 0o755  # mkdtemp alone would leave 0700
    assert sorted(p.name for p in target.parent.iterdir()) == ["prepared"]


def test_atomic_dir_replacing_keeps_normal_permissions(tmp_path, umask_022):
    target = tmp_path / "results"
    target.mkdir()
    for _ in range(2):
        with atomic_dir(target) as tmp:
            (tmp / "predictions.csv").write_text("p")
    assert _mode(target) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
