"""Layouts end to end: the prepare stage as a process (log, outputs, nothing written on bad input), the real
magnetic-tile images rearranged into every layout, and `dvc exp run -S data.source=DIR` through every stage."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from layout_trees import Sample, write_coco, write_published
from PIL import Image

from steeldefect.data.dataset import load_masks
from steeldefect.data.prepare import prepare

from helpers import REPO, TINY_PARAMS, defaults, make_project, merge, repo_params, run, shared, stage_cmd

pytestmark = pytest.mark.slow  # stage processes, a DVC pipeline, 1,344 real images in six layouts


def _samples(n: int = 40, size: int = 64) -> list[Sample]:
    """Noise images; defective ones carry a bright square, exactly their mask, of class a or b."""
    rng, out = np.random.default_rng(1), []
    for i in range(n):
        image = rng.integers(40, 120, (size, size), dtype=np.uint8)
        if i % 2:
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(0, size - 12, 2)
            mask[y : y + 12, x : x + 12] = True
            image[mask] = 230
            out.append(Sample(f"s{i:02d}", image, "ab"[i % 4 // 2], mask))
        else:
            out.append(Sample(f"s{i:02d}", image, None, None))
    return out


def _digest(root: Path) -> dict[str, str]:
    skip = ("source", ".git", ".dvc")
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and not set(skip) & set(p.relative_to(root).parts))
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def project(tmp_path) -> Path:
    write_published(_samples(12, 32), tmp_path / "source")
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"data": {"source": str(tmp_path / "source")}})))
    return tmp_path


def test_prepare_stage_logs_layout_classes_and_skipped_images(project):
    mask = next((project / "source").rglob("s01.png"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask)
    params = {"data": {"source": str(project / "source")}, "prepare": {"on_bad_image": "skip"}}
    (project / "params.yaml").write_text(yaml.safe_dump(repo_params(params)))
    log = run(stage_cmd("prepare"), project).stderr
    assert "layout pairs (detected), 11 images (5 defective, 6 clean), defect classes: 1 MT_A, 2 MT_B" in log
    assert "skipped MT_A/Imgs/s01.jpg: mask" in log and "is 5x5 pixels but its image is 32x32" in log
    metrics = json.loads((project / "metrics/data.json").read_text())
    assert metrics["layout"] == "pairs" and metrics["class_names"] == {"1": "MT_A", "2": "MT_B"}
    classes = pd.read_csv(project / "data/prepared/classes.csv")
    assert classes.to_dict("list") == {"ClassId": [1, 2], "name": ["MT_A", "MT_B"]}
    excluded = pd.read_csv(project / "data/prepared/excluded.csv")
    assert excluded.ImageId.tolist() == ["MT_A/Imgs/s01.jpg"]


def test_prepare_stage_refuses_a_bad_tree_and_writes_nothing(project):
    run(stage_cmd("prepare"), project)
    before = _digest(project)
    (next((project / "source").rglob("s03.png")).with_name("s03_mask.png")).write_bytes(b"")
    proc = run(stage_cmd("prepare"), project, check=False)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "s03.jpg: two masks" in message, message
    assert _digest(project) == before


def _by_md5(folder: Path) -> dict[str, tuple[int, np.ndarray | None]]:
    """{md5 of the image file: (label, union of its masks or None)}: images are matched across layouts by content
    (MVTec AD and KolektorSDD2 renumber the files)."""
    images, masks, excluded, _ = prepare(folder, "fail", defaults().data)
    assert excluded.empty and images.md5.is_unique, folder
    out = {}
    for r in images.itertuples():
        found = load_masks(masks, r.ImageId, r.height, r.width)
        out[r.md5] = (r.label, np.logical_or.reduce(list(found.values())) if found else None)
    return out


def test_magnetic_tile_in_every_layout_prepares_like_the_severstal_layout(tmp_path):
    truth = _by_md5(shared("magnetic-tile"))
    run([sys.executable, str(REPO / "bench" / "make_layouts.py"), str(tmp_path / "layouts")], REPO)
    for layout in ("published", "mvtec", "kolektor2", "folders", "coco_polygons", "coco_rle"):
        got = _by_md5(tmp_path / "layouts" / layout)
        assert got.keys() == truth.keys(), layout
        for md5, (label, mask) in truth.items():
            got_label, got_mask = got[md5]
            if layout == "kolektor2":  # no classes: the mask is the label (4 defective tiles have none)
                label = int(mask is not None)
            assert got_label == label, (layout, md5)
            if layout == "folders":
                assert got_mask is None
            else:
                assert (got_mask is None) == (mask is None), (layout, md5)
                if mask is not None:
                    np.testing.assert_array_equal(got_mask, mask, err_msg=f"{layout} {md5}")


def test_dvc_exp_run_on_a_coco_folder_runs_every_stage_with_masks(tmp_path):
    tree = tmp_path / "coco"
    write_coco(_samples(), tree, encoding="rle_compressed")
    params = merge(
        TINY_PARAMS,
        {
            "train": {"image_size": [64, 64], "supervision": "mask", "mask": {"crop_size": [32, 32]}},
            "export": {"saved_model": False, "openvino": "none"},  # the conversions: tests/test_map_model.py
        },
    )
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", params)
    run(["dvc", "exp", "run", "-S", f"data.source={tree}"], root)
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root).stdout)
    metrics = next(iter(shown.values()))["data"]
    data = metrics["metrics/data.json"]["data"]
    assert data["layout"] == "coco" and data["class_names"] == {"1": "a", "2": "b"} and data["images"] == 40
    evaluate = metrics["metrics/evaluate.json"]["data"]
    assert set(evaluate["recall_per_class"]) <= {"a", "b"} and evaluate["recall_per_class"]
    assert set(evaluate["localization"]["dice_per_class"]) <= {"a", "b"}
    assert (root / "models" / "trained.weights.h5").is_file()
