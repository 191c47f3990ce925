"""Presets (DVC's Hydra composition of conf/): each resolves to the params the README's preset table documents,
the default composition is params.yaml, and the real `dvc exp run -S preset=...` composes them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from steeldefect.params import parse_params

from helpers import REPO, TINY_PARAMS, make_project, run

PRESETS = ("demo", "scratch", "imagenet")


def compose(tmp_path: Path, overrides: list[str]) -> dict:
    """What `dvc exp run -S ...` writes to params.yaml (the function DVC calls)."""
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), overrides)
    return yaml.safe_load(out.read_text())


def documented() -> dict[str, dict[str, object]]:
    """{preset: {dotted key: value}} from the README table whose header is `| param | demo ... |`."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| param | `demo`"))
    table: dict[str, dict[str, object]] = {name: {} for name in PRESETS}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        key, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        for name, cell in zip(PRESETS, cells):
            table[name][key.strip("`")] = yaml.safe_load(re.search(r"`([^`]*)`", cell).group(1))
    return table


def get(params: dict, dotted: str) -> object:
    for part in dotted.split("."):
        params = params[part]
    return params


def test_the_default_composition_is_params_yaml(tmp_path):
    assert compose(tmp_path, []) == yaml.safe_load((REPO / "params.yaml").read_text())
    assert compose(tmp_path, ["preset=demo"]) == compose(tmp_path, [])


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_resolves_to_the_documented_params(tmp_path, name):
    table = documented()
    assert len(table[name]) >= 8
    params = compose(tmp_path, [f"preset={name}"])
    parse_params(params)  # valid
    for key, value in table[name].items():
        assert get(params, key) == value, key
    # a later -S still wins over the preset
    assert get(compose(tmp_path, [f"preset={name}", "train.epochs=3"]), "train.epochs") == 3


@pytest.mark.slow
def test_dvc_exp_run_switches_preset_with_one_set_param(tmp_path):
    root = make_project(tmp_path, TINY_PARAMS)
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "presets"], root)
    run(["dvc", "exp", "run", "--queue", "-n", "big", "-S", "preset=imagenet", "-S", "data.source=/d"], root)
    try:
        shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
        revs = [rev for entry in shown for exp in entry.get("experiments") or [] for rev in exp["revs"]]
        (queued,) = [rev for rev in revs if rev["name"] == "big"]
        params = queued["data"]["params"]["params.yaml"]["data"]
        for key, value in {**documented()["imagenet"], "data.source": "/d"}.items():
            assert get(params, key) == value, key
    finally:
        run(["dvc", "queue", "remove", "--all"], root)
