"""Caches of work that does not depend on the experiment: frozen-backbone features, decoded images, the
OpenVINO IR's self-check passes (serve/selfcheck.py: one small JSON per model and CPU), and the backups of
interrupted pretraining runs (train/pretrain.py: one folder per run, deleted when the run finishes).

All live under one folder per user, shared by every run and every experiment of every repository (queued
`dvc exp run --queue` experiments run in temporary copies of the repository, so a folder inside it would be
empty there): `$STEELDEFECT_CACHE_DIR`, else `$XDG_CACHE_HOME/steeldefect`, else `~/.cache/steeldefect`.
Entries are keyed by the content they depend on (the images' md5, input size, backbone, ..., the code that
computes them and the TensorFlow / Keras versions), never by a path or an experiment name, so any run that needs
the same work finds it, and an edit of that code (preprocess.py, train/pipeline.py, train/model.py) never reuses
stale entries.
Every entry is written under a private temporary name and renamed into place when complete: a crash never leaves
a partial entry, and two runs writing the same key at once leave one valid entry (the last rename wins; both are
equal). Only those races are ignored; a cache folder that cannot be written (full disk, no permission,
read-only) stops the run with a UserError that says how to fix it.
"""

from __future__ import annotations

import ast
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from steeldefect.atomic import path_for
from steeldefect.errors import UserError

if TYPE_CHECKING:
    from steeldefect.params import TrainParams

log = logging.getLogger(__name__)
IMAGE_CODE = ("preprocess.py", "train/pipeline.py")  # decode and resize the cached images
FEATURE_CODE = ("preprocess.py", "train/pipeline.py", "train/model.py")  # + preprocessing, the backbone, the pooling
SELFCHECK = "selfcheck"  # the OpenVINO IR's self-check passes (serve/selfcheck.py)
KINDS = ("features", "images", SELFCHECK, "pretrain", "train")  # the sub-folders of the cache folder
SELFCHECK_CODE = ("serve/inference.py", "serve/openvino_engine.py", "serve/selfcheck.py", "preprocess.py")
CACHES_OFF = (
    "turn the caches off with STEELDEFECT_FEATURE_CACHE=off and STEELDEFECT_IMAGE_CACHE=off (they only save time)"
)


def default_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The cache folder: $STEELDEFECT_CACHE_DIR, else $XDG_CACHE_HOME/steeldefect, else ~/.cache/steeldefect."""
    if environ.get("STEELDEFECT_CACHE_DIR"):
        return Path(environ["STEELDEFECT_CACHE_DIR"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "steeldefect"


def versions() -> list[str]:
    """The library versions and oneDNN's instruction set (see steeldefect/__init__.py): both change the bits."""
    import keras
    import tensorflow as tf

    return [tf.__version__, keras.__version__, "onednn-isa=" + os.environ.get("ONEDNN_MAX_CPU_ISA", "native")]


@functools.cache
def code_hash(modules: tuple[str, ...]) -> str:
    """md5 of the code of these modules of the package (paths relative to it): of their syntax trees, so an
    edit of comments or layout keeps the key, any other edit (docstrings included) changes it."""
    package = Path(__file__).parent
    trees = [ast.dump(ast.parse((package / m).read_text())) for m in modules]
    return hashlib.md5("\n".join(trees).encode()).hexdigest()


def unusable(folder: Path, e: OSError, off: str = CACHES_OFF) -> UserError:
    return UserError(
        f"the steeldefect cache folder {folder} cannot be used ({e}). Free some space on its disk or fix its "
        f"permissions; or set STEELDEFECT_CACHE_DIR to a writable folder elsewhere; or {off}."
    )


def feature_key(p: TrainParams, seed: int, df: pd.DataFrame) -> str:
    """Everything the frozen features depend on: the images (their md5), the input size, the backbone (weights
    file content, cut, seed of a random init), the pooling, the mixed precision and the code and library versions
    that compute them."""
    weights = p.weights
    if weights not in (None, "imagenet"):
        weights = hashlib.md5(Path(weights).read_bytes()).hexdigest()
    key = {
        "images": list(df.md5),
        "image_size": list(p.image_size),
        "code": code_hash(FEATURE_CODE),
        "weights": weights,
        "seed": seed,
        "cut": p.backbone_layer,
        "pooling": p.head.pooling,
        "pool_size": p.head.pool_size,
        "versions": versions(),
    }
    if p.mixed_precision:  # only when set, so float32 keys (and caches) stay as they were
        key["mixed_precision"] = p.mixed_precision
    return hashlib.md5(json.dumps(key).encode()).hexdigest()


def image_cache_key(df: pd.DataFrame, image_size: tuple[int, int]) -> str:
    """What the cached decoded images depend on: the images in order (their md5), the size, the decoding code."""
    key = {
        "images": list(df.md5),
        "image_size": list(image_size),
        "code": code_hash(IMAGE_CODE),
        "tensorflow": versions()[0],
    }
    return hashlib.md5(json.dumps(key).encode()).hexdigest()


def selfcheck_key(files: list[Path], cpu: dict) -> str:
    """What an OpenVINO IR's self-check depends on: the content of `files` (model.xml, model.bin, reference.csv),
    the CPU (`cpu`: its model, flags and the instruction sets OpenVINO uses), the code of the predict path and the
    library versions."""
    key = {
        "files": [hashlib.md5(Path(f).read_bytes()).hexdigest() for f in files],
        "cpu": cpu,
        "code": code_hash(SELFCHECK_CODE),
        "versions": versions(),
    }
    return hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()


def read_entry(path: Path) -> dict | None:
    """The JSON entry at `path`, or None when there is none (a corrupt entry is reported and treated as missing)."""
    try:
        entry = json.loads(Path(path).read_text())
    except FileNotFoundError:  # none, or deleted by `steeldefect cache clear` meanwhile
        return None
    except ValueError as e:
        log.warning("cache entry %s is unreadable (%s): ignored", path, e)
        return None
    except OSError as e:
        raise unusable(Path(path).parent, e, "predict with --engine keras") from e
    return entry if isinstance(entry, dict) else None


def write_entry(path: Path, entry: dict) -> None:
    """Store `entry` as JSON at `path` atomically; a `steeldefect cache clear` meanwhile is reported, no error."""
    try:
        with path_for(path) as tmp:
            tmp.write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    except FileNotFoundError as e:
        log.warning("could not write the cache entry %s (%s): continuing without it", path, e)
    except OSError as e:
        raise unusable(Path(path).parent, e, "predict with --engine keras") from e


class FeatureCache:
    """Arrays in `folder/<key>.npy`, written atomically (temporary file, then rename)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The array stored under `key`, or None when there is none (a corrupt entry is reported and treated as
        missing: it will be written again)."""
        path = self.path(key)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:  # none, or deleted by `steeldefect cache clear` meanwhile
            return None
        except (ValueError, EOFError) as e:
            log.warning("feature cache entry %s is unreadable (%s): computing the features again", path, e)
            return None
        except OSError as e:
            raise unusable(self.folder, e) from e

    def save(self, key: str, array: np.ndarray) -> Path | None:
        """Store `array` under `key`; returns its path, or None when a `steeldefect cache clear` deleted the
        folder meanwhile (reported). Another writer of the same key is no error: the last rename wins."""
        path = self.path(key)
        try:
            with path_for(path) as tmp:
                np.save(tmp, array, allow_pickle=False)
        except FileNotFoundError as e:
            log.warning("could not write the feature cache entry %s (%s): continuing without it", path, e)
            return None
        except OSError as e:
            raise unusable(self.folder, e) from e
        return path


class ImageCache:
    """Decoded, resized images of one image list in `folder/<key>/images.{index,data-*}` (tf.data's cache
    format). A list not cached yet is written by its first full pass into a private `.<key>.*` folder, moved
    into place by `close()` only when complete: an interrupted run or a concurrent one (same key) never leaves
    or reads a partial cache, nor trips over tf.data's lock file."""

    def __init__(self, folder: Path | None, image_size: tuple[int, int]):
        self.folder, self.image_size = folder, image_size
        self.pending: dict[str, Path] = {}

    def prefix(self, df: pd.DataFrame) -> str | None:
        """The tf.data cache prefix for the images of `df` (None when the cache is off)."""
        if self.folder is None:
            return None
        key = image_cache_key(df, self.image_size)
        final = self.folder / key
        if (final / "images.index").is_file():
            log.info("decoded images of %d images read from %s", len(df), final)
            return str(final / "images")
        if key not in self.pending:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.pending[key] = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.folder))
            except OSError as e:
                raise unusable(self.folder, e) from e
            size = len(df) * self.image_size[0] * self.image_size[1] * 3 * 4
            log.info("decoded images of %d images (%.0f MB) will be cached in %s", len(df), size / 2**20, final)
        return str(self.pending[key] / "images")

    def close(self) -> None:
        """Move the complete caches into place; drop incomplete ones."""
        error = None
        for key, tmp in self.pending.items():
            try:
                if (tmp / "images.index").is_file():
                    os.replace(tmp, self.folder / key)
            except OSError as e:  # EEXIST, ENOTEMPTY: another run moved the same cache into place first
                error = error or (e if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) else None)
            shutil.rmtree(tmp, ignore_errors=True)
        self.pending.clear()
        if error:
            raise unusable(self.folder, error) from error


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def info(root: Path) -> dict[str, dict[str, int]]:
    """Per kind (features, images, selfcheck, pretrain): the number of complete entries and the bytes used
    (temporary entries of running or interrupted writers included)."""
    out = {}
    for kind in KINDS:
        folder = Path(root) / kind
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        complete = [e for e in entries if not e.name.startswith(".")]
        out[kind] = {"entries": len(complete), "bytes": sum(_size(e) for e in entries)}
    return out


def clear(root: Path, kinds: tuple[str, ...] = KINDS) -> int:
    """Delete the entries of the given kinds; returns the bytes freed. Runs in progress recompute what they
    need (a feature entry read before the deletion stays valid in their memory)."""
    freed = 0
    for kind in kinds:
        folder = Path(root) / kind
        if folder.is_dir():
            freed += _size(folder)
            shutil.rmtree(folder)
    return freed
