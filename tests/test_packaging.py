"""pyproject.toml declares what the code imports: `dependencies` exactly what the `steeldefect` command imports
(src/steeldefect/serve/ and every steeldefect module it imports, at module level or in a function), the `pipeline`
extra the rest of src/ and stages/, `dev` tests/ and bench/. Imports are read with `ast` and mapped to the
installed distributions; .ci/pip-install-check shows that a clean `pip install .` predicts."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions

from helpers import REPO

SRC = REPO / "src"
NOT_PREDICT = {"nncf"}  # serve/openvino_engine.py imports it in quantize() only: the export stage's int8 IR
SERVE = {"fastapi", "starlette", "uvicorn", "prometheus_client"}  # `steeldefect serve` only: the serve extra


def norm(name: str) -> str:
    """A distribution's normalized name; tensorflow-cpu (Linux x86-64) and tensorflow (elsewhere) count as one."""
    return re.sub(r"[-_.]+", "-", name).lower().removesuffix("-cpu")


def declared() -> dict[str, set[str]]:
    """{"dependencies" / extra: normalized distribution names} of pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: {norm(re.match(r"[\w.-]+", spec)[0]) for spec in specs} for group, specs in groups.items()}


@cache
def imports(path) -> set[str]:
    """The modules `path` imports anywhere; `from a import b` gives a and a.b (b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: a relative import; this check reads absolute ones"
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def predict_files() -> set:
    """The files of serve/ and of every steeldefect module they import, with the packages above them."""
    todo, seen = list((SRC / "steeldefect/serve").rglob("*.py")), set()
    while todo:
        if (path := todo.pop()) in seen:
            continue
        seen.add(path)
        for parts in (name.split(".") for name in imports(path) if name.split(".")[0] == "steeldefect"):
            for i in range(1, len(parts) + 1):
                base = SRC.joinpath(*parts[:i])
                todo += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
    return seen


def third_party(paths) -> dict[str, str]:
    """{top-level module: a file importing it} outside the standard library, steeldefect and the modules of the
    file's folder and tests/ (bench/ imports tests' helpers)."""
    found = {}
    for path in sorted(paths):
        local = {p.stem for d in (path.parent, REPO / "tests") for p in d.glob("*.py")}
        local |= {"steeldefect", *sys.stdlib_module_names}
        for top in sorted({name.split(".")[0] for name in imports(path)} - local):
            found.setdefault(top, str(path.relative_to(REPO)))
    return found


@cache
def distributions(module: str) -> frozenset[str]:
    return frozenset(norm(d) for d in packages_distributions().get(module, ["(not installed)"]))


def undeclared(found: dict[str, str], allowed: set[str]) -> list[str]:
    return [
        f"{top} ({where}): {set(distributions(top))}"
        for top, where in found.items()
        if not distributions(top) & allowed
    ]


def test_predict_needs_exactly_the_dependencies():
    found = third_party(predict_files())
    predict = {top: where for top, where in found.items() if top not in NOT_PREDICT | SERVE}
    deps = declared()["dependencies"]
    assert not undeclared(predict, deps)
    assert not deps - set().union(*map(distributions, predict)), "the steeldefect command does not import these"
    serve = {top: where for top, where in found.items() if top in SERVE}
    assert not undeclared(serve, declared()["serve"])
    assert serve.keys() == SERVE, "SERVE names modules the service no longer imports"


def test_src_and_stages_need_only_the_dependencies_and_pipeline():
    groups = declared()
    paths = [*SRC.rglob("*.py"), *(REPO / "stages").rglob("*.py")]
    assert not undeclared(third_party(paths), groups["dependencies"] | groups["pipeline"] | groups["serve"])


def test_tests_and_bench_need_only_declared_packages():
    paths = [*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    assert not undeclared(third_party(paths), set().union(*declared().values()))
