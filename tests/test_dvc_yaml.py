"""dvc.yaml lists exactly each stage's code (its script, every steeldefect module the script imports, and the package's
__init__.py, which pins oneDNN's instruction set for every stage), passes
every path a stage reads or writes on its command line, and tracks every key of params.yaml key by key."""

from __future__ import annotations

import ast
import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from helpers import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path, seen: set[Path]) -> set[Path]:
    """The steeldefect module files `path` imports, transitively."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steeldefect"):
            for name in [node.module] + [f"{node.module}.{a.name}" for a in node.names]:
                module = REPO / "src" / (name.replace(".", "/") + ".py")
                if module.is_file() and module not in seen:
                    seen.add(module)
                    imported_modules(module, seen)
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_exact(name):
    stage = STAGES[name]
    wdir = REPO / stage.get("wdir", ".")
    deps = {(wdir / d).resolve() for d in stage["deps"] if isinstance(d, str) and not d.startswith("$")}
    script = REPO / "stages" / f"{name}.py"
    code = {p for p in deps if p.suffix == ".py"}
    assert code == {script, REPO / "src/steeldefect/__init__.py"} | imported_modules(script, set())


def outputs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_paths_are_command_arguments(name):
    """Each `--name PATH` of the command is a dependency or output of the stage (or the folder holding them), and
    the script itself writes no path: dvc.yaml is the one place they are written."""
    stage = STAGES[name]
    wdir = REPO / stage.get("wdir", ".")
    tracked = {(wdir / p).resolve() for p in stage["deps"] + outputs(stage) if not p.startswith("$")}
    args = shlex.split(stage["cmd"].removeprefix("cd .. && "))[2:]
    assert args and all(a.startswith("--") for a in args[::2]), stage["cmd"]
    for path in (REPO / a for a in args[1::2]):
        assert any(t == path.resolve() or path.resolve() in t.parents for t in tracked), f"{name}: {path}"
    script = (REPO / "stages" / f"{name}.py").read_text()
    literals = {
        n.value for n in ast.walk(ast.parse(script)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert not {v for v in literals if re.match(r"(data|models|metrics|plots)/", v)}


def leaves(d: dict, prefix: str = "") -> set[str]:
    return set().union(*(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"} for k, v in d.items()))


def tracked_params(stages: dict) -> set[str]:
    """The params.yaml keys the stages list under `params:` (a section name tracks all of its keys)."""
    tracked = set()
    for stage in stages.values():
        for entry in stage.get("params", []):
            tracked |= set(next(iter(entry.values()))) if isinstance(entry, dict) else {entry}
    return tracked


def untracked(stages: dict, params: dict) -> set[str]:
    """The leaf keys of params.yaml no stage lists: a change to one would rerun nothing."""
    tracked = tracked_params(stages)
    return {k for k in leaves(params) if not any(k == t or k.startswith(f"{t}.") for t in tracked)}


def test_every_param_is_tracked_key_by_key():
    """No stage depends on a whole section (a change to one key reruns only the stages that read it), every key of
    params.yaml is listed by some stage (adding a param needs its dvc.yaml entry), and every listed key exists."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tracked = tracked_params(STAGES)
    assert not tracked & set(params) - {"seed"}, "a whole section is a dependency"
    assert not untracked(STAGES, params), "params.yaml keys no stage of dvc.yaml lists"
    keys = leaves(params)
    assert not {t for t in tracked if not any(k == t or k.startswith(f"{t}.") for k in keys)}, "not in params.yaml"


def test_a_param_without_a_dvc_yaml_entry_is_caught():
    stages = copy.deepcopy(STAGES)
    stages["evaluate"]["params"].remove("evaluate.gallery_size")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert untracked(stages, params) == {"evaluate.gallery_size"}
    assert untracked(STAGES, {**params, "new_section": {"new_key": 1}}) == {"new_section.new_key"}
