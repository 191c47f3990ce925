"""Defect maps by hand: area share, bounding box in original pixels, the maps file, the overlay, and the
localization metrics (Dice, IoU, pointing, per class, across thresholds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steeldefect.data.masks import image_mask, target_map
from steeldefect.data.prepare import prepare
from steeldefect.data.severstal import rle_encode
from steeldefect.data.synthetic import write_dataset
from steeldefect.errors import UserError
from steeldefect.evaluate.evaluation import evaluate
from steeldefect.evaluate.localization import (
    dice_sweep,
    localization_metrics,
    pixels_per_cell,
    predicted,
    type_localization,
)
from steeldefect.evaluate.map_choice import by_type, choose_maps
from steeldefect.serve.maps import (
    area_share,
    bounding_box,
    load_maps,
    map_file_names,
    outline,
    overlay_image,
    resize_to,
    save_maps,
)

from helpers import defaults


def test_area_share_and_bounding_box_in_original_pixels():
    # a 4x8 map of a 100x250 image (height x width): each cell covers 25 rows and 31.25 columns
    m = np.zeros((4, 8), np.float32)
    m[1:3, 2:6] = 0.9
    m[2, 3] = 0.4  # below the threshold: not counted, box unchanged
    assert area_share(m, 0.5) == pytest.approx(7 / 32)
    # columns 2..5 -> x 62.5 .. 187.5 (floor / ceil), rows 1..2 -> y 25 .. 75
    assert bounding_box(m, 0.5, height=100, width=250) == (62, 25, 188, 75)
    assert bounding_box(m, 0.3, height=100, width=250) == (62, 25, 188, 75)
    assert bounding_box(m, 0.95, height=100, width=250) is None and area_share(m, 0.95) == 0
    corner = np.zeros((4, 8), np.float32)
    corner[3, 7] = 1  # the last cell ends exactly at the image's edge
    assert bounding_box(corner, 0.5, height=100, width=250) == (218, 75, 250, 100)


def test_resize_and_outline():
    m = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    big = resize_to(m, 4, 6)
    assert big.shape == (4, 6) and big[:2, 3:].min() == 1 and big[2:].max() == 0 and big[:, :3].max() == 0
    block = np.zeros((5, 5), bool)
    block[1:4, 1:4] = True
    edge = outline(block)
    assert edge.sum() == 8 and not edge[2, 2] and edge[1, 1]


def test_overlay_tints_the_map_and_outlines_cells_above_the_threshold():
    image = np.full((20, 40, 3), 100, np.uint8)
    m = np.zeros((2, 4), np.float32)
    m[0, 0] = 1.0
    out = overlay_image(image, m, threshold=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[15:, 20:] == 100).all()  # map 0: the image unchanged
    assert out[5, 5, 0] > 150 and out[5, 5, 2] < 100  # inside the defect cell: red
    assert tuple(out[0, 0]) == (255, 230, 0)  # its outline: yellow


def test_maps_file_round_trip_is_compact(tmp_path):
    maps = np.random.default_rng(0).random((3, 4, 8)).astype(np.float32)
    save_maps(tmp_path / "m.npz", ["a.jpg", "b.jpg", "c.jpg"], maps, stride=8)
    loaded, stride = load_maps(tmp_path / "m.npz")
    assert stride == 8 and list(loaded) == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_allclose(loaded["b.jpg"], maps[1], atol=1e-3)  # float16
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="bad.npz: cannot read the defect maps"):
        load_maps(tmp_path / "bad.npz")


def test_map_file_names_refuse_collisions():
    assert map_file_names(["a/x.jpg", "a/y.png"]) == ["x_map.png", "y_map.png"]
    with pytest.raises(UserError, match="a/x.jpg and b/x.png would both write x_map.png"):
        map_file_names(["a/x.jpg", "b/x.png"])


@pytest.fixture
def hand_made():
    """Three 8x16 test images at stride 4 (maps 2x4): a.jpg (class 1) and b.jpg (classes 3 and 4) with masks,
    c.jpg clean; the images' own size is the input size, so the targets are the masks max-pooled."""
    true_a = np.zeros((8, 16), bool)
    true_a[0:2, 0:8] = True  # target cells (0, 0), (0, 1)
    true_b = np.zeros((8, 16), bool)
    true_b[6, 15] = True  # target cell (1, 3)
    masks = pd.DataFrame(
        {
            "ImageId": ["a.jpg", "b.jpg", "b.jpg"],
            "ClassId": [1, 3, 4],
            "EncodedPixels": [rle_encode(true_a), rle_encode(true_b), rle_encode(true_b)],
        }
    )
    test = pd.DataFrame(
        {"ImageId": ["a.jpg", "b.jpg", "c.jpg"], "label": [1, 1, 0], "classes": ["1", "3 4", ""]}
    ).assign(height=8, width=16)
    maps = {
        # predicted cells (0, 0) at 0.9 and (1, 0) at 0.6: Dice 2*1/(2+2) = 0.5, IoU 1/3; max inside: hit
        "a.jpg": np.array([[0.9, 0.2, 0, 0], [0.6, 0, 0, 0]], np.float32),
        # predicted nothing >= 0.5, maximum at (0, 0), outside the target: Dice 0, IoU 0, miss
        "b.jpg": np.array([[0.4, 0, 0, 0], [0, 0, 0, 0.3]], np.float32),
        # clean: one of 8 cells predicted defect
        "c.jpg": np.array([[0, 0, 0, 0.7], [0, 0, 0, 0]], np.float32),
    }
    return test, masks, maps


TYPES = (["1", "3", "4"], ["pit", "scratch", "patch"])  # hand_made's ClassIds, named


def hand_made_type_maps() -> dict[str, np.ndarray]:
    """(2, 4, 3) maps of hand_made's images: pit finds half of a.jpg's and one cell on clean c.jpg, scratch finds
    b.jpg's, patch finds nothing."""
    out = {i: np.zeros((2, 4, 3), np.float32) for i in ("a.jpg", "b.jpg", "c.jpg")}
    out["a.jpg"][0, 0, 0] = out["a.jpg"][1, 0, 0] = 0.9  # Dice 2*1/(2+2) = 0.5 against cells (0, 0), (0, 1)
    out["b.jpg"][1, 3, 1] = 0.8  # Dice 1
    out["c.jpg"][0, 3, 0] = 0.7  # clean: a pit where there is none
    return out


def test_type_localization_scores_each_type_against_its_own_masks(hand_made):
    test, masks, _ = hand_made
    thresholds, areas = dict.fromkeys(TYPES[1], 0.5), dict.fromkeys(TYPES[1], 0.0)
    m = type_localization(test, masks, hand_made_type_maps(), TYPES, 4, thresholds, areas)
    pit, scratch, patch = (m["classes"][n] for n in TYPES[1])
    assert (pit["dice"], pit["images"]) == (0.5, 1) and (scratch["dice"], scratch["images"]) == (1.0, 1)
    assert (patch["dice"], patch["iou"], patch["images"]) == (0.0, 0.0, 1)
    # pairs over a, b, c: pit 0.5, 1 (nothing on nothing), 0 (the clean image's pit); patch 1, 0, 1
    assert pit["mean_dice_pairs"] == pytest.approx(0.5) and scratch["mean_dice_pairs"] == 1
    assert patch["mean_dice_pairs"] == pytest.approx(2 / 3)
    assert m["type_pairs"] == 9 and m["mean_dice_pairs_types"] == pytest.approx(6.5 / 9)
    # a threshold and a min area per type: scratch's 0.8 no longer counts; pit's 16-pixel cell on c.jpg is dropped
    m = type_localization(
        test, masks, hand_made_type_maps(), TYPES, 4, {**thresholds, "scratch": 0.9}, {**areas, "pit": 20}
    )
    assert m["classes"]["scratch"]["dice"] == 0 and m["classes"]["scratch"]["map_threshold"] == 0.9
    assert m["classes"]["pit"]["mean_dice_pairs"] == pytest.approx(0.5 / 3 + 2 / 3)  # a.jpg's pit: 1 + 1 = 32 px
    assert m["classes"]["pit"]["min_area"] == 20


def test_map_thresholds_by_type_name_every_type_and_only_those():
    assert by_type(0.4, "map_threshold", ["pit", "scratch"]) == (0.4, {"pit": 0.4, "scratch": 0.4})
    assert by_type(0.4, "map_threshold", None) == (0.4, None)
    # the any-defect map counts a cell when some type would
    assert by_type({"pit": 0.6, "scratch": 0.3}, "map_threshold", ["pit", "scratch"]) == (
        0.3,
        {"pit": 0.6, "scratch": 0.3},
    )
    for setting, names, said in [
        ({"pit": 0.6}, ["pit", "scratch"], "evaluate.map_threshold gives no value for type scratch"),
        ({"pit": 0.6, "dent": 1, "scratch": 1}, ["pit", "scratch"], "evaluate.map_threshold.dent names no defect type"),
        ({"pit": 50}, None, "evaluate.min_area is a map by type name, but the model has no map per type"),
    ]:
        key = "min_area" if names is None else "map_threshold"
        with pytest.raises(UserError, match=said):
            by_type(setting, key, names)


def test_auto_map_threshold_and_min_area_are_chosen_on_validation_map_by_map(hand_made):
    """hand_made as the validation split. Any-defect map: thresholds 0.05 to 0.2 tie at Dice (0.8 + 2/3) / 2 (the
    lowest wins); then 32 px (2 cells) drops b.jpg's and c.jpg's single cells: pairs (0.8 + 0 + 1) / 3."""
    val, masks, maps = hand_made
    p = defaults(evaluate={"map_threshold": "auto", "min_area": "auto"}).evaluate
    (threshold, none), (area, _), choice = choose_maps(p, val, masks, maps, None, None, 4)
    assert (threshold, none, area) == (0.05, None, 32.0) and choice["policy"] == "auto"
    assert choice["maps"]["defect"]["val_dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert choice["maps"]["defect"]["val_mean_dice_pairs"] == pytest.approx(1.8 / 3)
    # per type: pit keeps its 32-px region and drops the clean image's cell; scratch and patch keep every region
    (any_t, thresholds), (any_a, areas), choice = choose_maps(p, val, masks, maps, hand_made_type_maps(), TYPES, 4)
    assert thresholds == dict.fromkeys(TYPES[1], 0.05) and areas == {"pit": 32.0, "scratch": 0.0, "patch": 0.0}
    assert (any_t, any_a) == (0.05, 0.0) and choice["maps"]["patch"]["val_dice"] == 0
    # a number kept, the other chosen; no defect to choose on; maps missing; nothing auto
    given = defaults(evaluate={"map_threshold": 0.5, "min_area": "auto"}).evaluate
    assert choose_maps(given, val, masks, maps, None, None, 4)[:2] == ((0.5, None), (32.0, None))
    clean = val[val.label == 0]
    _, _, choice = choose_maps(p, clean, masks, maps, None, None, 4)
    assert choice["maps"]["defect"]["policy"].startswith("no validation image")
    with pytest.raises(UserError, match="no validation maps"):
        choose_maps(p, val, masks, None, None, None, 4)
    assert choose_maps(defaults().evaluate, val, masks, None, None, None, 4) == (
        (0.5, None),
        (0.0, None),
        {"policy": "given"},
    )


def test_localization_metrics_match_hand_computed_values(hand_made):
    test, masks, maps = hand_made
    m, sweep = localization_metrics(test, masks, maps, stride=4, threshold=0.5)
    assert m["images_with_mask"] == 2 and m["clean_images"] == 1 and m["defective_without_mask"] == 0
    assert m["dice"] == pytest.approx((0.5 + 0) / 2)
    assert m["iou"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["pointing_accuracy"] == 0.5
    assert m["dice_per_class"] == {"1": 0.5, "3": 0.0, "4": 0.0}
    assert m["clean_area_share"] == pytest.approx(1 / 8)
    assert m["map_stride"] == 4 and m["map_threshold"] == 0.5
    at = sweep.set_index("map_threshold")
    # at 0.25: a.jpg predicts 2 cells, 1 right -> Dice 0.5; b.jpg predicts (0, 0) and (1, 3) -> 2*1/(2+1)
    assert at.loc[0.25, "dice"] == pytest.approx((0.5 + 2 / 3) / 2)
    # at 0.95 nothing is predicted: Dice 0 on both
    assert at.loc[0.95, "dice"] == 0 and list(sweep.columns) == ["map_threshold", "dice", "iou"]


def test_mean_dice_over_pairs_scores_an_empty_prediction_on_a_clean_image_as_one(hand_made):
    test, masks, maps = hand_made
    m, _ = localization_metrics(test, masks, maps, stride=4, threshold=0.5)
    # pairs a (Dice 0.5), b (0: nothing predicted, a target) and c (clean, one cell predicted: 0)
    assert m["pairs"] == 3 and m["mean_dice_pairs"] == pytest.approx(0.5 / 3)
    assert m["empty_pairs_share"] == pytest.approx(1 / 3) and m["min_area"] == 0
    # 8x16 pixels over 2x4 cells: 16 pixels a cell. At 17, c's one-cell region goes (c now scores 1); a's two
    # cells (32 pixels) stay
    m, _ = localization_metrics(test, masks, maps, stride=4, threshold=0.5, min_area=17)
    assert m["mean_dice_pairs"] == pytest.approx((0.5 + 0 + 1) / 3) and m["clean_area_share"] == 0
    assert m["dice"] == pytest.approx(0.25) and m["min_area"] == 17
    m, sweep = localization_metrics(test, masks, maps, stride=4, threshold=0.5, min_area=33)
    assert m["mean_dice_pairs"] == pytest.approx(1 / 3) and m["dice"] == 0
    assert sweep.set_index("map_threshold").loc[0.25, "dice"] == 0  # the sweep drops small regions too


def test_small_regions_are_dropped_by_their_8_connected_area():
    m = np.zeros((5, 5), np.float32)
    m[0, 0] = m[1, 1] = 0.9  # touching at a corner: one region of 2 cells
    m[4, 4] = 0.8  # a region of 1 cell
    assert predicted(m, 0.5, min_area=2).sum() == 2 and not predicted(m, 0.5, min_area=2)[4, 4]
    four = np.full((5, 5), 4)
    assert predicted(m, 0.5, min_area=8, cell_pixels=four).sum() == 2  # 2 cells x 4 pixels
    assert predicted(m, 0.5, min_area=9, cell_pixels=four).sum() == 0
    assert predicted(m, 0.5).sum() == 3 and predicted(m, 0.95, min_area=1).sum() == 0
    # a 2x3 map of a 5x7 image: rows of 2 and 3 pixels (cut at 2.5), columns of 2, 3 and 2 (cuts at 2.33, 4.67)
    np.testing.assert_array_equal(pixels_per_cell((2, 3), 5, 7), [[4, 6, 4], [6, 9, 6]])
    assert pixels_per_cell((4, 8), 100, 250).sum() == 100 * 250


def test_defective_without_mask_is_left_out_and_missing_maps_are_an_error(hand_made):
    test, masks, maps = hand_made
    test = pd.concat([test, pd.DataFrame([{"ImageId": "d.jpg", "label": 1, "classes": "", "height": 8, "width": 16}])])
    with pytest.raises(ValueError, match="no defect map for 1 test images, e.g. d.jpg"):
        localization_metrics(test, masks, maps, stride=4, threshold=0.5)
    maps = {**maps, "d.jpg": np.ones((2, 4), np.float32)}
    m, _ = localization_metrics(test, masks, maps, stride=4, threshold=0.5)
    assert m["images_with_mask"] == 2 and m["defective_without_mask"] == 1 and m["dice"] == pytest.approx(0.25)


def test_a_mask_lost_in_the_resize_is_counted_not_scored(hand_made):
    test, masks, maps = hand_made
    # b.jpg's single defect pixel (row 6, column 15) is skipped by the nearest resize to 4x8 (stride 2, map 2x4)
    m, _ = localization_metrics(test, masks, maps, stride=2, threshold=0.5)
    assert m["masks_lost_at_input_size"] == 1 and m["images_with_mask"] == 1 and m["pointing_accuracy"] == 1


def test_no_image_with_a_mask_gives_no_scores(hand_made):
    test, _, maps = hand_made
    empty = pd.DataFrame(columns=["ImageId", "ClassId", "EncodedPixels"])
    m, sweep = localization_metrics(test, empty, maps, stride=4, threshold=0.5)
    assert m["dice"] is None and m["pointing_accuracy"] is None and m["images_with_mask"] == 0
    assert sweep.empty and dice_sweep(maps, {}).empty


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """30 synthetic images (1600x256) with given probabilities, and perfect maps at 32x200, stride 8: the true
    targets, so Dice, IoU and pointing are 1 on every image with a mask."""
    root = tmp_path_factory.mktemp("loc")
    write_dataset(defaults(synthesize={"n_images": 30}).synthesize, seed=5, out_dir=root / "data")
    images, masks, _, _ = prepare(root / "data", "fail", defaults().data)
    images = images.assign(probability=np.where(images.label == 1, 0.3, 0.1))  # every defect missed at 0.5
    test = images[15:].reset_index(drop=True)
    maps = {
        r.ImageId: target_map(image_mask(masks, r.ImageId, r.height, r.width, (32, 200)), 8) for r in test.itertuples()
    }
    return images[:15].reset_index(drop=True), test, masks, maps


def run_evaluate(out, data, maps=None):
    val, test, masks, _ = data
    files = (out / "metrics.json", out / "threshold.json", out / "plots", out / "results")
    p = defaults(evaluate={"gallery_size": 3, "map_threshold": 0.5}).evaluate
    return evaluate(p, 0, val, test, masks, *files, maps, 8)


def test_evaluate_with_maps_adds_localization_and_outlines(tmp_path, synthetic):
    m = run_evaluate(tmp_path, synthetic, synthetic[3])
    loc = m["localization"]
    lost = sum(not synthetic[3][i].any() for i in synthetic[1].ImageId[synthetic[1].label == 1])
    assert loc["masks_lost_at_input_size"] == lost and loc["images_with_mask"] + lost == synthetic[1].label.sum()
    assert loc["images_with_mask"] > 0 and loc["dice"] == loc["iou"] == loc["pointing_accuracy"] == 1
    assert loc["clean_area_share"] == 0 and set(loc["dice_per_class"]) <= {"1", "2", "3", "4"}
    assert json.loads((tmp_path / "metrics.json").read_text())["localization"] == loc
    assert loc["mean_dice_pairs"] == 1 and loc["pairs"] == len(synthetic[1]) - lost  # perfect maps, clean included
    assert json.loads((tmp_path / "threshold.json").read_text())["map_threshold"] == 0.5
    assert json.loads((tmp_path / "threshold.json").read_text())["min_area"] == 0
    sweep = pd.read_csv(tmp_path / "plots/localization_dice.csv")
    assert len(sweep) == 19 and (sweep.dice == 1).all()
    without = run_evaluate(tmp_path / "image", synthetic)
    assert "localization" not in without and "map_threshold" not in (tmp_path / "image/threshold.json").read_text()
    assert (tmp_path / "image/plots/localization_dice.csv").read_text() == "map_threshold,dice,iou\n"
    # the galleries differ only by the outline (and the true masks in the random one)
    for name in ("gallery_false_negatives", "gallery_random"):
        with Image.open(tmp_path / f"plots/{name}.png") as a, Image.open(tmp_path / f"image/plots/{name}.png") as b:
            assert a.size == b.size and np.any(np.asarray(a) != np.asarray(b))
    with Image.open(tmp_path / "plots/gallery_false_negatives.png") as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 80)
    assert yellow.sum() > 20  # the predicted maps' outlines are drawn
