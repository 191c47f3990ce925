"""The OpenVINO IR checked again on the CPU that runs it.

The export stage checks the IR against Keras on the machine that exports it, but OpenVINO picks its kernels by
the CPU's instruction set (an int8 IR computes differently with VNNI than without): a line-side CPU can run a
different model from the one checked. So export leaves a reference set beside the IR (openvino/reference/:
16 validation images and their Keras outputs, `openvino_engine.write_reference`), and the first time
`steeldefect predict` runs the IR on a CPU it scores those images through the same predict path and applies the
export's own limits: every output (defect probability, per-type probabilities, defect map: those the reference
holds) within `export.openvino_tolerance` of Keras, and at most `export.openvino_max_changed` of the decisions
changed, at the export's threshold (a share: none of 16 while the limit is below 1/16; see
`openvino_engine.compare`). A pass is recorded in the cache folder (kind `selfcheck`), keyed by the IR and reference
files, the CPU and the code and library versions; a failure refuses the IR every time and is not recorded, so
nothing stale needs clearing after a fix.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from steeldefect import cache
from steeldefect.data.types import PREFIX
from steeldefect.errors import UserError
from steeldefect.serve.openvino_engine import IR_XML, REFERENCE_CSV, REFERENCE_DIR, REFERENCE_MAPS, compare

COLUMNS = ["file", "threshold", "tolerance", "max_changed"]  # and keras_probability and/or keras_p_<name> per type
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


def read_reference(ir_dir: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """openvino/reference/reference.csv and the Keras outputs it holds by name (`probability`, `classes` from the
    keras_p_<name> columns, `defect_map` and `type_maps` from their .npy files when there); UserError when it is
    missing (an IR exported before the self-check) or unreadable."""
    path = Path(ir_dir) / REFERENCE_DIR / REFERENCE_CSV
    try:
        table = pd.read_csv(path, dtype={"file": str})
        types = [c for c in table.columns if c.startswith("keras_" + PREFIX)]
        numbers = [c for c in ["keras_probability"] if c in table] + types + COLUMNS[1:]
        table = table[["file", *numbers]]  # KeyError: a column is missing
        table[numbers] = table[numbers].astype(float)
        if table.empty or len(numbers) == len(COLUMNS) - 1 or table.isna().any(axis=None):
            raise ValueError("no images, no Keras outputs, or empty values")
        expected = {"probability": table.keras_probability.to_numpy()} if "keras_probability" in table else {}
        expected.update({"classes": table[types].to_numpy()} if types else {})
        for name, file in REFERENCE_MAPS.items():
            if (path.parent / file).exists():
                expected[name] = np.load(path.parent / file)
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
    return table, expected


def self_check(engine, ir_dir: Path, image_size: Sequence[int], batch_size: int, cpu: dict | None = None) -> str:
    """Check the IR `engine` runs (from `ir_dir`) on this CPU (`cpu`: its `cpu_signature()`), unless it passed
    before; returns the line to print. UserError beyond the export's limits."""
    from steeldefect.serve.inference import predict_all

    ir_dir = Path(ir_dir)
    reference, expected = read_reference(ir_dir)
    cpu = cpu or cpu_signature()
    files = [ir_dir / IR_XML, (ir_dir / IR_XML).with_suffix(".bin"), ir_dir / REFERENCE_DIR / REFERENCE_CSV]
    files += [f for f in (ir_dir / REFERENCE_DIR / name for name in REFERENCE_MAPS.values()) if f.exists()]
    entry = cache.default_root() / cache.SELFCHECK / f"{cache.selfcheck_key(files, cpu)}.json"
    if (cache.read_entry(entry) or {}).get("passed") is True:
        return "self-check: passed earlier on this CPU (cached)"
    paths = [str(ir_dir / REFERENCE_DIR / name) for name in reference.file]
    try:
        got = predict_all(engine, paths, batch_size, image_size).outputs
    except UserError as e:
        raise UserError(
            f"{ir_dir / REFERENCE_DIR}: the self-check cannot score its reference images ({e}); {FIX}."
        ) from e
    missing = sorted(set(expected) - set(got))
    if missing or any(np.shape(expected[k]) != np.shape(got[k]) for k in expected):
        raise UserError(
            f"{ir_dir / REFERENCE_DIR}: the reference set holds outputs the IR in {ir_dir} does not give "
            f"({', '.join(missing) or 'other shapes'}): they were not exported together. Export the IR again "
            "(`dvc repro export`), or predict with --engine keras."
        )
    threshold, tolerance, max_changed = reference[COLUMNS[1:]].iloc[0]
    figures = compare(expected, got, lambda _: threshold)
    n, changed, diff = len(reference), figures["decisions_changed"], figures["max_probability_difference"]
    per_type = " on each defect type" if figures.get("decisions_on") == "classes" else ""
    if diff > tolerance or figures["decisions_changed_share"] > max_changed:
        raise UserError(
            f"{ir_dir / IR_XML}: the OpenVINO IR disagrees with the Keras model on this CPU "
            f"({cpu.get('openvino_device', 'this CPU')}): on the {n} reference images of {ir_dir / REFERENCE_DIR}, "
            f"largest probability difference {diff:.3g} (limit export.openvino_tolerance = {tolerance:g}), "
            f"{changed} of {n} decisions changed at threshold {threshold:g}{per_type} (limit "
            f"export.openvino_max_changed = {max_changed:g}: at most {int(max_changed * n)} of {n}). It passed the "
            "export's check where it was exported; here it computes differently (OpenVINO's kernels depend on the "
            f"CPU's instruction set, int8 most), or its files changed since. Nothing was predicted: {FIX}."
        )
    cache.write_entry(entry, {"passed": True, "ir": str(ir_dir.resolve() / IR_XML), "cpu": cpu, **figures})
    return f"self-check on this CPU: passed (max difference {diff:.2g}, {changed} of {n} decisions changed)"
