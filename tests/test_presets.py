"""Presets (conf/preset/NAME.yaml, run by `steeldefect preset NAME`): each resolves to the params the README's
preset table documents, a later -S wins, and `dvc exp run` keeps params.yaml as the user wrote it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from steeldefect.errors import UserError
from steeldefect.presets import PLACEHOLDER, apply, choices, preset_overrides, resolve

from helpers import BIN, REPO, make_project, repo_params, run

PRESETS = ("demo", "scratch", "imagenet", "localize")


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # presets are read from conf/preset/, params from params.yaml, as the command does


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


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_resolves_to_the_documented_params(name):
    table = documented()
    assert len(table[name]) >= 8
    params = repo_params()
    for key, values in map(choices, preset_overrides(name)):  # what `dvc exp run -S ...` makes of params.yaml
        params = apply(params, key, *values)
    for key, value in table[name].items():
        assert get(params, key) == value, key
    resolve(name, ["data.source=/d"])  # valid


def test_demo_is_params_yaml_as_it_is():
    assert preset_overrides("demo") == []


def test_a_later_set_param_wins():
    p = resolve("scratch", ["data.source=/d", "train.epochs=3", "train.image_size=[64, 400]", "train.epochs=4"])
    assert (p.data.source, p.train.epochs, p.train.image_size, p.train.augment) == ("/d", 4, (64, 400), True)


def test_a_grid_is_checked_choice_by_choice():
    assert resolve("scratch", ["data.source=/d", "train.learning_rate=0.001,0.003"]).train.learning_rate == 0.001
    with pytest.raises(UserError, match=r"-S train.epochs=3,0: train.epochs = 0 is not allowed"):
        resolve("scratch", ["data.source=/d", "train.epochs=3,0"])


@pytest.mark.parametrize("name", ["scratch", "imagenet", "localize"])
def test_a_real_data_preset_needs_the_data_folder(name):
    with pytest.raises(UserError, match=rf"preset {name} trains on your own images.*-S data.source=.*{PLACEHOLDER}"):
        resolve(name, [])


def test_unknown_keys_and_bad_values_are_refused(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"preset scratch .* -S train.epoch=3: unknown key 'train.epoch'"):
        resolve("scratch", ["data.source=/d", "train.epoch=3"])
    with pytest.raises(UserError, match=r"train.image_size = \[16, 16\] is not allowed"):
        resolve("imagenet", ["data.source=/d", "train.image_size=16"])
    with pytest.raises(UserError, match=r"no preset 'nope' \(presets: demo, imagenet, localize, scratch\)"):
        resolve("nope", [])
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "conf/preset").mkdir(parents=True)
    (tmp_path / "conf/preset/typo.yaml").write_text("train:\n  head:\n    dense_unit: 64\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"preset typo \(conf/preset/typo.yaml\): unknown key 'train.head.dense_unit'"):
        resolve("typo", [])


def queued_params(root: Path, name: str) -> dict:
    """params.yaml of the queued experiment `name`, as `dvc exp show` reports it."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    revs = [rev for entry in shown for exp in entry.get("experiments") or [] for rev in exp["revs"]]
    (queued,) = [rev for rev in revs if rev["name"] == name]
    return queued["data"]["params"]["params.yaml"]["data"]


def project_with_comments(tmp_path: Path) -> Path:
    """A git + DVC copy of the project with the repository's params.yaml (comments and all), conf/ and .dvc/config."""
    root = make_project(tmp_path, {})
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "params.yaml as written, conf, dvc config"], root)
    return root


@pytest.mark.slow
def test_steeldefect_preset_queues_a_dvc_experiment(tmp_path):
    root = project_with_comments(tmp_path)
    cmd = [str(BIN / "steeldefect"), "preset", "imagenet", "-S", "data.source=/d", "-S", "train.epochs=3"]
    said = run([*cmd, "--queue", "-n", "big"], root).stderr
    assert "dvc exp run -S data.source=SET-data.source-TO-YOUR-FOLDER -S train.epochs=30" in said
    try:
        params = queued_params(root, "big")
        for key, value in {**documented()["imagenet"], "data.source": "/d", "train.epochs": 3}.items():
            assert get(params, key) == value, key
        assert (root / "params.yaml").read_text() == (REPO / "params.yaml").read_text()  # the workspace as it was
    finally:
        run(["dvc", "queue", "remove", "--all"], root)
    refused = run([str(BIN / "steeldefect"), "preset", "scratch", "--queue"], root, check=False)
    assert refused.returncode == 2 and "give their folder" in refused.stderr


@pytest.mark.slow
def test_dvc_exp_run_keeps_a_hand_edit_of_params_yaml_and_its_comments(tmp_path):
    """Done when: a hand edit of params.yaml, with a comment, survives `dvc exp run` (nothing regenerates the file:
    .dvc/config as the repository has it) and shows in `dvc params diff`; -S on another key keeps the comments."""
    root = project_with_comments(tmp_path)
    text = (root / "params.yaml").read_text()
    assert text.count("  gallery_size: 16\n") == 1
    edited = text.replace("  gallery_size: 16\n", "  gallery_size: 8                 # hand edit: a smaller gallery\n")
    (root / "params.yaml").write_text(edited)
    run(["dvc", "exp", "run", "--queue", "-n", "hand", "-S", "evaluate.target_recall=0.95"], root)
    try:
        assert (root / "params.yaml").read_text() == edited
        assert re.search(r"evaluate\.gallery_size\s+16\s+8", run(["dvc", "params", "diff"], root).stdout)
        params = queued_params(root, "hand")
        assert (params["evaluate"]["gallery_size"], params["evaluate"]["target_recall"]) == (8, 0.95)
        stashed = run(["git", "show", "refs/exps/celery/stash:params.yaml"], root).stdout  # what the exp runs with
        assert "gallery_size: 8                 # hand edit: a smaller gallery" in stashed
        assert "target_recall: 0.95" in stashed
        comments = [line for line in edited.splitlines() if line.lstrip().startswith("#")]
        assert comments and all(line in stashed.splitlines() for line in comments)
    finally:
        run(["dvc", "queue", "remove", "--all"], root)
