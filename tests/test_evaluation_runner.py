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
