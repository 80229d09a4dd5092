"""Runner: reports, resume after interruptions, shards + merge, overlays."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captum_nave.evaluation import (
    CorLocProtocol,
    GridSegmenter,
    comparison_table,
    load_image,
    merge_runs,
    read_folder,
    read_records,
    run_corloc,
)

PROTOCOL = CorLocProtocol(min_area=4, border=1)


def make_folder(root: Path, n: int = 7, seed: int = 0) -> Path:
    """Images of 30-50 px with one coloured rectangle each; boxes.json lists it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for i in range(n):
        h, w = (int(v) for v in rng.integers(30, 51, size=2))
        img = np.full((h, w, 3), 40, dtype=np.uint8)
        bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y0 : y0 + bh, x0 : x0 + bw] = (200, 60, 30)
        Image.fromarray(img).save(root / f"im{i}.png")
        boxes[f"im{i}.png"] = [[x0, y0, x0 + bw, y0 + bh]]
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


class BoxPainter:
    """A segmenter that labels the ground-truth box (known to the test): CorLoc 1."""

    def __init__(self, boxes):
        self.boxes = boxes
        self.calls = []

    def __call__(self, image):
        key = image.tobytes()
        self.calls.append(key)
        x0, y0, x1, y1 = (int(v) for v in self.boxes[key])
        lab = np.zeros(image.shape[:2], dtype=np.int64)
        lab[y0:y1, x0:x1] = 1
        return lab

    def config(self):
        return {"method": "box-painter"}


class Counting:
    def __init__(self, inner):
        self.inner = inner
        self.n = 0

    def __call__(self, image):
        self.n += 1
        return self.inner(image)

    def config(self):
        return self.inner.config()


@pytest.fixture()
def data(tmp_path):
    ds = read_folder(make_folder(tmp_path / "data"))
    painter = BoxPainter({load_image(r).tobytes(): r.boxes[0] for r in ds})
    return ds, painter


def _methods(painter):
    return {"painter": painter, "grid3": GridSegmenter(3, 3), "grid2": GridSegmenter(2, 2)}


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def _records(out, method, tag="shard-0-of-1"):
    return read_records(Path(out) / "records" / f"{method}.{tag}.jsonl")


def _csv_without_time(path):
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


# --------------------------------------------------------------------------- reports
def test_run_scores_equal_the_protocol_applied_directly(data, tmp_path):
    ds, painter = data
    methods = _methods(painter)
    summary = run_corloc(ds, methods, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    assert summary.complete and summary.n_expected == len(ds)
    for name, m in methods.items():
        for s in ("inner", "outer"):
            sels = [PROTOCOL.evaluate(m(load_image(r)), r.boxes)[s] for r in ds]
            sc = summary.score(name, s)
            assert sc.corloc == pytest.approx(np.mean([x.correct for x in sels]))
            assert sc.mean_iou == pytest.approx(np.mean([x.iou for x in sels]))
            assert sc.n_images == len(ds)
    assert summary.corloc("painter", "outer") == 1.0
    assert summary.corloc("grid3", "outer") < 1.0  # the grid misses some boxes

    rows = list(csv.DictReader(open(tmp_path / "out" / "per_image.csv")))
    assert len(rows) == 3 * len(ds)
    assert {"dataset", "method", "image_id", "inner_correct", "outer_iou", "inner_outer_x_min"} <= set(rows[0])
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| painter | 100.0 | 100.0 |" in md
    assert "| painter (inner-box) | 100.0 |" in md  # comparison table of several methods
    js = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert js[0]["dataset"] == ds.name and len(js[0]["scores"]) == 6


def test_overlays_are_written(data, tmp_path):
    ds, painter = data
    run_corloc(ds[:2], {"painter": painter}, tmp_path / "out", protocol=PROTOCOL, overlays=True, fsync=False)
    pngs = sorted((tmp_path / "out" / "overlays" / "painter").glob("*.png"))
    assert [p.name for p in pngs] == ["im0.png.png", "im1.png.png"]
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape[0] == 400 and img.shape[1] == 800  # two strategy panels at 100 dpi
    assert img[..., :3].std() > 0


# --------------------------------------------------------------------------- resume
def test_resume_after_an_exception_recomputes_nothing_and_gives_the_same_tables(data, tmp_path):
    ds, painter = data
    ref = run_corloc(ds, _methods(painter), tmp_path / "ref", protocol=PROTOCOL, fsync=False)

    seen = []

    def crash_after_three(method, record):
        seen.append((method, record["image_id"]))
        if len(seen) == 3 * 3 + 1:  # 3 full images, then one record of the 4th
            raise KeyboardInterrupt

    counted = {k: Counting(v) for k, v in _methods(painter).items()}
    with pytest.raises(KeyboardInterrupt):
        run_corloc(ds, counted, tmp_path / "out", protocol=PROTOCOL, on_record=crash_after_three)
    assert len(_records(tmp_path / "out", "painter")) == 4
    assert len(_records(tmp_path / "out", "grid3")) == 3
    assert not (tmp_path / "out" / "summary.md").exists()

    counted2 = {k: Counting(v) for k, v in _methods(painter).items()}
    got = run_corloc(ds, counted2, tmp_path / "out", protocol=PROTOCOL)
    assert counted2["painter"].n == len(ds) - 4
    assert counted2["grid3"].n == len(ds) - 3
    assert got.scores == ref.scores
    for m in counted:
        assert _strip(_records(tmp_path / "out", m)) == _strip(_records(tmp_path / "ref", m))
    assert (tmp_path / "out" / "summary.md").read_text() == (tmp_path / "ref" / "summary.md").read_text()
    assert _csv_without_time(tmp_path / "out" / "per_image.csv") == _csv_without_time(
        tmp_path / "ref" / "per_image.csv"
    )


def test_resume_after_a_kill_mid_write_truncates_the_partial_line(data, tmp_path):
    ds, painter = data
    ref = run_corloc(ds, _methods(painter), tmp_path / "out", protocol=PROTOCOL, fsync=False)
    path = tmp_path / "out" / "records" / "grid3.shard-0-of-1.jsonl"
    raw = path.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(raw[: last_start + (len(raw) - last_start) // 2])  # half of the last line
    counted = {k: Counting(v) for k, v in _methods(painter).items()}
    with pytest.warns(RuntimeWarning, match="partial last line"):
        got = run_corloc(ds, counted, tmp_path / "out", protocol=PROTOCOL)
    assert counted["grid3"].n == 1 and counted["painter"].n == 0
    assert got.scores == ref.scores
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])
    assert len(lines) - 1 == len(ds)


def test_corrupt_complete_line_is_reported(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"image_id": "a"}\n{not json}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_records(p)


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from captum_nave.evaluation import CorLocProtocol, GridSegmenter, read_folder, run_corloc
    ds = read_folder(sys.argv[1])
    n = [0]
    def kill(method, record):
        n[0] += 1
        if n[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    run_corloc(ds, {"grid": GridSegmenter(3, 3)}, sys.argv[2],
               protocol=CorLocProtocol(min_area=4, border=1), on_record=kill)
    """
)


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="needs SIGKILL")
def test_resume_after_sigkill_of_the_process(data, tmp_path):
    ds, _ = data
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "data"), str(out)],
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(_records(out, "grid")) == 3
    counted = Counting(GridSegmenter(3, 3))
    got = run_corloc(ds, {"grid": counted}, out, protocol=PROTOCOL)
    assert counted.n == len(ds) - 3
    ref = run_corloc(ds, {"grid": GridSegmenter(3, 3)}, tmp_path / "ref", protocol=PROTOCOL, fsync=False)
    assert got.scores == ref.scores


def test_resume_refuses_different_settings(data, tmp_path):
    ds, painter = data
    run_corloc(ds, {"grid": GridSegmenter(3, 3)}, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    with pytest.raises(ValueError, match="different protocol"):
        run_corloc(ds, {"grid": GridSegmenter(3, 3)}, tmp_path / "out", fsync=False)
    with pytest.raises(ValueError, match="method 'grid' with different settings"):
        run_corloc(ds, {"grid": GridSegmenter(2, 2)}, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    with pytest.raises(ValueError, match="different strategies"):
        run_corloc(ds, {"grid": GridSegmenter(3, 3)}, tmp_path / "out", protocol=PROTOCOL,
                   strategies=["outer"], fsync=False)
    s = run_corloc(ds, {"grid": GridSegmenter(2, 2)}, tmp_path / "out", protocol=PROTOCOL,
                   overwrite=True, fsync=False)
    assert s.score("grid", "inner").n_images == len(ds)


# --------------------------------------------------------------------------- shards
def test_sharded_runs_merged_equal_the_unsharded_run(data, tmp_path):
    ds, painter = data
    ref = run_corloc(ds, _methods(painter), tmp_path / "ref", protocol=PROTOCOL, fsync=False)
    shard_dirs = []
    for i in range(3):
        d = tmp_path / f"shard{i}"
        part = run_corloc(ds, _methods(painter), d, protocol=PROTOCOL, num_shards=3, shard_index=i,
                          fsync=False)
        assert part.n_expected == len(range(i, len(ds), 3))
        assert not (d / "summary.md").exists()
        shard_dirs.append(d)
    with pytest.warns(RuntimeWarning, match=r"missing shard\(s\) \[2\]"):
        partial = merge_runs(shard_dirs[:2], tmp_path / "partial")
    assert not partial[0].complete
    merged = merge_runs(shard_dirs, tmp_path / "merged")
    assert len(merged) == 1 and merged[0].complete
    assert merged[0].scores == ref.scores
    assert (tmp_path / "merged" / "summary.md").read_text() == (tmp_path / "ref" / "summary.md").read_text()
    assert _csv_without_time(tmp_path / "merged" / "per_image.csv") == _csv_without_time(
        tmp_path / "ref" / "per_image.csv"
    )


def test_shards_in_one_folder_merge_too(data, tmp_path):
    ds, painter = data
    for i in range(2):
        run_corloc(ds, {"grid": GridSegmenter(3, 3)}, tmp_path / "out", protocol=PROTOCOL,
                   num_shards=2, shard_index=i, fsync=False)
    (merged,) = merge_runs(tmp_path / "out")
    ref = run_corloc(ds, {"grid": GridSegmenter(3, 3)}, tmp_path / "ref", protocol=PROTOCOL, fsync=False)
    assert merged.scores == ref.scores and merged.complete


def test_merge_of_two_datasets_gives_a_comparison_table(tmp_path):
    ds_a = read_folder(make_folder(tmp_path / "A", n=4, seed=1), name="setA")
    ds_b = read_folder(make_folder(tmp_path / "B", n=5, seed=2), name="setB")
    sa = run_corloc(ds_a, {"g2": GridSegmenter(2, 2), "g3": GridSegmenter(3, 3)}, tmp_path / "ra",
                    protocol=PROTOCOL, fsync=False)
    sb = run_corloc(ds_b, {"g2": GridSegmenter(2, 2)}, tmp_path / "rb", protocol=PROTOCOL, fsync=False)
    merged = merge_runs([tmp_path / "ra", tmp_path / "rb"], tmp_path / "all")
    assert [m.dataset for m in merged] == ["setA", "setB"]
    table = comparison_table(merged)
    lines = table.splitlines()
    assert lines[0] == "| method (strategy) | setA | setB |"
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    assert f"| g2 (inner-box) | {pct(sa.corloc('g2', 'inner'))} | {pct(sb.corloc('g2', 'inner'))} |" in lines
    assert f"| g3 (outer-box) | {pct(sa.corloc('g3', 'outer'))} | - |" in lines
    assert table in (tmp_path / "all" / "summary.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "all" / "per_image.csv")))
    assert len(rows) == 2 * 4 + 5


# --------------------------------------------------------------------------- errors
def test_runner_argument_errors(data, tmp_path):
    ds, painter = data
    with pytest.raises(ValueError, match="num_shards"):
        run_corloc(ds, {"g": GridSegmenter()}, tmp_path, num_shards=0)
    with pytest.raises(ValueError, match="shard_index"):
        run_corloc(ds, {"g": GridSegmenter()}, tmp_path, num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="methods"):
        run_corloc(ds, {}, tmp_path)
    with pytest.raises(TypeError, match="methods\\['g'\\]"):
        run_corloc(ds, {"g": lambda im: im}, tmp_path)
    with pytest.raises(TypeError, match="dataset"):
        run_corloc(list(ds), {"g": GridSegmenter()}, tmp_path)
    with pytest.raises(ValueError, match="collide"):
        run_corloc(ds, {"a/b": GridSegmenter(), "a_b": GridSegmenter()}, tmp_path)

    class Small(GridSegmenter):
        def __call__(self, image):
            return super().__call__(image)[:-1]

    with pytest.raises(ValueError, match="covering the image"):
        run_corloc(ds, {"small": Small()}, tmp_path / "s", fsync=False)
    with pytest.raises(FileNotFoundError, match="no CorLoc records"):
        merge_runs(tmp_path / "nothing")


def test_models_run_one_after_another_accumulate_in_one_table(data, tmp_path):
    ds, painter = data
    both = run_corloc(ds, {"painter": painter, "grid3": GridSegmenter(3, 3)}, tmp_path / "ref",
                      protocol=PROTOCOL, fsync=False)
    run_corloc(ds, {"painter": painter}, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    counted = Counting(GridSegmenter(3, 3))
    later = run_corloc(ds, {"grid3": counted}, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    assert counted.n == len(ds) and later.methods == ["painter", "grid3"]
    assert later.scores == both.scores
    assert (tmp_path / "out" / "summary.md").read_text() == (tmp_path / "ref" / "summary.md").read_text()


# --------------------------------------------------------------------------- protocol (issue 12)
def test_protocol_is_recorded_in_the_metadata_and_the_summary(data, tmp_path):
    ds, painter = data
    s = run_corloc(ds, {"grid3": GridSegmenter(3, 3)}, tmp_path / "a", fsync=False,
                   protocol=CorLocProtocol(min_area=4, border=1))
    meta = json.loads((tmp_path / "a" / "records" / "meta.shard-0-of-1.json").read_text())
    assert meta["protocol"] == {"min_area": 4, "border": 1, "iou_threshold": 0.5, "connectivity": 4,
                                "conventions": "authors"}
    assert s.protocol == meta["protocol"]
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "protocol 'authors': a hit is IoU > 0.5 (inner strategy, strict) or >= 0.5 (outer" in md
    assert json.loads((tmp_path / "a" / "summary.json").read_text())[0]["protocol"]["conventions"] == "authors"
    c = run_corloc(ds, {"grid3": GridSegmenter(3, 3)}, tmp_path / "c", protocol="clean", fsync=False)
    assert c.protocol == {**CorLocProtocol().to_dict(), "conventions": "clean"}
    assert "protocol 'clean': a hit is IoU >= 0.5" in (tmp_path / "c" / "summary.md").read_text()
    # the same label maps scored both ways: per image, each equals the protocol applied directly
    for name, summary in (("authors", s), ("clean", c)):
        proto = CorLocProtocol(min_area=4, border=1) if name == "authors" else CorLocProtocol(conventions="clean")
        want = [proto.evaluate(GridSegmenter(3, 3)(load_image(r)), r.boxes)["inner"].correct for r in ds]
        assert summary.corloc("grid3", "inner") == pytest.approx(np.mean(want))


def test_images_without_a_surviving_component_are_counted_misses(data, tmp_path):
    ds, painter = data
    # the paper's min_area (784 px) removes every component of these 30-50 px images
    s = run_corloc(ds, {"grid3": GridSegmenter(3, 3)}, tmp_path / "out", fsync=False)
    sc = s.score("grid3", "inner")
    assert sc.n_no_component == len(ds) and sc.corloc == 0.0 and sc.n_images == len(ds)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"| grid3 | 0.0 | 0.0 | 0.000 | 0.000 | {len(ds)} | {len(ds)} |" in md
    assert "images where no component survives the filters count as misses (column 'no component')" in md


def test_boxes_leaving_the_image_are_kept_and_counted_in_the_summary(tmp_path):
    root = make_folder(tmp_path / "data", n=3)
    boxes = json.loads((root / "boxes.json").read_text())
    boxes["im0.png"] = [[-1, 0, 10, 12]]  # leaves the image on the left
    (root / "boxes.json").write_text(json.dumps(boxes))
    with pytest.warns(RuntimeWarning, match="leave their image"):
        ds = read_folder(root, invalid_boxes="keep")
    s = run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    assert s.n_outside_boxes == 1
    np.testing.assert_array_equal(ds[0].boxes, [[-1, 0, 10, 12]])
    rec = _records(tmp_path / "out", "g")[0]
    want = PROTOCOL.evaluate(GridSegmenter(3, 3)(load_image(ds[0])), [[-1, 0, 10, 12]])["outer"]
    assert rec["outer"]["iou"] == want.iou
    assert "1 ground-truth box(es) leave their image and are used as annotated" in (
        tmp_path / "out" / "summary.md").read_text()


# --------------------------------------------------------------------------- keys (issue 16, point 1)
def _coco_same_stem(root: Path) -> Path:
    images, anns = [], []
    for i, name in enumerate(["a/000000.jpg", "b/000000.jpg", "000000.png"]):
        arr = np.full((40, 48, 3), 30 * i, dtype=np.uint8)
        arr[5:25, 8:30] = (200, 50, 50)
        (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "imgs" / name)
        images.append({"id": 100 + i, "file_name": name, "width": 48, "height": 40})
        anns.append({"image_id": 100 + i, "bbox": [8, 5, 22, 20], "iscrowd": 0})
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root / "instances.json"


def test_coco_images_sharing_a_stem_are_all_evaluated_and_resumed(tmp_path):
    from captum_nave.evaluation import read_coco

    ds = read_coco(_coco_same_stem(tmp_path), tmp_path / "imgs")
    counted = Counting(GridSegmenter(3, 3))
    s = run_corloc(ds, {"g": counted}, tmp_path / "out", protocol=PROTOCOL, fsync=False)
    assert counted.n == 3 and s.complete and s.score("g", "outer").n_images == 3
    assert [r["image_id"] for r in _records(tmp_path / "out", "g")] == ["100", "101", "102"]
    again = Counting(GridSegmenter(3, 3))
    assert run_corloc(ds, {"g": again}, tmp_path / "out", protocol=PROTOCOL, fsync=False).complete
    assert again.n == 0


def test_overlay_files_of_similar_ids_do_not_collide(tmp_path):
    root = tmp_path / "data"
    for key in ("a/x.png", "a_x.png"):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).save(root / key)
    (root / "boxes.json").write_text(json.dumps({"a/x.png": [[2, 2, 20, 20]], "a_x.png": [[2, 2, 20, 20]]}))
    run_corloc(read_folder(root), {"g": GridSegmenter(2, 2)}, tmp_path / "out", protocol=PROTOCOL,
               overlays=True, fsync=False)
    names = sorted(p.name for p in (tmp_path / "out" / "overlays" / "g").glob("*.png"))
    assert len(names) == 2 and "a_x.png.png" in names


def _as_version_0_1(out: Path) -> None:
    """Rewrite a run's meta as captum-nave 0.1 wrote it (no record_keys, format, conventions)."""
    path = out / "records" / "meta.shard-0-of-1.json"
    meta = json.loads(path.read_text())
    for key in ("record_keys", "format", "n_outside_boxes"):
        meta.pop(key)
    meta["protocol"].pop("conventions")
    path.write_text(json.dumps(meta))


def test_folders_written_by_version_0_1_resume_with_the_clean_protocol(data, tmp_path):
    ds, painter = data
    clean = CorLocProtocol(min_area=4, border=1, conventions="clean")
    ref = run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / "ref", protocol=clean, fsync=False)
    run_corloc(ds[:4], {"g": GridSegmenter(3, 3)}, tmp_path / "old", protocol=clean, fsync=False)
    _as_version_0_1(tmp_path / "old")
    with pytest.raises(ValueError, match=r"different protocol.*conventions 'clean': pass protocol='clean'"):
        run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / "old", protocol=PROTOCOL, fsync=False)
    counted = Counting(GridSegmenter(3, 3))
    got = run_corloc(ds, {"g": counted}, tmp_path / "old", protocol=clean, fsync=False)
    assert counted.n == len(ds) - 4 and got.scores == ref.scores
    # a 0.1 shard merges with a new one (folder keys did not change)
    for i in range(2):
        run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / f"s{i}", protocol=clean, num_shards=2,
                   shard_index=i, fsync=False)
    meta = tmp_path / "s0" / "records" / "meta.shard-0-of-2.json"
    m = json.loads(meta.read_text())
    m.pop("record_keys"), m.pop("format"), m["protocol"].pop("conventions")
    meta.write_text(json.dumps(m))
    (merged,) = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")
    assert merged.scores == ref.scores and merged.complete


def test_coco_folders_written_by_version_0_1_are_refused(tmp_path):
    from captum_nave.evaluation import read_coco

    ds = read_coco(_coco_same_stem(tmp_path), tmp_path / "imgs")
    clean = CorLocProtocol(min_area=4, border=1, conventions="clean")
    run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / "out", protocol=clean, fsync=False)
    _as_version_0_1(tmp_path / "out")
    path = tmp_path / "out" / "records" / "g.shard-0-of-1.jsonl"  # 0.1 keyed these by file stem
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "image_id": "000000"}) + "\n" for r in recs[:1]))
    with pytest.raises(ValueError, match="COCO results of captum-nave 0.1, keyed by file-name stems.*overwrite"):
        run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / "out", protocol=clean, fsync=False)
    s = run_corloc(ds, {"g": GridSegmenter(3, 3)}, tmp_path / "out", protocol=clean, overwrite=True, fsync=False)
    assert s.complete and s.score("g", "inner").n_images == 3


def test_merge_refuses_conflicting_records_of_one_image(data, tmp_path):
    ds, painter = data
    for i, seg in enumerate([GridSegmenter(3, 3), GridSegmenter(3, 3)]):
        run_corloc(ds, {"g": seg}, tmp_path / f"r{i}", protocol=PROTOCOL, fsync=False)
    path = tmp_path / "r1" / "records" / "g.shard-0-of-1.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["outer"]["iou"] = 0.123
    lines[2] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    (merged,) = merge_runs([tmp_path / "r0", tmp_path / "r0"], tmp_path / "m")  # identical copies: once
    assert merged.score("g", "outer").n_images == len(ds)
    with pytest.raises(ValueError, match=rf"conflicting records for image '{ds[2].image_id}'.*r1"):
        merge_runs([tmp_path / "r0", tmp_path / "r1"], tmp_path / "m")
