"""The shared cache: where it lives, atomic entries, two concurrent writers of one key, info and clear, keys that
follow the code, and a folder that cannot be written stopping the run."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steeldefect import cache
from steeldefect.cache import FeatureCache, ImageCache, default_root
from steeldefect.errors import UserError
from steeldefect.serve.cli import main

from helpers import REPO

# Writes the same key `rounds` times with arrays filled with `value` (8 MB each: a rename of a partial file
# would show as a mix of values or a short array), reading the entry back after every write.
WRITER = """
import sys
import numpy as np
from steeldefect.cache import FeatureCache
folder, value, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
features = FeatureCache(folder)
for _ in range(rounds):
    features.save("samekey", np.full((1000, 2000), value, np.float32))
    x = features.load("samekey")
    assert x.shape == (1000, 2000) and len(set(np.unique(x).tolist()) - {1.0, 2.0}) == 0, x
    assert np.unique(x).size == 1, "a mix of two writers' arrays"
print("ok")
"""


def test_default_root_follows_the_environment(tmp_path):
    assert default_root({"STEELDEFECT_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert default_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "steeldefect"
    assert default_root({"STEELDEFECT_CACHE_DIR": "", "HOME": str(tmp_path)}) == Path.home() / ".cache/steeldefect"


def test_entries_are_written_whole_and_read_back(tmp_path):
    features = FeatureCache(tmp_path / "features")
    assert features.load("k") is None
    path = features.save("k", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert path == tmp_path / "features" / "k.npy"
    np.testing.assert_array_equal(features.load("k"), np.arange(6).reshape(2, 3))
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["k.npy"]  # no temporary file left


@pytest.mark.parametrize("content", [b"not an array", b""])
def test_a_corrupt_entry_is_reported_and_counts_as_missing(tmp_path, caplog, content):
    features = FeatureCache(tmp_path)
    (tmp_path / "k.npy").write_bytes(content)
    assert features.load("k") is None
    assert "unreadable" in caplog.text
    features.save("k", np.ones(3))
    np.testing.assert_array_equal(features.load("k"), np.ones(3))  # written again


def test_two_concurrent_writers_of_one_key_leave_one_valid_entry(tmp_path):
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), value, "15"], stdout=subprocess.PIPE, text=True)
        for value in ("1", "2")
    ]
    outputs = [w.communicate(timeout=300)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0] and outputs == ["ok\n", "ok\n"]
    assert [p.name for p in tmp_path.iterdir()] == ["samekey.npy"]  # one entry, no temporary files
    x = np.load(tmp_path / "samekey.npy")
    assert x.shape == (1000, 2000) and np.unique(x).tolist() in ([1.0], [2.0])


def test_info_and_clear(tmp_path, capsys, monkeypatch):
    FeatureCache(tmp_path / "features").save("a", np.zeros(1000, np.float32))
    FeatureCache(tmp_path / "features").save("b", np.zeros(1000, np.float32))
    (tmp_path / "images" / "k").mkdir(parents=True)
    (tmp_path / "images" / "k" / "images.index").write_bytes(b"x" * 100)
    (tmp_path / "images" / ".k.tmp").mkdir()  # a writer's temporary folder: counted in bytes, not as an entry
    info = cache.info(tmp_path)
    assert info["features"]["entries"] == 2 and info["features"]["bytes"] > 8000
    assert info["images"] == {"entries": 1, "bytes": 100}

    monkeypatch.setenv("STEELDEFECT_CACHE_DIR", str(tmp_path))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "features      2 entries" in out
    assert main(["cache", "clear", "--kind", "images"]) == 0
    assert not (tmp_path / "images").exists() and (tmp_path / "features").is_dir()
    assert main(["cache", "clear"]) == 0
    assert cache.info(tmp_path) == {k: {"entries": 0, "bytes": 0} for k in cache.KINDS}


def test_two_writers_of_one_key_and_a_clear_meanwhile_are_no_error(tmp_path):
    features = FeatureCache(tmp_path / "features")
    assert features.save("k", np.zeros(3)) == features.save("k", np.zeros(3)) == tmp_path / "features" / "k.npy"
    images = [ImageCache(tmp_path / "images", (8, 8)) for _ in range(2)]
    df = pd.DataFrame({"md5": ["a", "b"]})
    for cache_ in images:  # both runs write the same images; the second to finish finds the first's in place
        Path(cache_.prefix(df) + ".index").write_text("complete")
    for cache_ in images:
        cache_.close()
    assert [p.name for p in (tmp_path / "images").iterdir()] == [cache.image_cache_key(df, (8, 8))]
    cache.clear(tmp_path)  # `steeldefect cache clear` while a run reads and writes
    assert features.load("k") is None


def test_a_folder_that_is_not_writable_stops_the_run(tmp_path):
    """A real permission error (not as root: root may write anywhere)."""
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions (the next test simulates the errors)")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(UserError, match=re.escape(f"cache folder {tmp_path / 'features'} cannot be used")):
            FeatureCache(tmp_path / "features").save("k", np.zeros(3))
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.parametrize(
    ("code", "call", "fails"),
    [
        (errno.ENOSPC, "save", (np.lib.format, "write_array")),
        (errno.EACCES, "save", (tempfile, "mkstemp")),
        (errno.EROFS, "save", (os, "replace")),
        (errno.EROFS, "prefix", (tempfile, "mkdtemp")),
        (errno.EACCES, "close", (os, "replace")),
    ],
)
def test_a_full_disk_or_a_refused_write_stops_the_run(tmp_path, monkeypatch, code, call, fails):
    """The operating system's failures (injected where it reports them) are not taken for races: they stop the
    run with a message naming the folder and the ways out."""
    features, images = FeatureCache(tmp_path / "features"), ImageCache(tmp_path / "images", (8, 8))
    df = pd.DataFrame({"md5": ["a"]})
    if call == "close":
        Path(images.prefix(df) + ".index").write_text("complete")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(*fails, fail)
    action = {"save": lambda: features.save("k", np.zeros(3)), "prefix": lambda: images.prefix(df)}
    with pytest.raises(UserError) as e:
        action.get(call, images.close)()
    message = str(e.value)
    assert os.strerror(code) in message and str(tmp_path) in message
    assert "STEELDEFECT_CACHE_DIR" in message and "STEELDEFECT_FEATURE_CACHE=off" in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temporary file left


def test_an_entry_that_cannot_be_read_or_written_stops_the_run(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "k.npy").mkdir()  # a folder where an entry should be: EISDIR
    with pytest.raises(UserError, match="Is a directory"):
        FeatureCache(tmp_path / "features").load("k")
    (tmp_path / "file").write_text("a file where the folder should be")
    with pytest.raises(UserError, match="File exists"):
        FeatureCache(tmp_path / "file").save("k", np.zeros(3))
    with pytest.raises(UserError, match="File exists"):
        ImageCache(tmp_path / "file", (8, 8)).prefix(pd.DataFrame({"md5": ["a"]}))


# Prints the keys of one image list, computed by the package found first on PYTHONPATH (the TensorFlow / Keras
# versions are left out: importing them takes seconds, and they are the same for every copy)
KEYS = """
from types import SimpleNamespace
import pandas as pd
from steeldefect import cache
cache.versions = lambda: ["tf", "keras"]
head = SimpleNamespace(pooling="avgmax", pool_size=4)
p = SimpleNamespace(weights=None, image_size=(64, 96), backbone_layer=None, head=head, mixed_precision=None)
df = pd.DataFrame({"md5": ["a", "b"]})
print(cache.image_cache_key(df, (64, 96)), cache.feature_key(p, 0, df))
"""


def keys_of(package: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(package)}
    proc = subprocess.run([sys.executable, "-c", KEYS], env=env, capture_output=True, text=True, check=True)
    return proc.stdout.split()


@pytest.mark.parametrize(
    ("module", "old", "new", "changed"),
    [
        ("preprocess.py", 'method="bilinear", antialias=True', 'method="bilinear", antialias=False', [True, True]),
        ("train/model.py", "\ndef build_backbone(", "\n# the backbone\ndef  build_backbone(", [False, False]),
        ("train/model.py", 'if p.pooling == "flatten":', 'if p.pooling == "flatten" and True:', [False, True]),
        ("train/pipeline.py", "\n\ndef augment(", "\n\n\n# augmentation\ndef augment(", [False, False]),
    ],
)
def test_an_edit_of_the_code_that_makes_the_entries_changes_their_keys(tmp_path, module, old, new, changed):
    """image and feature keys from a copy of the package with one edit of `module`: a code edit changes the keys of
    the entries that code makes; a comment or a blank line changes none."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src" / "steeldefect", tmp_path / "steeldefect", ignore=ignore)
    path = tmp_path / "steeldefect" / module
    assert path.read_text().count(old) == 1
    path.write_text(path.read_text().replace(old, new))
    original, edited = keys_of(REPO / "src"), keys_of(tmp_path)
    assert [a != b for a, b in zip(original, edited)] == changed


def test_the_instruction_set_is_part_of_the_feature_key(monkeypatch):
    """Features computed under another oneDNN instruction set have other bits: never reused across the pin."""
    keys = []
    for isa in ("AVX2", "SSE41"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        keys.append(cache.versions())
    assert keys[0] != keys[1] and keys[0][-1] == "onednn-isa=AVX2"
