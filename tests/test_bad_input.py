"""Bad input stops a stage with one paragraph naming the file and row, exit code 2, and no half-written output.

Each case runs the real prepare stage as a process on a copy of a tiny synthetic dataset with one defect."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from steeldefect.data.synthetic import write_dataset

from helpers import defaults, repo_params, run, stage_cmd

pytestmark = pytest.mark.slow  # a prepare process per case


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    write_dataset(defaults(synthesize={"n_images": 12}).synthesize, seed=3, out_dir=root / "data")
    return root / "data"


@pytest.fixture
def project(tmp_path, good_data) -> Path:
    """A project folder whose prepare stage has already succeeded once on good data."""
    shutil.copytree(good_data, tmp_path / "source")
    (tmp_path / "data").mkdir()
    set_params(tmp_path, {"data": {"source": str(tmp_path / "source")}})
    run(stage_cmd("prepare"), tmp_path)
    return tmp_path


def set_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(repo_params(params)))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "source" not in p.parts
    }


def edit_csv(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def defect_row(source: Path) -> tuple[int, str]:
    lines = (source / "train.csv").read_text().splitlines()
    return 2, lines[1]  # first data row is line 2


def break_rle_odd(src: Path) -> str:
    row, line = defect_row(src)
    edit_csv(src / "train.csv", line, line + " 7")
    return rf"train.csv row {row} \(ImageId {line.split(',')[0]}.*odd number of tokens"


def break_rle_past_end(src: Path) -> str:
    row, line = defect_row(src)
    image_id, cls, _ = line.split(",")
    edit_csv(src / "train.csv", line, f"{image_id},{cls},409500 200")
    return rf"train.csv row {row} \(ImageId {image_id}.*past the (end of the )?image"


def break_header(src: Path) -> str:
    edit_csv(src / "train.csv", "ImageId,ClassId,EncodedPixels", "Image,Class,Pixels")
    return r"train.csv: unknown header"


def break_traversal(src: Path) -> str:
    row, line = defect_row(src)
    edit_csv(src / "train.csv", line, "../../etc/passwd," + line.split(",", 1)[1])
    return rf"train.csv row {row}.*'../../etc/passwd'"


def break_missing_and_corrupt(src: Path) -> str:
    (src / "train_images" / "synth_00003.jpg").unlink()
    (src / "train_images" / "synth_00005.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return r"train_images: 2 listed image\(s\).*synth_00003.jpg: file not found.*synth_00005.jpg: does not decode"


def break_labels_conflict(src: Path) -> str:
    with (src / "defect_and_no_defect.csv").open("a") as f:
        f.write("synth_00000.jpg,1\nsynth_00000.jpg,0\n")
    return r"defect_and_no_defect.csv: ImageId synth_00000.jpg has conflicting labels"


def break_label_value(src: Path) -> str:
    edit_csv(src / "defect_and_no_defect.csv", "synth_00001.jpg,", "synth_00001.jpg,2 #")
    return r"defect_and_no_defect.csv row 3 \(ImageId synth_00001.jpg\): label"


CASES = [
    break_rle_odd,
    break_rle_past_end,
    break_header,
    break_traversal,
    break_missing_and_corrupt,
    break_labels_conflict,
    break_label_value,
]


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_bad_data_is_refused_cleanly(project, breaker):
    before = digest(project)
    pattern = breaker(project / "source")
    proc = run(stage_cmd("prepare"), project, check=False)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error: ") and "Traceback" not in message and "\n" not in message, message
    assert re.search(pattern, message), message
    assert digest(project) == before  # previous outputs untouched, no temporary files left


def test_bad_param_is_refused_before_any_work(project):
    before = digest(project)
    set_params(project, {"data": {"source": str(project / "source")}, "split": {"test_size": 1.5}})
    proc = run(stage_cmd("prepare"), project, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: params.yaml: split.test_size = 1.5 is not allowed; expected a fraction in (0, 1)."
    )
    assert digest(project) == {**before, "params.yaml": digest(project)["params.yaml"]}


def test_skip_mode_lists_excluded_images(project):
    break_missing_and_corrupt(project / "source")
    set_params(project, {"data": {"source": str(project / "source")}, "prepare": {"on_bad_image": "skip"}})
    run(stage_cmd("prepare"), project)
    excluded = (project / "data/prepared/excluded.csv").read_text()
    assert "synth_00003.jpg,file not found" in excluded and "synth_00005.jpg" in excluded
    metrics = yaml.safe_load((project / "metrics/data.json").read_text())
    assert (metrics["images"], metrics["excluded_bad_images"]) == (10, 2)


def test_debug_env_shows_traceback(project):
    break_header(project / "source")
    proc = run(stage_cmd("prepare"), project, check=False, env={"STEELDEFECT_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr
