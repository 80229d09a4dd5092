"""VOC, COCO and folder readers on small files written by the tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captum_nave.evaluation import (
    BoxDataset,
    ImageRecord,
    load_image,
    read_coco,
    read_dataset,
    read_folder,
    read_voc,
)


def _image(path: Path, w: int, h: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _voc_xml(filename, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><truncated>{t}</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
        "</object>"
        for n, b, d, t in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"
    )


def make_voc(root: Path, year: str = "2007", extra: dict = None) -> Path:
    base = root / "VOCdevkit" / f"VOC{year}"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    anns = {
        "000001": (40, 30, [("cat", (1, 1, 10, 20), 0, 0), ("dog", (5, 6, 40, 30), 1, 0)]),
        "000002": (50, 20, [("car", (11, 2, 30, 20), 0, 1)]),
        "000003": (20, 20, []),  # no objects -> skipped
        "000004": (30, 30, [("person", (2.0, 3.0, 29.0, 30.0), 0, 0)]),  # VOC2012-style floats
    }
    anns.update(extra or {})
    for iid, (w, h, objs) in anns.items():
        (base / "Annotations" / f"{iid}.xml").write_text(_voc_xml(f"{iid}.jpg", w, h, objs))
        _image(base / "JPEGImages" / f"{iid}.jpg", w, h)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(anns) + "\n")
    return base


# --------------------------------------------------------------------------- VOC
def test_voc_boxes_are_made_zero_based_and_flags_kept_by_default(tmp_path):
    base = make_voc(tmp_path)
    ds = read_voc(base)
    assert ds.name == "VOC2007-trainval"
    assert [r.image_id for r in ds] == ["000001", "000002", "000004"]
    assert ds.skipped == {"no_boxes": ["000003"]} and ds.n_skipped == 1
    r = ds[0]
    assert (r.width, r.height) == (40, 30) and r.classes == ("cat", "dog")
    np.testing.assert_array_equal(r.boxes, [[0, 0, 10, 20], [4, 5, 40, 30]])  # xmin-1, ymin-1
    np.testing.assert_array_equal(ds[2].boxes, [[1, 2, 29, 30]])
    assert load_image(r).shape == (30, 40, 3)


def test_voc_drop_difficult_and_truncated(tmp_path):
    base = make_voc(tmp_path)
    ds = read_voc(base, drop_difficult=True)
    assert len(ds[0].boxes) == 1 and ds.dropped_boxes == 1
    ds = read_voc(base, drop_difficult=True, drop_truncated=True)
    # 000002 loses its only (truncated) box and is skipped
    assert [r.image_id for r in ds] == ["000001", "000004"]
    assert ds.skipped["no_boxes"] == ["000002", "000003"] and ds.dropped_boxes == 2


def test_voc_root_resolution(tmp_path):
    make_voc(tmp_path, "2007")
    devkit = tmp_path / "VOCdevkit"
    assert read_voc(devkit).name == "VOC2007-trainval"  # the only year found
    make_voc(tmp_path, "2012")
    with pytest.raises(ValueError, match="year"):
        read_voc(devkit)
    assert read_voc(devkit, year=2012).name == "VOC2012-trainval"
    with pytest.raises(FileNotFoundError, match="root"):
        read_voc(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="split.*trainval"):
        read_voc(devkit, year=2007, split="val")


def test_voc_box_outside_the_image(tmp_path):
    base = make_voc(tmp_path, extra={"000005": (30, 30, [("cat", (5, 5, 31, 20), 0, 0), ("dog", (1, 1, 5, 5), 0, 0)])})
    # kept as annotated by default, as the authors' script does, with one warning and a count
    with pytest.warns(RuntimeWarning, match=r"1 ground-truth box\(es\) in 1 image\(s\) leave.*000005\.xml"):
        ds = read_voc(base)
    np.testing.assert_array_equal(ds[-1].boxes, [[4, 4, 31, 20], [0, 0, 5, 5]])
    assert ds.outside_boxes == 1 and ds.dropped_boxes == 0
    with pytest.raises(ValueError, match=r"000005\.xml.*leaves the 30x30 image.*'keep', 'clip' or 'drop'"):
        read_voc(base, invalid_boxes="raise")
    ds = read_voc(base, invalid_boxes="clip")
    np.testing.assert_array_equal(ds[-1].boxes, [[4, 4, 30, 20], [0, 0, 5, 5]])
    ds = read_voc(base, invalid_boxes="drop")
    np.testing.assert_array_equal(ds[-1].boxes, [[0, 0, 5, 5]])
    assert ds.dropped_boxes == 1
    with pytest.raises(ValueError, match="invalid_boxes"):
        read_voc(base, invalid_boxes="ignore")


def test_voc_malformed_and_missing_files(tmp_path):
    base = make_voc(tmp_path)
    (base / "Annotations" / "000002.xml").write_text("<annotation><size><width>5</width>")
    with pytest.raises(ValueError, match=r"malformed VOC annotation .*000002\.xml"):
        read_voc(base)
    (base / "Annotations" / "000002.xml").write_text(
        _voc_xml("000002.jpg", 50, 20, [("car", ("a", 2, 30, 20), 0, 0)])
    )
    with pytest.raises(ValueError, match="xmin.*not a number"):
        read_voc(base)
    (base / "Annotations" / "000002.xml").write_text("<annotation><filename>x</filename></annotation>")
    with pytest.raises(ValueError, match="missing <size>"):
        read_voc(base)
    (base / "Annotations" / "000002.xml").unlink()
    with pytest.raises(FileNotFoundError, match="000002.xml"):
        read_voc(base)
    base2 = make_voc(tmp_path / "b")
    (base2 / "JPEGImages" / "000004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000004.jpg"):
        read_voc(base2)


def test_load_image_checks_the_annotated_size(tmp_path):
    base = make_voc(tmp_path)
    _image(base / "JPEGImages" / "000001.jpg", 41, 30)
    rec = read_voc(base)[0]
    with pytest.raises(ValueError, match="40x30"):
        load_image(rec)


# --------------------------------------------------------------------------- COCO
def make_coco(root: Path) -> Path:
    images = [
        {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 20, "height": 20},
        {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "width": 30, "height": 25},
    ]
    anns = [
        {"id": 10, "image_id": 1, "bbox": [1.4, 2.6, 10.2, 5.0], "iscrowd": 0, "category_id": 1},
        {"id": 11, "image_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1, "category_id": 1},
        {"id": 12, "image_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1, "category_id": 2},  # only crowd
        {"id": 13, "image_id": 3, "bbox": [3, 4, 20.7, 10.2], "iscrowd": 0, "category_id": 2},
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    for im in images:
        _image(root / "train2014" / im["file_name"], im["width"], im["height"])
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_xywh_rounded_crowd_dropped(tmp_path):
    ann = make_coco(tmp_path)
    ds = read_coco(ann, tmp_path / "train2014")
    assert ds.name == "instances"
    assert [r.image_id for r in ds] == ["1", "3"]  # the COCO ids
    assert ds[0].path.name == "COCO_train2014_000000000001.jpg" and ds.format == "coco"
    # [1.4, 2.6, 1.4 + 10.2, 2.6 + 5.0] -> round -> [1, 3, 12, 8]
    np.testing.assert_array_equal(ds[0].boxes, [[1, 3, 12, 8]])
    np.testing.assert_array_equal(ds[1].boxes, [[3, 4, 24, 14]])
    assert ds[0].classes == ("cat",)
    assert ds.skipped == {"no_boxes": ["2"]}
    assert ds.dropped_boxes == 2


def test_coco_file_list_restricts_and_orders(tmp_path):
    ann = make_coco(tmp_path)
    fl = tmp_path / "coco_20k_filenames.txt"
    fl.write_text("train2014/COCO_train2014_000000000003.jpg\ntrain2014/COCO_train2014_000000000001.jpg\n")
    ds = read_coco(ann, tmp_path / "train2014", file_list=fl, name="COCO20k")
    assert ds.name == "COCO20k"
    assert [r.image_id for r in ds] == ["3", "1"]
    with pytest.raises(ValueError, match="file_list.*1 file"):
        read_coco(ann, tmp_path / "train2014", file_list=["COCO_train2014_000000000009.jpg"])
    with pytest.raises(FileNotFoundError, match="file_list"):
        read_coco(ann, tmp_path / "train2014", file_list=tmp_path / "none.txt")


def test_coco_errors(tmp_path):
    ann = make_coco(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="malformed JSON"):
        read_coco(bad, tmp_path / "train2014")
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="images"):
        read_coco(bad, tmp_path / "train2014")
    data = json.loads(ann.read_text())
    data["annotations"].append({"image_id": 99, "bbox": [0, 0, 1, 1]})
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown image_id 99"):
        read_coco(bad, tmp_path / "train2014")
    data["annotations"][-1] = {"image_id": 3, "bbox": [20, 4, 20, 10]}  # x + w = 40 > 30
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="leaves the 30x25 image"):
        read_coco(bad, tmp_path / "train2014", invalid_boxes="raise")
    with pytest.warns(RuntimeWarning, match="leave their image"):
        assert read_coco(bad, tmp_path / "train2014").outside_boxes == 1
    assert len(read_coco(bad, tmp_path / "train2014", invalid_boxes="drop")[1].boxes) == 1
    with pytest.raises(FileNotFoundError, match="annotations"):
        read_coco(tmp_path / "missing.json", tmp_path / "train2014")
    (tmp_path / "train2014" / "COCO_train2014_000000000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000003"):
        read_coco(ann, tmp_path / "train2014")


# --------------------------------------------------------------------------- folder
def test_folder_reader(tmp_path):
    _image(tmp_path / "a.png", 32, 24, "PNG")
    _image(tmp_path / "sub" / "b.jpg", 20, 20)
    _image(tmp_path / "c.png", 10, 10, "PNG")
    (tmp_path / "boxes.json").write_text(
        json.dumps({"a.png": [[1, 2, 30, 24]], "sub/b.jpg": [[0, 0, 5, 5], [4, 4, 20, 20]], "c.png": []})
    )
    ds = read_folder(tmp_path, name="mine")
    assert ds.name == "mine" and [r.image_id for r in ds] == ["a.png", "sub/b.jpg"]
    assert (ds[0].width, ds[0].height) == (32, 24)
    np.testing.assert_array_equal(ds[1].boxes, [[0, 0, 5, 5], [4, 4, 20, 20]])
    assert ds.skipped == {"no_boxes": ["c.png"]}
    assert read_dataset("folder", tmp_path, limit=1)[0].image_id == "a.png"


def test_folder_reader_errors(tmp_path):
    _image(tmp_path / "a.png", 32, 24, "PNG")
    with pytest.raises(FileNotFoundError, match="boxes.json"):
        read_folder(tmp_path)
    (tmp_path / "boxes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must map image paths"):
        read_folder(tmp_path)
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match=r"\[x_min, y_min, x_max, y_max\]"):
        read_folder(tmp_path)
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[1, 2, 40, 10]]}))
    with pytest.raises(ValueError, match="leaves the 32x24 image"):
        read_folder(tmp_path)
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[10, 2, 5, 10]]}))
    with pytest.raises(ValueError, match="malformed box"):
        read_folder(tmp_path)
    (tmp_path / "boxes.json").write_text(json.dumps({"zz.png": [[1, 2, 5, 10]]}))
    with pytest.raises(FileNotFoundError, match="zz.png"):
        read_folder(tmp_path)
    with pytest.raises(ValueError, match="format"):
        read_dataset("kitti", tmp_path)
    with pytest.raises(ValueError, match="annotations"):
        read_dataset("coco", tmp_path)


# --------------------------------------------------------------------------- keys (issue 16, point 1)
def _coco_json(root: Path, images, anns) -> Path:
    for im in images:
        if isinstance(im.get("file_name"), str) and not Path(im["file_name"]).is_absolute():
            _image(root / "imgs" / im["file_name"], im["width"], im["height"],
                   "PNG" if im["file_name"].endswith(".png") else "JPEG")
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def test_coco_images_sharing_a_file_stem_keep_their_own_ids(tmp_path):
    # 0.1 keyed images by file stem: three images became "000000" and two were skipped as done
    images = [
        {"id": 7, "file_name": "a/000000.jpg", "width": 20, "height": 20},
        {"id": 8, "file_name": "b/000000.jpg", "width": 20, "height": 20},
        {"id": 9, "file_name": "000000.png", "width": 20, "height": 20},
    ]
    anns = [{"image_id": i, "bbox": [1, 1, 5, 5], "iscrowd": 0} for i in (7, 8, 9)]
    ds = read_coco(_coco_json(tmp_path, images, anns), tmp_path / "imgs")
    assert [r.image_id for r in ds] == ["7", "8", "9"]
    assert [r.path.relative_to(tmp_path / "imgs").as_posix() for r in ds] == [
        "a/000000.jpg", "b/000000.jpg", "000000.png"]
    # a file list naming the shared base name is ambiguous; paths as in file_name are not
    with pytest.raises(ValueError, match=r"file_list: '000000\.jpg' matches several images.*'a/000000\.jpg', 'b/000000\.jpg'"):
        read_coco(tmp_path / "instances.json", tmp_path / "imgs", file_list=["000000.jpg"])
    ds = read_coco(tmp_path / "instances.json", tmp_path / "imgs", file_list=["b/000000.jpg", "000000.png"])
    assert [r.image_id for r in ds] == ["8", "9"]
    with pytest.raises(ValueError, match=r"'000000\.png' \(entry 1\) and 'x/000000\.png' \(entry 2\) are the same image"):
        read_coco(tmp_path / "instances.json", tmp_path / "imgs", file_list=["000000.png", "x/000000.png"])
    (tmp_path / "list.txt").write_text("a/000000.jpg\n000000.png\na/000000.jpg\n")
    with pytest.raises(ValueError, match=r"\(entry 1\) and 'a/000000\.jpg' \(entry 3\).*listed once"):
        read_coco(tmp_path / "instances.json", tmp_path / "imgs", file_list=tmp_path / "list.txt")
    with pytest.raises(ValueError, match="listed once"):
        read_coco(tmp_path / "instances.json", tmp_path / "imgs", file_list=["000000.png", "000000.png"])


def test_coco_duplicate_image_ids_are_refused_naming_both_files(tmp_path):
    images = [
        {"id": 5, "file_name": "one.jpg", "width": 20, "height": 20},
        {"id": 6, "file_name": "two.jpg", "width": 20, "height": 20},
        {"id": 5, "file_name": "three.jpg", "width": 20, "height": 20},
    ]
    ann = _coco_json(tmp_path, images, [{"image_id": 5, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match=r"images\[0\] \('one\.jpg'\) and images\[2\] \('three\.jpg'\).*same id 5"):
        read_coco(ann, tmp_path / "imgs")
    images[2]["id"] = "5"  # the same key once written as a string
    ann = _coco_json(tmp_path, images, [{"image_id": 5, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match="same id '5'"):
        read_coco(ann, tmp_path / "imgs")
    images[2]["id"] = [5]
    ann = _coco_json(tmp_path, images, [])
    with pytest.raises(ValueError, match=r"images\[2\].*integer or string id"):
        read_coco(ann, tmp_path / "imgs")


@pytest.mark.parametrize(
    "value, crowd", [(0, False), (1, True), (False, False), (True, True), ("0", False), ("1", True), (0.0, False)]
)
def test_coco_iscrowd_is_parsed_strictly(tmp_path, value, crowd):
    images = [{"id": 1, "file_name": "x.jpg", "width": 20, "height": 20}]
    anns = [{"image_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": value}, {"image_id": 1, "bbox": [2, 2, 8, 8]}]
    ds = read_coco(_coco_json(tmp_path, images, anns), tmp_path / "imgs")
    assert len(ds[0].boxes) == (1 if crowd else 2) and ds.dropped_boxes == int(crowd)


@pytest.mark.parametrize("value", ["yes", "", 2, 0.5, None, [0]])
def test_coco_iscrowd_other_values_are_refused(tmp_path, value):
    images = [{"id": 1, "file_name": "x.jpg", "width": 20, "height": 20}]
    ann = _coco_json(tmp_path, images, [{"image_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": value}])
    with pytest.raises(ValueError, match=r"annotations\[0\].*iscrowd must be 0 or 1, got " + re.escape(repr(value))):
        read_coco(ann, tmp_path / "imgs")


def test_voc_duplicate_id_in_the_split_file_is_refused(tmp_path):
    base = make_voc(tmp_path)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n\n000001\n")
    with pytest.raises(ValueError, match=r"trainval\.txt lists the image id '000001' twice \(lines 1 and 4\)"):
        read_voc(base)


def test_folder_paths_listed_twice_are_refused(tmp_path):
    _image(tmp_path / "a.png", 20, 20, "PNG")
    (tmp_path / "boxes.json").write_text('{"a.png": [[0, 0, 5, 5]], "a.png": [[1, 1, 9, 9]]}')
    with pytest.raises(ValueError, match=r"boxes\.json.*'a\.png' appears twice"):
        read_folder(tmp_path)
    (tmp_path / "boxes.json").write_text('{"a.png": [[0, 0, 5, 5]], "./a.png": [[1, 1, 9, 9]]}')
    with pytest.raises(ValueError, match=r"lists the image 'a\.png' twice \(as 'a\.png' and '\./a\.png'\)"):
        read_folder(tmp_path)
    # the same stem in two folders or with two extensions: distinct keys (relative paths)
    _image(tmp_path / "sub" / "a.png", 20, 20, "PNG")
    _image(tmp_path / "a.jpg", 20, 20)
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[0, 0, 5, 5]], "sub/a.png": [[0, 0, 5, 5]],
                                                     "./a.jpg": [[0, 0, 5, 5]]}))
    assert [r.image_id for r in read_folder(tmp_path)] == ["a.jpg", "a.png", "sub/a.png"]


def test_box_dataset_refuses_duplicate_ids_naming_both_files(tmp_path):
    box = np.array([[0.0, 0.0, 5.0, 5.0]])
    recs = [ImageRecord("x", tmp_path / "a" / "x.jpg", 9, 9, box), ImageRecord("x", tmp_path / "b" / "x.jpg", 9, 9, box)]
    with pytest.raises(ValueError, match=r"dataset 'd'.*a/x\.jpg' and '.*b/x\.jpg' have the same id 'x'"):
        BoxDataset("d", recs)


# --------------------------------------------------------------------------- NaN / inf (issue 16, point 3)
def test_voc_nan_and_inf_coordinates_are_refused_at_read_time(tmp_path):
    base = make_voc(tmp_path, extra={"000005": (30, 30, [("cat", ("nan", 5, 20, 20), 0, 0), ("dog", (2, 2, 9, 9), 0, 0)]),
                                     "000006": (30, 30, [("cow", (3, 3, "inf", 20), 0, 0), ("pig", (2, 2, 9, 9), 0, 0)])})
    for policy in ("keep", "raise"):
        with pytest.raises(ValueError, match=r"000005\.xml: box \[nan, 4\.0, 20\.0, 20\.0\] has a non-finite coordinate.*'drop'"):
            read_voc(base, invalid_boxes=policy)
    ds = read_voc(base, invalid_boxes="drop")
    np.testing.assert_array_equal(ds[-2].boxes, [[1, 1, 9, 9]])
    np.testing.assert_array_equal(ds[-1].boxes, [[1, 1, 9, 9]])
    assert ds.dropped_boxes == 2
    ds = read_voc(base, invalid_boxes="clip")  # a NaN cannot be clipped: dropped; inf: clipped
    np.testing.assert_array_equal(ds[-2].boxes, [[1, 1, 9, 9]])
    np.testing.assert_array_equal(ds[-1].boxes, [[2, 2, 30, 20], [1, 1, 9, 9]])
    assert ds.dropped_boxes == 1


def test_voc_infinite_size_is_a_clear_error(tmp_path):
    base = make_voc(tmp_path)
    (base / "Annotations" / "000002.xml").write_text(_voc_xml("000002.jpg", "inf", 20, [("car", (1, 1, 5, 5), 0, 0)]))
    with pytest.raises(ValueError, match=r"000002\.xml: width must be a positive integer, got 'inf'"):
        read_voc(base)


def test_coco_and_folder_nan_boxes_are_refused_at_read_time(tmp_path):
    images = [{"id": 1, "file_name": "x.jpg", "width": 20, "height": 20}]
    ann = tmp_path / "instances.json"
    _coco_json(tmp_path, images, [])
    ann.write_text('{"images": [{"id": 1, "file_name": "x.jpg", "width": 20, "height": 20}], "annotations": '
                   '[{"image_id": 1, "bbox": [NaN, 1, 5, 5]}, {"image_id": 1, "bbox": [1, 1, 5, Infinity]}, '
                   '{"image_id": 1, "bbox": [2, 2, 5, 5]}]}')
    with pytest.raises(ValueError, match=r"x\.jpg: box \[nan, 1\.0, nan, 6\.0\] has a non-finite"):
        read_coco(ann, tmp_path / "imgs")
    ds = read_coco(ann, tmp_path / "imgs", invalid_boxes="drop")
    np.testing.assert_array_equal(ds[0].boxes, [[2, 2, 7, 7]])
    assert ds.dropped_boxes == 2
    ds = read_coco(ann, tmp_path / "imgs", invalid_boxes="clip")
    np.testing.assert_array_equal(ds[0].boxes, [[1, 1, 6, 20], [2, 2, 7, 7]])
    _image(tmp_path / "f" / "a.png", 20, 20, "PNG")
    (tmp_path / "f" / "boxes.json").write_text('{"a.png": [[1, 1, 5, NaN], [0, 0, 4, 4]]}')
    with pytest.raises(ValueError, match="non-finite"):
        read_folder(tmp_path / "f")
    np.testing.assert_array_equal(read_folder(tmp_path / "f", invalid_boxes="drop")[0].boxes, [[0, 0, 4, 4]])


# --------------------------------------------------------------------------- paths (issue 16, point 10)
def test_voc_filename_outside_the_dataset_is_refused(tmp_path):
    base = make_voc(tmp_path)
    outside = tmp_path / "elsewhere.jpg"
    _image(outside, 50, 20)
    for name in (str(outside), "../../../elsewhere.jpg"):  # JPEGImages -> VOC2007 -> VOCdevkit -> tmp
        (base / "Annotations" / "000002.xml").write_text(_voc_xml(name, 50, 20, [("car", (1, 1, 5, 5), 0, 0)]))
        with pytest.raises(ValueError, match=r"000002\.xml: <filename> .*points outside .*JPEGImages.*--allow-outside-root"):
            read_voc(base)
        assert read_voc(base, allow_outside_root=True)[1].path.resolve() == outside.resolve()
    (base / "Annotations" / "000002.xml").write_text(_voc_xml("sub/../000002.jpg", 50, 20, [("car", (1, 1, 5, 5), 0, 0)]))
    assert read_voc(base)[1].path.name == "000002.jpg"  # '..' that stays inside is fine
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n../../../x\n")
    with pytest.raises(ValueError, match=r"image id '\.\./\.\./\.\./x\.xml' points outside"):
        read_voc(base)


def test_coco_and_folder_paths_outside_the_root_are_refused(tmp_path):
    outside = tmp_path / "secret.jpg"
    _image(outside, 20, 20)
    for name in (str(outside), "../secret.jpg"):
        images = [{"id": 1, "file_name": name, "width": 20, "height": 20}]
        ann = _coco_json(tmp_path, images, [{"image_id": 1, "bbox": [1, 1, 5, 5]}])
        (tmp_path / "imgs").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match=r"file_name .*secret\.jpg' points outside .*imgs.*--allow-outside-root"):
            read_coco(ann, tmp_path / "imgs")
        assert read_coco(ann, tmp_path / "imgs", allow_outside_root=True)[0].path.resolve() == outside.resolve()
        (tmp_path / "f").mkdir(exist_ok=True)
        (tmp_path / "f" / "boxes.json").write_text(json.dumps({name: [[1, 1, 5, 5]]}))
        with pytest.raises(ValueError, match="image path .* points outside"):
            read_folder(tmp_path / "f")
