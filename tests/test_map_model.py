"""A two-output (mask-supervised) model in use: export round trip, the SavedModel's two outputs, and
`steeldefect predict` with its defect-area and bounding-box columns, `--maps` and the defect list (`--defects`).
The model is a small hand-made fully convolutional Keras model with the mask model's interface: input
(None, None, 3), outputs `probability` (N, 1) and `defect_map` (N, H/4, W/4, 1)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from steeldefect.data.dataset import split
from steeldefect.data.prepare import prepare
from steeldefect.data.synthetic import write_dataset
from steeldefect.errors import USER_ERROR, UserError
from steeldefect.serve.cli import main
from steeldefect.serve.export import export, export_model, model_meta
from steeldefect.serve.inference import has_defect_map, predict_all
from steeldefect.serve.maps import BOX_COLUMNS, bounding_box, load_maps
from steeldefect.serve.model_files import MODEL_META, SAVED_MODEL, load_model
from steeldefect.serve.regions import DEFECT_COLUMNS, MM_COLUMNS
from steeldefect.train.model import build_model

from helpers import defaults, repo_params, run, run_clean_python, stage_cmd, tiny_image_model

SIZE = (64, 96)  # the meta's image_size: every image is resized to it, maps are 16 x 24
META = {
    "image_size": list(SIZE),
    "batch_size": 2,
    "saved_model": {"outputs": {"probability": "float32 [None]"}},
}


def two_output_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1 / 128)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu")(x)
    defect_map = keras.layers.Conv2D(1, 1, activation="sigmoid", name="defect_map")(x)
    pooled = keras.layers.Concatenate()(
        [keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(defect_map)]
    )
    probability = keras.layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    return keras.Model(inputs, {"probability": probability, "defect_map": defect_map}, name="mask_model")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Five JPEGs of two sizes (40x250 and 90x60, height x width), the exported two-output model and an
    exported image model."""
    root = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(4)
    images = root / "images"
    images.mkdir()
    for i in range(5):
        shape = (40, 250) if i % 2 == 0 else (90, 60)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).convert("RGB").save(images / f"img{i}.jpg")
    paths = sorted(str(p) for p in images.iterdir())
    model = two_output_model()
    export_model(model, SIZE, root / "models", paths[:2], json.loads(json.dumps(META)))
    export_model(tiny_image_model(SIZE, seed=3), SIZE, root / "image_models", paths[:2], dict(META), saved_model=False)
    return root, model, paths


def test_two_output_model_round_trips(project):
    root, model, paths = project
    meta = json.loads((root / "models" / MODEL_META).read_text())
    assert (meta["supervision"], meta["map_stride"], meta["map_size"]) == ("mask", 4, [16, 24])
    assert "defect_map" in meta["saved_model"]["outputs"] and "16, 24" in meta["defect_map"]
    reloaded = load_model(root / "models")
    assert has_defect_map(reloaded) and reloaded.input_shape == (None, None, None, 3)
    got, want = predict_all(reloaded, paths, 2, SIZE), predict_all(model, paths, 2, SIZE)
    np.testing.assert_array_equal(got.probability, want.probability)
    assert len(got.maps) == 5 and got.maps[0].shape == (16, 24)
    for a, b in zip(got.maps, want.maps):
        np.testing.assert_array_equal(a, b)
    image_meta = json.loads((root / "image_models" / MODEL_META).read_text())
    assert (image_meta["supervision"], image_meta["map_stride"]) == ("image", None)
    assert predict_all(load_model(root / "image_models"), paths, 2).maps is None


SERVE = """
import json, sys
sys.modules["steeldefect"] = None  # the SavedModel needs neither this package
sys.modules["keras"] = None  # nor Keras
import tensorflow as tf

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(tf.constant([open(path, "rb").read() for path in sys.argv[2:]]))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""


@pytest.mark.slow  # a second TensorFlow process
def test_saved_model_returns_both_outputs_like_keras(project):
    root, _, paths = project
    served = run_clean_python(SERVE, str(root / "models" / SAVED_MODEL), *paths)
    assert sorted(served) == ["defect_map", "probability"]
    expected = predict_all(load_model(root / "models"), paths, 2, SIZE)
    np.testing.assert_allclose(served["probability"], expected.probability, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.array(served["defect_map"])[..., 0], np.stack(expected.maps), rtol=0, atol=1e-5)


def test_a_map_that_does_not_tile_the_input_is_refused(project, tmp_path):
    _, model, paths = project
    with pytest.raises(UserError, match="multiple of the map stride"):
        export_model(model, (66, 96), tmp_path / "models", paths[:1], {"image_size": [66, 96]}, saved_model=False)
    assert not (tmp_path / "models" / "model.json").exists()


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype=str)


def test_predict_adds_area_and_box_and_writes_one_map_per_image(project, tmp_path):
    root, _, paths = project
    missing = str(tmp_path / "missing.jpg")
    out, maps_dir = tmp_path / "p.csv", tmp_path / "maps"
    args = ["predict", *paths, missing, "--model-dir", str(root / "models"), "--output", str(out), "--no-progress"]
    assert main([*args, "--maps", str(maps_dir), "--map-threshold", "0.5"]) == 1  # one image unreadable
    df = read(out)
    assert list(df.columns) == [
        "path",
        "probability",
        "predicted",
        "defect_area_share",
        "box_x0",
        "box_y0",
        "box_x1",
        "box_y1",
        "engine",
        "precision",
        "error",
    ]
    assert sorted(p.name for p in maps_dir.iterdir()) == [f"img{i}_map.png" for i in range(5)]
    for path in paths:
        with Image.open(path) as im, Image.open(maps_dir / f"{Path(path).stem}_map.png") as overlay:
            assert overlay.size == im.size and overlay.mode == "RGB"
    maps = predict_all(load_model(root / "models"), paths, 2, SIZE).maps
    for row, m in zip(df.itertuples(), maps):
        height, width = (40, 250) if row.path.endswith(("0.jpg", "2.jpg", "4.jpg")) else (90, 60)
        assert float(row.defect_area_share) == pytest.approx(np.mean(m >= 0.5), abs=1e-6)
        box = bounding_box(m, 0.5, height, width)
        assert (row.box_x0, row.box_y0, row.box_x1, row.box_y1) == (tuple(map(str, box)) if box else ("",) * 4)
    assert df.iloc[-1].error == "file not found" and df.iloc[-1].defect_area_share == "" and df.iloc[-1].box_x0 == ""
    # a threshold of 0 flags every cell: the box is the whole original image
    assert main([*args[:-1], "--map-threshold", "0", "--no-progress"]) == 1
    df = read(out)
    assert df.defect_area_share.iloc[0] == "1.0" and tuple(df.iloc[0][["box_x0", "box_y0", "box_x1", "box_y1"]]) == (
        "0",
        "0",
        "250",
        "40",
    )


def copy_models(source: Path, out: Path) -> Path:
    """A copy of the model folder's files (not its subfolders), to write a threshold.json into."""
    out.mkdir()
    for f in source.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def test_map_threshold_from_the_evaluate_file(project, tmp_path, capsys):
    root, _, paths = project
    models = copy_models(root / "models", tmp_path / "models")
    (models / "threshold.json").write_text('{"threshold": 0.5, "policy": "fixed", "map_threshold": 1.0}')
    out = tmp_path / "p.csv"
    assert main(["predict", paths[0], "--model-dir", str(models), "--output", str(out), "--no-progress"]) == 0
    assert f"map threshold 1 from {models / 'threshold.json'}" in capsys.readouterr().out
    assert read(out).box_x0.iloc[0] == ""  # a sigmoid never reaches 1.0 here: no box


def test_image_model_keeps_todays_columns_and_refuses_maps(project, tmp_path, capsys):
    root, _, paths = project
    out = tmp_path / "p.csv"
    args = ["predict", *paths, "--model-dir", str(root / "image_models"), "--output", str(out), "--no-progress"]
    assert main(args) == 0
    assert list(read(out).columns) == ["path", "probability", "predicted", "engine", "precision", "error"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--maps", str(tmp_path / "maps")])
    assert e.value.code == 2 and "has no defect map" in capsys.readouterr().err
    assert not (tmp_path / "maps").exists()


def test_maps_dir_problems_are_usage_errors(project, tmp_path, capsys):
    root, _, paths = project
    (tmp_path / "file").write_text("")
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "img0.png").write_bytes(Path(paths[0]).read_bytes())
    base = ["predict", "--model-dir", str(root / "models"), "--output", str(tmp_path / "p.csv"), "--no-progress"]
    for images, maps, message in [
        ([paths[0]], tmp_path / "file", "exists and is not a folder"),
        ([paths[0], str(twin / "img0.png")], tmp_path / "m", "would both write img0_map.png"),
    ]:
        with pytest.raises(SystemExit) as e:
            main([*base, *images, "--maps", str(maps)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m").exists()


def test_defects_lists_the_regions_with_the_boxes_of_the_predictions_csv(project, tmp_path, capsys):
    root, _, paths = project
    out, defects = tmp_path / "p.csv", tmp_path / "defects.csv"
    args = ["predict", *paths, "--model-dir", str(root / "models"), "--output", str(out), "--no-progress"]
    assert main([*args, "--defects", str(defects)]) == 0
    assert "min defect area 0 px from default" in capsys.readouterr().out
    table, predictions = read(defects), read(out)
    assert list(table.columns) == DEFECT_COLUMNS and set(table.type) <= {"defect"}
    for row in predictions.itertuples():  # the regions' boxes make up the image's box
        mine = table[table.path == row.path]
        assert list(mine.region) == [str(i) for i in range(1, len(mine) + 1)]
        if not len(mine):
            assert row.box_x0 == ""
            continue
        x0, y0, x1, y1 = (mine[c].astype(int) for c in BOX_COLUMNS)
        assert (x0.min(), y0.min(), x1.max(), y1.max()) == tuple(int(getattr(row, c)) for c in BOX_COLUMNS)
        assert list(mine.area_px.astype(int)) == sorted(mine.area_px.astype(int), reverse=True)
    # at map threshold 0 every image is one region: the whole image, its box the predictions CSV's
    assert main([*args, "--map-threshold", "0", "--defects", str(defects)]) == 0
    assert f"wrote 5 defect regions of 5 images to {defects}" in capsys.readouterr().out
    table, predictions = read(defects), read(out)
    maps = predict_all(load_model(root / "models"), paths, 2, SIZE).maps
    for row, region, m in zip(predictions.itertuples(), table.itertuples(), maps):
        height, width = (40, 250) if row.path.endswith(("0.jpg", "2.jpg", "4.jpg")) else (90, 60)
        assert (region.path, region.region, region.area_px) == (row.path, "1", str(height * width))
        assert (
            tuple(getattr(region, c) for c in BOX_COLUMNS)
            == tuple(getattr(row, c) for c in BOX_COLUMNS)
            == ("0", "0", *map(str, (width, height)))
        )
        assert (float(region.length_px), float(region.width_px)) == (max(height, width), min(height, width))
        assert float(region.probability) == pytest.approx(float(m.max()), abs=1e-5)


def test_mm_per_pixel_adds_the_mm_columns(project, tmp_path):
    root, _, paths = project
    defects = tmp_path / "defects.csv"
    args = ["predict", paths[0], "--model-dir", str(root / "models"), "--output", str(tmp_path / "p.csv")]
    args += ["--no-progress", "--map-threshold", "0", "--defects", str(defects)]
    assert main([*args, "--mm-per-pixel", "0.5"]) == 0
    table = pd.read_csv(defects)  # paths[0] is 40 x 250: one region, the whole image
    assert list(table.columns) == DEFECT_COLUMNS + MM_COLUMNS and len(table) == 1
    assert table.area_mm2[0] == pytest.approx(40 * 250 * 0.25) and table.length_mm[0] == pytest.approx(125)
    assert table.width_mm[0] == pytest.approx(table.width_px[0] * 0.5)


def test_min_area_above_every_region_gives_only_the_header(project, tmp_path, capsys):
    root, _, paths = project
    defects = tmp_path / "defects.csv"
    args = ["predict", *paths, "--model-dir", str(root / "models"), "--output", str(tmp_path / "p.csv")]
    args += ["--no-progress", "--map-threshold", "0", "--defects", str(defects)]
    assert main([*args, "--min-area", "100000"]) == 0
    said = capsys.readouterr().out
    assert "min defect area 100000 px from --min-area" in said and "wrote 0 defect regions of 0 images" in said
    assert defects.read_text().strip() == ",".join(DEFECT_COLUMNS)
    assert len(read(tmp_path / "p.csv")) == 5  # the predictions CSV still lists every image


def test_min_area_from_the_evaluate_file(project, tmp_path, capsys):
    root, _, paths = project
    models = copy_models(root / "models", tmp_path / "models")
    defects = tmp_path / "defects.csv"
    args = ["predict", paths[0], "--model-dir", str(models), "--output", str(tmp_path / "p.csv"), "--no-progress"]
    args += ["--map-threshold", "0", "--defects", str(defects)]
    for value, rows, said in [
        (100000, 0, "100000 px"),
        ({"defect": 100000}, 0, "defect: 100000 px"),
        ({"scratch": 100000}, 1, "scratch: 100000 px"),  # not the map's type: 0 for it
    ]:
        (models / "threshold.json").write_text(json.dumps({"threshold": 0.5, "min_area": value}))
        assert main(args) == 0 and len(read(defects)) == rows
        assert f"min defect area {said} from {models / 'threshold.json'}" in capsys.readouterr().out
    assert main([*args, "--min-area", "0"]) == 0 and len(read(defects)) == 1  # the flag wins
    (models / "threshold.json").write_text('{"threshold": 0.5, "min_area": -3}')
    defects.unlink()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert (
        e.value.code == USER_ERROR and "min_area -3 is not a number >= 0" in err and "rerun `dvc repro evaluate`" in err
    )
    assert not defects.exists()


def test_defects_refusals_are_usage_errors_and_write_nothing(project, tmp_path, capsys):
    root, _, paths = project
    (tmp_path / "folder").mkdir()
    out, defects = tmp_path / "p.csv", str(tmp_path / "d.csv")
    base = ["predict", paths[0], "--output", str(out), "--no-progress"]
    masks, images = ["--model-dir", str(root / "models")], ["--model-dir", str(root / "image_models")]
    for args, message in [
        ([*images, "--defects", defects], "--defects: the model in"),
        ([*masks, "--mm-per-pixel", "0.1"], "--mm-per-pixel: it adds the mm columns"),
        ([*masks, "--defects", defects, "--mm-per-pixel", "0"], "--mm-per-pixel: 0 is not a number > 0"),
        ([*masks, "--defects", defects, "--mm-per-pixel", "-1"], "--mm-per-pixel: -1 is not a number > 0"),
        ([*masks, "--defects", defects, "--min-area", "-1"], "--min-area: -1 is not >= 0"),
        ([*masks, "--defects", str(tmp_path / "folder")], "is a folder"),
        ([*masks, "--defects", str(tmp_path / "no" / "d.csv")], f"the folder {tmp_path / 'no'} does not exist"),
        ([*masks, "--defects", str(out)], "is also --output, the predictions CSV"),
    ]:
        with pytest.raises(SystemExit) as e:
            main([*base, *args])
        assert e.value.code == USER_ERROR and message in capsys.readouterr().err, args
        assert not out.exists() and not Path(defects).exists() and not (tmp_path / "no").exists()
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.slow  # stage processes
def test_predict_and_evaluate_stages_keep_and_score_the_maps(tmp_path):
    """The two stage scripts on a tiny synthetic split with the hand-made map model: the predict stage keeps
    the test maps, the evaluate stage scores them."""
    write_dataset(defaults(synthesize={"n_images": 20}).synthesize, seed=1, out_dir=tmp_path / "data/synthetic")
    images, masks, _, _ = prepare(tmp_path / "data/synthetic", "fail", defaults().data)
    parts, _ = split(images, 0.25, 0.25, seed=0)
    for folder in ("split", "prepared", "baseline"):
        (tmp_path / "data" / folder).mkdir()
    for name in ("val", "test"):
        parts[name].to_csv(tmp_path / f"data/split/{name}.csv", index=False)
        # the evaluate stage also scores the classical baseline stage's probabilities: any will do here
        parts[name][["ImageId", "label"]].assign(probability=0.5).to_csv(
            tmp_path / f"data/baseline/{name}.csv", index=False
        )
    masks.to_csv(tmp_path / "data/prepared/masks.csv", index=False)
    ids = sorted(masks.ClassId.unique())
    pd.DataFrame({"ClassId": ids, "name": [f"kind{i}" for i in ids]}).to_csv(
        tmp_path / "data/prepared/classes.csv", index=False
    )
    meta = {"image_size": [32, 200], "batch_size": 4}
    export_model(two_output_model(), (32, 200), tmp_path / "models", list(images.path[:2]), meta, saved_model=False)
    params = repo_params({"train": {"batch_size": 4}, "evaluate": {"gallery_size": 2}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    run(stage_cmd("predict"), tmp_path)
    maps, stride = load_maps(tmp_path / "data/predictions/test_maps.npz")
    assert (
        stride == 4
        and sorted(maps) == sorted(parts["test"].ImageId)
        and maps[parts["test"].ImageId[0]].shape == (8, 50)
    )
    run(stage_cmd("evaluate"), tmp_path)
    loc = json.loads((tmp_path / "metrics/evaluate.json").read_text())["localization"]
    assert loc["images_with_mask"] == int(parts["test"].label.sum()) > 0 and 0 <= loc["dice"] <= 1
    assert loc["map_stride"] == 4 and loc["clean_images"] == int((parts["test"].label == 0).sum())
    assert loc["dice_per_class"] and set(loc["dice_per_class"]) <= {f"kind{i}" for i in ids}  # by name
    assert len(pd.read_csv(tmp_path / "plots/localization_dice.csv")) == 19
    assert json.loads((tmp_path / "models/threshold.json").read_text())["map_threshold"] == 0.5


def test_the_mask_model_exports_with_its_stride_and_serves_both_outputs(project, tmp_path):
    _, _, paths = project
    train = {"image_size": SIZE, "backbone_layer": "conv2_block3_out", "supervision": "mask"}
    params = defaults(train={**train, "mask": {"seg_channels": 4, "crop_size": [32, 32]}})
    p = params.train
    model, _, _ = build_model(p, weights=None)
    model.save_weights(tmp_path / "w.weights.h5")
    meta = model_meta(params, pd.DataFrame({"md5": ["a"]}))
    assert export(p, tmp_path / "w.weights.h5", tmp_path / "models", paths[:2], meta) <= 1e-5
    exported = json.loads((tmp_path / "models" / MODEL_META).read_text())
    assert (exported["supervision"], exported["map_stride"], exported["map_size"]) == ("mask", 4, [16, 24])
    assert sorted(exported["saved_model"]["outputs"]) == ["defect_map", "probability"]
    result = predict_all(load_model(tmp_path / "models"), paths, 2, SIZE)
    assert result.maps[0].shape == (16, 24) and np.isfinite(result.probability).all()
    with pytest.raises(UserError, match="the params say map_stride = 8 but the trained model gives 4"):
        export(p, tmp_path / "w.weights.h5", tmp_path / "other", paths[:1], {**meta, "map_stride": 8}, False)
    assert not (tmp_path / "other" / MODEL_META).exists()


def test_a_fully_convolutional_model_needs_the_image_size(project):
    root, _, paths = project
    with pytest.raises(UserError, match="takes images of any size"):
        predict_all(load_model(root / "models"), paths, 2)
