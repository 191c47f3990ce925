"""The OpenVINO IR checked again on the CPU that runs it.

The export stage checks the IR against Keras on the machine that exports it, but OpenVINO picks its kernels by
the CPU's instruction set (an int8 IR computes differently with VNNI than without): a line-side CPU can run a
different model from the one checked. So export leaves a reference set beside the IR (openvino/reference/:
16 validation images and their Keras probabilities, `openvino_engine.write_reference`), and the first time
`steeldefect predict` runs the IR on a CPU it scores those images through the same predict path and applies the
export's own limits: every probability within `export.openvino_tolerance` of Keras, and at most
`export.openvino_max_changed` of the decisions at the export's threshold changed (a share: none of 16 while the
limit is below 1/16). A pass is recorded in the cache folder (kind `selfcheck`), keyed by the IR and reference
files, the CPU and the code and library versions; a failure refuses the IR every time and is not recorded, so
nothing stale needs clearing after a fix.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from steeldefect.errors import UserError
from steeldefect.serve.openvino_engine import IR_XML, REFERENCE_CSV, REFERENCE_DIR, compare
from steeldefect.train import cache

COLUMNS = ["file", "keras_probability", "threshold", "tolerance", "max_changed"]
FIX = "predict with --engine keras, or export an fp32 IR (export.openvino: fp32 in params.yaml, `dvc repro export`)"


def cpu_signature() -> dict:
    """What decides the kernels OpenVINO runs: the CPU's model names and flags (/proc/cpuinfo; elsewhere what
    `platform` says), the device name and instruction sets OpenVINO reports, and its version."""
    import openvino as ov

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    cpu = sorted({" ".join(line.split()) for line in lines if line.startswith(("model name", "flags"))})
    core = ov.Core()
    return {
        "cpu": cpu or [platform.machine(), platform.processor()],
        "openvino_device": core.get_property("CPU", "FULL_DEVICE_NAME"),
        "openvino_isa": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "openvino": ov.get_version(),
    }


def read_reference(ir_dir: Path) -> pd.DataFrame:
    """openvino/reference/reference.csv; UserError when it is missing (an IR exported before the self-check) or
    unreadable."""
    path = Path(ir_dir) / REFERENCE_DIR / REFERENCE_CSV
    try:
        table = pd.read_csv(path, dtype={"file": str})[COLUMNS]
        table[COLUMNS[1:]] = table[COLUMNS[1:]].astype(float)
        if table.empty or table[COLUMNS[1:]].isna().any(axis=None):
            raise ValueError("no images, or empty values")
    except FileNotFoundError as e:
        raise UserError(
            f"{path}: not found, so the OpenVINO IR in {ir_dir} cannot be checked on this CPU (it was exported "
            "before the export stage wrote a reference set beside it). Export it again (`dvc repro export`), or "
            "predict with --engine keras."
        ) from e
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"{path}: cannot read the self-check's reference ({type(e).__name__}: {e}); export the IR again "
            "(`dvc repro export`), or predict with --engine keras."
        ) from e
    return table


def self_check(engine, ir_dir: Path, image_size: Sequence[int], batch_size: int, cpu: dict | None = None) -> str:
    """Check the IR `engine` runs (from `ir_dir`) on this CPU (`cpu`: its `cpu_signature()`), unless it passed
    before; returns the line to print. UserError beyond the export's limits."""
    from steeldefect.serve.inference import predict_paths

    ir_dir = Path(ir_dir)
    reference = read_reference(ir_dir)
    cpu = cpu or cpu_signature()
    files = [ir_dir / IR_XML, (ir_dir / IR_XML).with_suffix(".bin"), ir_dir / REFERENCE_DIR / REFERENCE_CSV]
    entry = cache.default_root() / cache.SELFCHECK / f"{cache.selfcheck_key(files, cpu)}.json"
    if (cache.read_entry(entry) or {}).get("passed") is True:
        return "self-check: passed earlier on this CPU (cached)"
    paths = [str(ir_dir / REFERENCE_DIR / name) for name in reference.file]
    try:
        got = predict_paths(engine, paths, batch_size, image_size)
    except UserError as e:
        raise UserError(
            f"{ir_dir / REFERENCE_DIR}: the self-check cannot score its reference images ({e}); {FIX}."
        ) from e
    threshold, tolerance, max_changed = reference[COLUMNS[2:]].iloc[0]
    figures = compare(reference.keras_probability.to_numpy(), got, lambda _: threshold)
    n, changed, diff = len(got), figures["decisions_changed"], figures["max_probability_difference"]
    if diff > tolerance or figures["decisions_changed_share"] > max_changed:
        raise UserError(
            f"{ir_dir / IR_XML}: the OpenVINO IR disagrees with the Keras model on this CPU "
            f"({cpu.get('openvino_device', 'this CPU')}): on the {n} reference images of {ir_dir / REFERENCE_DIR}, "
            f"largest probability difference {diff:.3g} (limit export.openvino_tolerance = {tolerance:g}), "
            f"{changed} of {n} decisions changed at threshold {threshold:g} (limit export.openvino_max_changed = "
            f"{max_changed:g}: at most {int(max_changed * n)} of {n}). It passed the export's check where it was "
            "exported; here it computes differently (OpenVINO's kernels depend on the CPU's instruction set, int8 "
            f"most), or its files changed since. Nothing was predicted: {FIX}."
        )
    cache.write_entry(entry, {"passed": True, "ir": str(ir_dir.resolve() / IR_XML), "cpu": cpu, **figures})
    return f"self-check on this CPU: passed (max difference {diff:.2g}, {changed} of {n} decisions changed)"
