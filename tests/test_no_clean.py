"""A set with no clean images (one folder per defect type, no clean folder, no masks) through the prepare and split
stages as processes: the log and metrics/data.json say the set has no clean images, and the split is stratified by
type."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from layout_trees import Sample, write_folders

from steeldefect.data.prepare import NO_CLEAN_NOTE

from helpers import repo_params, run, stage_cmd

pytestmark = pytest.mark.slow  # stage processes


def test_prepare_and_split_stages_on_type_folders_without_clean_images(tmp_path):
    rng = np.random.default_rng(0)
    types = {"inclusion": 12, "patches": 9, "scratches": 6}
    samples = [
        Sample(f"{name}_{i}", rng.integers(40, 200, (32, 32), dtype=np.uint8), name, None)
        for name, n in types.items()
        for i in range(n)
    ]
    write_folders(samples, tmp_path / "source")
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"data": {"source": str(tmp_path / "source")}})))
    log = run(stage_cmd("prepare"), tmp_path).stderr
    assert "27 images (27 defective, 0 clean), defect classes: 1 inclusion, 2 patches, 3 scratches" in log
    assert NO_CLEAN_NOTE in log and "train.target: classes" in NO_CLEAN_NOTE
    data = json.loads((tmp_path / "metrics/data.json").read_text())
    assert (data["has_clean_images"], data["note"], data["clean"]) == (False, NO_CLEAN_NOTE, 0)
    assert data["images_per_class"] == types and data["duplicate_mask_rows_dropped"] == 0
    classes = pd.read_csv(tmp_path / "data/prepared/classes.csv")
    assert classes.to_dict("list") == {"ClassId": [1, 2, 3], "name": list(types)}

    run(stage_cmd("split"), tmp_path)
    report = json.loads((tmp_path / "metrics/split.json").read_text())
    assert report["stratified_by"] == "defect classes (no clean images)" and report["defective"] == report["sizes"]
    test = pd.read_csv(tmp_path / "data/split/test.csv", dtype={"classes": str})
    assert sorted(set(test.classes)) == ["1", "2", "3"]  # every type in the test split
