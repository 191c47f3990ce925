"""The shared cache: where it lives, atomic entries, two concurrent writers of one key, info and clear."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from steeldefect.serve.cli import main
from steeldefect.train import cache
from steeldefect.train.cache import FeatureCache, default_root

# Writes the same key `rounds` times with arrays filled with `value` (8 MB each: a rename of a partial file
# would show as a mix of values or a short array), reading the entry back after every write.
WRITER = """
import sys
import numpy as np
from steeldefect.train.cache import FeatureCache
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


def test_an_unreadable_entry_is_reported_and_counts_as_missing(tmp_path, caplog):
    features = FeatureCache(tmp_path)
    (tmp_path / "k.npy").write_bytes(b"not an array")
    assert features.load("k") is None
    assert "unreadable" in caplog.text


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


def test_an_entry_that_cannot_be_written_is_reported_and_skipped(tmp_path, caplog):
    (tmp_path / "features").write_text("a file where the folder should be")
    assert FeatureCache(tmp_path / "features").save("k", np.zeros(3)) is None
    assert "could not write the feature cache entry" in caplog.text
