"""dvc.yaml lists exactly each stage's code: its script and every steeldefect module the script imports."""

from __future__ import annotations

import ast
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
    assert code == {script} | imported_modules(script, set())
