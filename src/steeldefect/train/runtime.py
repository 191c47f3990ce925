"""Runtime settings: how and where training runs, not what it learns, so they are not params (DVC does not
track them, and changing one never invalidates a trained model). Each is an environment variable with a default:

    STEELDEFECT_STRATEGY       default | mirrored | multi_worker      (default: default)
    STEELDEFECT_FEATURE_CACHE  on | off                              (default: on)
    STEELDEFECT_IMAGE_CACHE    on | off                              (default: off)
    STEELDEFECT_TRAIN_BACKUP   on | off: a killed train resumes      (default: on; steeldefect.train.phases)
    STEELDEFECT_CACHE_DIR      the cache folder                      (default: $XDG_CACHE_HOME/steeldefect,
                                                                      else ~/.cache/steeldefect)

The caches are content-keyed (see steeldefect.cache), so where they live or whether they are used changes the
time a run takes, never its result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steeldefect.cache import default_root
from steeldefect.errors import UserError
from steeldefect.params import TrainParams

STRATEGIES = ("default", "mirrored", "multi_worker")
SWITCH = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}


@dataclass(frozen=True)
class Runtime:
    # "default" (one device), "mirrored" (all GPUs of this machine, else its CPU devices) or "multi_worker"
    # (several machines, configured by TF_CONFIG); train.batch_size stays the global batch
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    # frozen backbone: features computed once per image, kept in this folder (None = recompute every run)
    feature_cache: Path | None = None
    # decoded, resized images kept on disk between epochs and runs (None = off)
    image_cache: Path | None = None
    # a snapshot after every training epoch, so a killed run resumes where it stopped (None = off)
    backup: Path | None = None


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in SWITCH:
        raise UserError(f"environment: {name} = {environ[name]!r} is not allowed; expected on or off.")
    return SWITCH[value]


def load_runtime(environ: Mapping[str, str] = os.environ) -> Runtime:
    """The runtime settings from the environment variables above (defaults for those not set)."""
    strategy = environ.get("STEELDEFECT_STRATEGY", "").strip() or "default"
    if strategy not in STRATEGIES:
        raise UserError(
            f"environment: STEELDEFECT_STRATEGY = {strategy!r} is not allowed; expected one of {', '.join(STRATEGIES)}."
        )
    root = default_root(environ)
    return Runtime(
        strategy=strategy,
        feature_cache=root / "features" if _switch(environ, "STEELDEFECT_FEATURE_CACHE", True) else None,
        image_cache=root / "images" if _switch(environ, "STEELDEFECT_IMAGE_CACHE", False) else None,
        backup=root / "train" if _switch(environ, "STEELDEFECT_TRAIN_BACKUP", True) else None,
    )


def describe(runtime: Runtime, p: TrainParams) -> str:
    """The runtime settings in effect for training with `p`, in one line (the train stage prints it)."""
    if p.supervision == "mask":
        features = "not used (train.supervision mask trains the whole network)"
    elif not p.freeze_backbone:
        features = "not used (train.freeze_backbone is false: the backbone trains)"
    elif p.augment:
        features = "not used (train.augment changes the images, so their features, every epoch)"
    else:
        features = str(runtime.feature_cache or "off")
    return (
        f"runtime settings (environment, not params): strategy {runtime.strategy}, feature cache {features}, "
        f"image cache {runtime.image_cache or 'off'}, training backup {runtime.backup or 'off'}"
    )


def check_precision(p: TrainParams, environ: Mapping[str, str] = os.environ) -> None:
    """bfloat16 on a CPU needs oneDNN's AVX-512 kernels, which the AVX2 pin (steeldefect/__init__.py) turns off:
    refuse before training rather than fail in the first convolution."""
    isa = environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if p.mixed_precision != "mixed_bfloat16" or isa == "ALL" or isa.startswith(("AVX512", "AVX10")):
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        raise UserError(
            f"train.mixed_precision = 'mixed_bfloat16' needs oneDNN's AVX-512 bfloat16 kernels on a CPU, but oneDNN "
            f"is capped at {isa} (the pin that gives the same bits on every CPU). Set STEELDEFECT_CPU_ISA=native to "
            "train in bfloat16 on a CPU that has them (AVX512_BF16 or AMX), train on a GPU, or set "
            "train.mixed_precision: null."
        )
