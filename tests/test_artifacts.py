"""The exported model is a DVC artifact (dvc.yaml, `artifacts:`): a line-side machine fetches a registered version
with `dvc artifacts get <repo> steel-defect-classifier` from the project's git repository and its DVC remote (a
local folder standing in for S3 / GCS / SSH) and predicts with it, no pipeline and no checkout needed."""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run

pytestmark = pytest.mark.slow

NAME = "steel-defect-classifier"
# no DVC Studio (no token: `dvc artifacts get` then goes straight to the DVC remote), no analytics
OFFLINE = {"DVC_STUDIO_TOKEN": "", "DVC_NO_ANALYTICS": "1"}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_artifact_is_the_exported_model_folder():
    (artifact,) = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"].items()
    name, spec = artifact
    assert name == NAME and spec["type"] == "model" and spec["desc"] and spec["labels"]
    assert spec["path"] == "models"  # what `steeldefect predict --model-dir` reads


def test_dvc_artifacts_get_fetches_the_model_from_the_remote(pipeline, tmp_path):
    remote = tmp_path / "remote"
    origin = tmp_path / "origin"  # the published project: the pipeline's commit, a DVC remote, a version tag
    run(["git", "clone", "-q", str(pipeline), str(origin)], tmp_path)
    run(["dvc", "remote", "add", "-d", "store", str(remote)], origin)
    run(["git", "commit", "-qam", "remote"], origin)
    # push only the model folder's outputs (train: the checkpoint; export: the exported model), read from the
    # pipeline's cache; the fixture itself is left untouched
    run(["dvc", "config", "--local", "cache.dir", str(pipeline / ".dvc" / "cache")], origin)
    run(["dvc", "push", "train", "export"], origin, env=OFFLINE)
    run(["git", "tag", "-a", f"{NAME}@v0.1.0", "-m", "Registering artifact version v0.1.0"], origin)  # GTO's tag

    line = tmp_path / "line"  # a line-side machine: no repository, no cache
    line.mkdir()
    # a URL, as for a hosted repository: DVC clones it and reads the remote its committed config names (a plain
    # local path would open `origin` in place, and its cache, the pipeline's, would serve the files instead)
    run(["dvc", "artifacts", "get", origin.as_uri(), NAME, "-o", "model"], line, env=OFFLINE)
    model = line / "model"
    for name in ("model.json", "model.weights.h5", "model_meta.json", "threshold.json", "openvino/model.xml"):
        assert md5(model / name) == md5(pipeline / "models" / name), name

    image = sorted((pipeline / "data" / "synthetic" / "train_images").glob("*.jpg"))[0]
    steeldefect = str(Path(sys.executable).parent / "steeldefect")
    run([steeldefect, "predict", str(image), "--model-dir", "model", "--output", "p.csv", "--no-progress"], line)
    (row,) = list(csv.DictReader((line / "p.csv").open()))
    assert row["error"] == "" and 0.0 <= float(row["probability"]) <= 1.0
