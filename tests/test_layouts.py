"""Every data layout read by prepare: tiny trees made here (layout_trees), the same samples in each, so every layout
must give the same labels and the same mask pixels; the mask rules; the bad cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from layout_trees import (
    Sample,
    palette_mask_png,
    write_coco,
    write_folders,
    write_kolektor1,
    write_kolektor2,
    write_mvtec,
    write_published,
)
from PIL import Image

from steeldefect.data.dataset import load_masks
from steeldefect.data.layouts import read_mask
from steeldefect.data.prepare import detect, prepare
from steeldefect.errors import UserError

from helpers import defaults

DATA = defaults().data
H, W = 24, 40


def _samples() -> list[Sample]:
    """3 clean, 4 defective of two classes (one without mask, one whose mask touches the border)."""
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.integers(60, 200, (H, W), dtype=np.uint8)

    def mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        m[y0, x1 - 1 : x1 + 3] = True  # not a plain rectangle
        return m

    return [
        Sample("c0", image(), None, None),
        Sample("c1", image(), None, None),
        Sample("c2", image(), None, None),
        Sample("d0", image(), "crack", mask(2, 9, 3, 12)),
        Sample("d1", image(), "crack", mask(15, 24, 30, 36)),
        Sample("d2", image(), "pit", mask(5, 7, 20, 22)),
        Sample("d3", image(), "pit", None),
    ]


SAMPLES = _samples()
WRITERS = {
    "published": (write_published, {}, "pairs"),
    "mvtec": (write_mvtec, {}, "mvtec"),
    "kolektor2": (write_kolektor2, {}, "pairs"),
    "kolektor1": (write_kolektor1, {"per_folder": 3}, "pairs"),
    "folders": (write_folders, {"clean": "OK"}, "folders"),
    "coco_polygons": (write_coco, {"encoding": "polygons"}, "coco"),
    "coco_rle": (write_coco, {"encoding": "rle", "json_name": "_annotations.coco.json"}, "coco"),
    "coco_rle_compressed": (write_coco, {"encoding": "rle_compressed"}, "coco"),
}


def prepared_by_stem(source: Path, names: dict[str, str]) -> tuple[dict, dict]:
    """({stem: (label, union of its masks or None, class names)}, data metrics) as prepare reads `source`."""
    images, masks, excluded, metrics = prepare(source, "fail", DATA)
    assert excluded.empty
    out = {}
    for r in images.itertuples():
        found = load_masks(masks, r.ImageId, r.height, r.width)
        union = np.logical_or.reduce(list(found.values())) if found else None
        classes = [metrics["class_names"][c] for c in r.classes.split()]
        out[names[r.ImageId]] = (r.label, union, classes)
    return out, metrics


def by_stem(source: Path, names: dict[str, str]) -> dict[str, tuple[int, np.ndarray | None, list[str]]]:
    return prepared_by_stem(source, names)[0]


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_gives_the_samples_labels_and_mask_pixels(tmp_path, layout):
    write, options, name = WRITERS[layout]
    names = write(SAMPLES, tmp_path / layout, **options)
    assert detect(tmp_path / layout) in (name, "auto")  # "auto": the tree reader decides
    got, metrics = prepared_by_stem(tmp_path / layout, names)
    assert metrics["layout"] == name
    has_classes = layout not in ("kolektor2", "kolektor1")  # labels from masks: one class "defect"
    names_of = {"published": ["MT_Crack", "MT_Pit"], "kolektor2": ["defect"], "kolektor1": ["defect"]}
    assert sorted(metrics["class_names"].values()) == names_of.get(layout, ["crack", "pit"])
    for s in SAMPLES:
        label, union, classes = got[s.stem]
        mask = s.mask if layout != "folders" else None
        if has_classes:
            assert label == int(s.class_name is not None), s.stem
            assert [c.removeprefix("MT_").lower() for c in classes] == ([s.class_name] if s.class_name else [])
        else:  # no class folders: a defective image without a mask reads as clean
            assert label == int(mask is not None), s.stem
        assert (union is None) == (mask is None), s.stem
        if mask is not None:
            np.testing.assert_array_equal(union, mask, err_msg=f"{layout} {s.stem}")


def test_two_layouts_of_the_same_images_prepare_alike(tmp_path):
    a = by_stem(tmp_path / "a", write_published(SAMPLES, tmp_path / "a"))
    b = by_stem(tmp_path / "b", write_coco(SAMPLES, tmp_path / "b", encoding="polygons"))
    assert a.keys() == b.keys()
    for stem in a:
        assert a[stem][0] == b[stem][0]
        assert (a[stem][1] is None) == (b[stem][1] is None)
        if a[stem][1] is not None:
            np.testing.assert_array_equal(a[stem][1], b[stem][1])


def test_palette_bmp_uppercase_and_nested_folders(tmp_path):
    root = tmp_path / "lines"
    s = SAMPLES
    for i, sample in enumerate(s):
        folder = root / f"line{i % 2}" / ("ok" if sample.class_name is None else f"ng-{sample.class_name}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(folder / f"{sample.stem}.PNG")
        if sample.mask is None:
            continue
        if i % 2:
            palette_mask_png(sample.mask, folder / f"{sample.stem}_MASK.PNG")
        else:
            Image.fromarray(sample.mask.astype(np.uint8) * 255).save(folder / f"{sample.stem}_label.BMP")
    images, masks, _, metrics = prepare(root, "fail", DATA)
    assert metrics["layout"] == "pairs"
    assert sorted(metrics["class_names"].values()) == ["ng-crack", "ng-pit"]
    for r in images.itertuples():
        sample = next(x for x in s if x.stem == Path(r.ImageId).stem)
        assert r.label == int(sample.class_name is not None) and r.ImageId.endswith(f"/{sample.stem}.PNG")
        found = load_masks(masks, r.ImageId, r.height, r.width)
        if sample.mask is not None:
            np.testing.assert_array_equal(next(iter(found.values())), sample.mask)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 255, 200, 127, 130], [0, 1, 1, 0, 1]),  # 8-bit range: on at >= 128 (soft edges)
        ([0, 1, 1, 0, 0], [0, 1, 1, 0, 0]),  # 0/1
        ([0, 3, 2, 0, 1], [0, 1, 1, 0, 1]),  # class indices
        ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
    ],
)
def test_grey_mask_values(tmp_path, values, expected):
    Image.fromarray(np.array([values], dtype=np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", 1, 5).astype(int).tolist() == [expected]


def test_colour_alpha_and_bilevel_masks(tmp_path):
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[0, 3] = (0, 0, 40)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    assert read_mask(tmp_path / "colour.png", 1, 4).tolist() == [[False, True, False, True]]
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = 255
    rgba[0, 2, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "brush.png")
    assert read_mask(tmp_path / "brush.png", 1, 3).tolist() == [[False, False, True]]
    Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(tmp_path / "bilevel.png")
    assert read_mask(tmp_path / "bilevel.png", 1, 3).tolist() == [[False, True, False]]


def test_clean_names_param_and_last_part_match(tmp_path):
    write_folders(SAMPLES, tmp_path / "a", clean="Surface_Pass")
    images, _, _, metrics = prepare(tmp_path / "a", "fail", DATA)  # no clean folder: Surface_Pass is a defect type
    assert int(images.label.sum()) == 7 and list(metrics["class_names"].values()) == ["crack", "pit", "Surface_Pass"]
    images, _, _, metrics = prepare(tmp_path / "a", "fail", defaults(data={"clean_names": ["pass"]}).data)
    assert int(images.label.sum()) == 4 and metrics["layout"] == "folders"


TYPES = [s for s in SAMPLES if s.class_name]  # 4 defective images of two types, crack and pit: no clean one


def test_type_folders_without_a_clean_folder_are_all_defective_of_their_type(tmp_path):
    names = write_folders(TYPES, tmp_path / "a")
    images, masks, _, metrics = prepare(tmp_path / "a", "fail", DATA)
    assert images.label.tolist() == [1, 1, 1, 1] and masks.empty
    types = {names[i]: metrics["class_names"][c] for i, c in zip(images.ImageId, images.classes, strict=True)}
    assert types == {s.stem: s.class_name for s in TYPES}
    assert (metrics["layout"], metrics["class_names"], metrics["clean"]) == ("folders", {"1": "crack", "2": "pit"}, 0)
    assert metrics["has_clean_images"] is False and "train.target: classes" in metrics["note"]
    assert metrics["duplicate_mask_rows_dropped"] == 0


def test_a_clean_folder_gives_clean_images_and_no_note(tmp_path):
    write_folders(SAMPLES, tmp_path / "a")
    metrics = prepare(tmp_path / "a", "fail", DATA)[3]
    assert (metrics["clean"], metrics["has_clean_images"], metrics["duplicate_mask_rows_dropped"]) == (3, True, 0)
    assert "note" not in metrics


def test_no_clean_folder_with_masks_still_takes_labels_from_masks(tmp_path):
    names = write_published(TYPES, tmp_path / "a")  # MT_Crack, MT_Pit with masks (all zero for d3), no MT_Free
    got, metrics = prepared_by_stem(tmp_path / "a", names)
    assert metrics["class_names"] == {"1": "defect"}
    assert {stem: label for stem, (label, _, _) in got.items()} == {"d0": 1, "d1": 1, "d2": 1, "d3": 0}


@pytest.mark.parametrize("parts", [[""], ["train", "test"]])  # crack/ alone; train/crack/ and test/crack/
def test_one_type_folder_and_no_clean_folder_is_refused(tmp_path, parts):
    cracks = [s for s in TYPES if s.class_name == "crack"]
    for i, part in enumerate(parts):
        write_folders(cracks[i :: len(parts)], tmp_path / "a" / part)
    with pytest.raises(UserError, match=r"one class folder, crack, .*nothing to tell apart") as exc:
        prepare(tmp_path / "a", "fail", DATA)
    assert "\n" not in str(exc.value) and "data.clean_names" in str(exc.value)


def test_images_without_masks_or_class_folders_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    for s in TYPES:
        Image.fromarray(s.image).save(tmp_path / "a" / f"{s.stem}.jpg")
    with pytest.raises(UserError, match=r"no mask and no class folder, so its label is unknown"):
        prepare(tmp_path / "a", "fail", DATA)


def test_explicit_format_must_match_the_folder(tmp_path):
    write_published(SAMPLES, tmp_path / "a")
    with pytest.raises(UserError, match="data.format is folders, but the folder looks like pairs"):
        prepare(tmp_path / "a", "fail", defaults(data={"format": "folders"}).data)
    assert prepare(tmp_path / "a", "fail", defaults(data={"format": "pairs"}).data)[3]["layout"] == "pairs"


def test_ignored_files_are_counted(tmp_path):
    write_mvtec(SAMPLES, tmp_path / "a")
    (tmp_path / "a" / "license.txt").write_text("CC BY-NC-SA 4.0")
    (tmp_path / "a" / ".DS_Store").write_text("")
    assert prepare(tmp_path / "a", "fail", DATA)[3]["ignored_files"] == 1


# Bad input: one paragraph naming the file and the fix.
def _published(tmp_path: Path) -> Path:
    write_published(SAMPLES, tmp_path / "src")
    return tmp_path / "src"


def _mask_of(root: Path, stem: str) -> Path:
    return next(root.rglob(f"{stem}.png"))


def bad_mask_size(root: Path) -> str:
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(_mask_of(root, "d0"))
    return r"d0.png is 40x25 pixels but its image is 40x24"


def bad_mask_not_an_image(root: Path) -> str:
    _mask_of(root, "d1").write_bytes(b"not a png")
    return r"mask .*d1.png is not a readable image"


def bad_two_masks(root: Path) -> str:
    shutil.copy(_mask_of(root, "d0"), _mask_of(root, "d0").with_name("d0_mask.png"))
    return r"d0.jpg: two masks"


def bad_mask_without_image(root: Path) -> str:
    shutil.copy(_mask_of(root, "d0"), _mask_of(root, "d0").with_name("gone_gt.png"))
    return r"gone_gt.png: a mask without an image"


def bad_empty_class_folder(root: Path) -> str:
    (root / "MT_Dent").mkdir()
    return r"MT_Dent: an empty class folder"


def bad_mask_in_clean_folder(root: Path) -> str:
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(_mask_of(root, "c1"))
    return r"c1.jpg: .*non-empty mask .* in a clean folder"


def bad_image_outside_class_folders(root: Path) -> str:
    shutil.copy(next(root.rglob("c0.jpg")), root / "stray.jpg")
    return r"stray.jpg: not in a class folder, while other images are"


def bad_mixed_mask_tree(root: Path) -> str:
    (root / "masks").mkdir()
    shutil.copy(_mask_of(root, "d0"), root / "masks" / "d0.png")
    return r"layouts mixed: .* beside their images and 1 in a mask tree"


def bad_severstal_and_coco(root: Path) -> str:
    shutil.rmtree(root)
    (root / "train_images").mkdir(parents=True)
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    (root / "annotations.json").write_text("{}")
    return r"more than one layout fits: severstal .*; coco .*Set data.format"


def bad_severstal_and_folders(root: Path) -> str:
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    return r"layouts mixed: a Severstal train.csv / train_images/ and images elsewhere"


def bad_no_images(root: Path) -> str:
    shutil.rmtree(root)
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.txt").write_text("hi")
    return r"no layout fits: no images .* 1 other files \(readme.txt\).*data.format"


def bad_ambiguous_pair(root: Path) -> str:
    shutil.copy(_mask_of(root, "d0"), _mask_of(root, "d0").with_suffix(".bmp"))
    return r"share the stem 'd0'"


BAD = [
    bad_mask_size,
    bad_mask_not_an_image,
    bad_two_masks,
    bad_mask_without_image,
    bad_empty_class_folder,
    bad_mask_in_clean_folder,
    bad_image_outside_class_folders,
    bad_mixed_mask_tree,
    bad_severstal_and_coco,
    bad_severstal_and_folders,
    bad_no_images,
    bad_ambiguous_pair,
]


@pytest.mark.parametrize("breaker", BAD, ids=[b.__name__ for b in BAD])
def test_bad_tree_is_refused_with_file_and_fix(tmp_path, breaker):
    root = _published(tmp_path)
    pattern = breaker(root)
    with pytest.raises(UserError, match=pattern) as exc:
        prepare(root, "fail", DATA)
    assert "\n" not in str(exc.value)


def test_skip_lists_each_bad_image_with_its_reason(tmp_path):
    root = _published(tmp_path)
    bad_mask_size(root)
    bad_mask_in_clean_folder(root)
    images, _, excluded, metrics = prepare(root, "skip", DATA)
    assert sorted(Path(i).stem for i in excluded.ImageId) == ["c1", "d0"]
    assert excluded.problem.str.contains("pixels but its image").any()
    assert excluded.problem.str.contains("clean folder").any()
    assert len(images) == len(SAMPLES) - 2 and metrics["excluded_bad_images"] == 2


def _coco(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "coco"
    write_coco(SAMPLES, root, encoding="polygons")
    return root, json.loads((root / "annotations.json").read_text())


def _save(root: Path, data: dict) -> None:
    (root / "annotations.json").write_text(json.dumps(data))


def coco_unknown_image_id(root: Path, data: dict) -> str:
    data["annotations"][0]["image_id"] = 999
    return r"annotations.json: annotation 1 refers to image id 999, which is not in 'images'"


def coco_missing_file(root: Path, data: dict) -> str:
    (root / data["images"][0]["file_name"]).unlink()
    return r"c0.jpg: file not found"


def coco_listed_twice(root: Path, data: dict) -> str:
    data["images"].append({**data["images"][0], "id": 77})
    return r"c0.jpg is listed twice"


def coco_same_id_twice(root: Path, data: dict) -> str:
    data["images"].append({**data["images"][1], "id": data["images"][0]["id"]})
    return r"image id 1 is listed twice"


def coco_polygon_outside(root: Path, data: dict) -> str:
    data["annotations"][0]["segmentation"][0][0] = W + 5
    return r"annotation 1 of images/d0.jpg has a polygon outside the image \(40x24\)"


def coco_wrong_size(root: Path, data: dict) -> str:
    data["images"][3]["width"] = W + 1
    return r"gives images/d0.jpg the size 41x24, but the file is 40x24"


COCO_BAD = [
    coco_unknown_image_id,
    coco_missing_file,
    coco_listed_twice,
    coco_same_id_twice,
    coco_polygon_outside,
    coco_wrong_size,
]


@pytest.mark.parametrize("breaker", COCO_BAD, ids=[b.__name__ for b in COCO_BAD])
def test_bad_coco_is_refused_with_file_and_fix(tmp_path, breaker):
    root, data = _coco(tmp_path)
    pattern = breaker(root, data)
    _save(root, data)
    with pytest.raises(UserError, match=pattern) as exc:
        prepare(root, "fail", DATA)
    assert "\n" not in str(exc.value)


def test_coco_images_not_in_the_annotations_are_reported(tmp_path):
    root, _ = _coco(tmp_path)
    shutil.copy(root / "images" / "c0.jpg", root / "images" / "unlisted.jpg")
    images, _, _, metrics = prepare(root, "fail", DATA)
    assert metrics["ignored_files"] == 1 and len(images) == len(SAMPLES)


def test_coco_box_only_annotation_is_defective_without_mask(tmp_path):
    images, masks, _, _ = prepare(_coco(tmp_path)[0], "fail", DATA)
    d3 = images[images.ImageId == "images/d3.jpg"].iloc[0]
    assert d3.label == 1 and d3.n_masks == 0 and d3.classes != ""
    assert "images/d3.jpg" not in set(masks.ImageId)


def test_cvat_segmentation_mask_export(tmp_path):
    """CVAT "Segmentation mask 1.1": JPEGImages/, colour masks in SegmentationClass/, SegmentationObject/ and
    ImageSets/ beside; no clean folder, so each image's mask gives its label."""
    root = tmp_path / "cvat"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(s.stem for s in SAMPLES))
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncrack:250,50,83::\n")
    for tree in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        (root / tree).mkdir()
    for sample in SAMPLES:
        Image.fromarray(sample.image).save(root / "JPEGImages" / f"{sample.stem}.jpg", quality=95)
        colour = np.zeros((H, W, 3), np.uint8)
        if sample.mask is not None:
            colour[sample.mask] = (250, 50, 83)
        for tree in ("SegmentationClass", "SegmentationObject"):
            Image.fromarray(colour).save(root / tree / f"{sample.stem}.png")
    images, masks, _, metrics = prepare(root, "fail", DATA)
    assert metrics["layout"] == "pairs" and metrics["class_names"] == {"1": "defect"}
    assert metrics["ignored_files"] == 1 + 1 + len(SAMPLES)  # labelmap.txt, default.txt, SegmentationObject
    for r in images.itertuples():
        sample = next(x for x in SAMPLES if f"{x.stem}.jpg" == Path(r.ImageId).name)
        assert r.label == int(sample.mask is not None)
        if sample.mask is not None:
            np.testing.assert_array_equal(load_masks(masks, r.ImageId, H, W)[1], sample.mask)
