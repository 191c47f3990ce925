"""Presets: named groups of params (conf/preset/NAME.yaml, the keys they change) run as one DVC experiment.

    steeldefect preset scratch -S data.source=/path/to/severstal [--queue -n NAME ...]

runs `dvc exp run -S key=value ...` with one -S per key of the preset, then the arguments given (so a later -S
wins). DVC's -S edits params.yaml for that experiment only and keeps its comments: params.yaml stays the one
place defaults are written. The command first checks the params the experiment would run with (unknown keys,
types, ranges, as every stage does), and refuses a real-data preset whose data.source is still the placeholder:
a queued experiment would otherwise fail in its prepare stage, maybe hours later.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from steeldefect.errors import UserError
from steeldefect.params import Params, parse_params, read_yaml

PRESETS = Path("conf/preset")
PLACEHOLDER = "SET-data.source-TO-YOUR-FOLDER"  # data.source of a real-data preset until -S data.source=... is given


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of a nested mapping."""
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def preset_overrides(name: str) -> list[str]:
    """`key=value` for each key of conf/preset/NAME.yaml, as DVC's -S reads it."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))) or "none here"
        raise UserError(f"{path}: no preset {name!r} (presets: {known}); run steeldefect preset in the project root.")
    tree = read_yaml(path) or {}
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in leaves(tree).items()]


def choices(item: str) -> tuple[str, list]:
    """The key of a -S `key=value` and the value's choices, read as YAML as DVC does: one, or several for a DVC
    grid (`-S train.learning_rate=0.001,0.003` queues one experiment per choice)."""
    key, sep, value = item.removeprefix("params.yaml:").partition("=")
    if not sep:
        raise UserError(f"-S {item}: expected key=value, e.g. -S train.epochs=5.")
    try:
        return key, yaml.safe_load(f"[{value}]") or [value]
    except yaml.YAMLError:
        return key, [value]


def apply(raw: dict, key: str, value: object) -> dict:
    """A copy of the params mapping `raw` with the dotted `key` set to `value`."""
    raw = copy.deepcopy(raw)
    *sections, last = key.split(".")
    node = raw
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"-S {key}: {part} is not a section of params.yaml.")
    node[last] = value
    return raw


def resolve(name: str, overrides: list[str], params_file: Path = Path("params.yaml")) -> Params:
    """The params an experiment with preset `name` and the -S `overrides` runs with (a later -S wins), checked;
    each further choice of a grid is checked too."""
    raw = read_yaml(params_file) or {}
    keys = [choices(item) for item in preset_overrides(name) + overrides]
    for key, values in keys:
        raw = apply(raw, key, values[0])
    try:
        params = parse_params(raw)
        for key, values in keys:
            for value in values[1:]:
                parse_params(apply(raw, key, value))
    except UserError as e:
        given = "".join(f" -S {o}" for o in overrides)
        what = f"{params_file} + preset {name} ({PRESETS / name}.yaml){given}"
        raise UserError(f"{what}: {str(e).removeprefix('params.yaml: ')}") from None
    if params.data.source == PLACEHOLDER:
        raise UserError(
            f"preset {name} trains on your own images: give their folder, e.g. "
            f"`steeldefect preset {name} -S data.source=/path/to/severstal` ({PRESETS / name}.yaml sets data.source "
            f"to the placeholder {PLACEHOLDER})."
        )
    return params


def run_preset(name: str, dvc_args: list[str]) -> int:
    """Check, then run `dvc exp run` with the preset's -S and `dvc_args`; returns DVC's exit code."""
    user = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    user.add_argument("-S", "--set-param", action="append", default=[])
    resolve(name, user.parse_known_args(dvc_args)[0].set_param)
    cmd = ["dvc", "exp", "run", *[a for kv in preset_overrides(name) for a in ("-S", kv)], *dvc_args]
    print(shlex.join(cmd), file=sys.stderr)
    return subprocess.run([sys.executable, "-m", *cmd]).returncode
