"""``captum-nave corloc`` run in-process through ``captum_nave.cli.main``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import captum_nave.cli as cli
from captum_nave.cli.corloc import allow_any_input_size, parse_model_spec
from captum_nave.evaluation import (
    CorLocProtocol,
    NaveSegmenter,
    read_folder,
    read_records,
    run_corloc,
)
from captum_nave.models import load_model


def make_folder(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for i in range(n):
        h, w = int(rng.integers(40, 60)), int(rng.integers(40, 70))
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        img[y0 : y0 + h // 2, x0 : x0 + w // 2] = (220, 180, 30)
        Image.fromarray(img).save(root / f"p{i}.png")
        boxes[f"p{i}.png"] = [[x0, y0, x0 + w // 2, y0 + h // 2]]
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


SMALL = ["--min-area", "16", "--border", "2"]


def test_cli_matches_the_library_and_resumes(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--seed", "3", "corloc", "--format", "folder", "--root", str(root), "--model",
            "efficientnet_lite0", "efficientnet_lite0@random", "--baseline", "slic", "grid",
            "-k", "4", "--limit", "3", "--out", str(out), *SMALL]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "summary.md"), str(out / "summary.json"), str(out / "per_image.csv")]
    md = (out / "summary.md").read_text()
    for row in ("| efficientnet_lite0 |", "| efficientnet_lite0@random |", "| SLIC |", "| grid 3x3 |"):
        assert row in md
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 4 * 3

    # the CLI's NAVE records equal the library's with the same model, K, seed and protocol
    model, info = load_model("efficientnet_lite0")
    seg = NaveSegmenter(model, info["default_layers"], n_clusters=4, mean=info["mean"], std=info["std"],
                        random_state=3)
    run_corloc(read_folder(root, limit=3), {"lite0": seg}, tmp_path / "lib",
               protocol=CorLocProtocol(min_area=16, border=2), fsync=False)
    lib = read_records(tmp_path / "lib" / "records" / "lite0.shard-0-of-1.jsonl")
    got = read_records(out / "records" / "efficientnet_lite0.shard-0-of-1.jsonl")
    assert _strip(got) == _strip(lib)

    # resume: the same command again computes nothing new; a larger --limit adds one image
    before = (out / "records" / "SLIC.shard-0-of-1.jsonl").read_bytes()
    assert cli.main(argv) == 0
    assert (out / "records" / "SLIC.shard-0-of-1.jsonl").read_bytes() == before
    baselines = argv[: argv.index("--model") + 1] + argv[argv.index("--baseline"):]
    baselines[baselines.index("--limit") + 1] = "4"
    assert cli.main(baselines) == 0
    assert len(read_records(out / "records" / "SLIC.shard-0-of-1.jsonl")) == 4
    assert len(read_records(out / "records" / "efficientnet_lite0.shard-0-of-1.jsonl")) == 3
    # different settings into the same folder are refused with a one-line error
    capsys.readouterr()
    assert cli.main([*baselines, "--iou-threshold", "0.7"]) == 2
    err = capsys.readouterr().err
    assert "different protocol" in err and len(err.strip().splitlines()) == 1


def test_cli_vit_at_original_resolution_pads_to_the_patch_size(tmp_path):
    root = make_folder(tmp_path / "data", n=2)
    out = tmp_path / "out"
    assert cli.main(["corloc", "--format", "folder", "--root", str(root), "--model",
                     "vit_small_patch16_224@random", "--strategy", "inner", "--out", str(out),
                     "--overlays", *SMALL]) == 0
    recs = read_records(out / "records" / "vit_small_patch16_224_random.shard-0-of-1.jsonl")
    data = read_folder(root)
    for r, rec in zip(recs, data):
        assert r["labels_shape"] == [-(-rec.height // 16) * 16, -(-rec.width // 16) * 16]
        assert "inner" in r and "outer" not in r
    assert len(list((out / "overlays").rglob("*.png"))) == 2


def test_allow_any_input_size_keeps_the_function():
    torch.manual_seed(0)
    kw = dict(pretrained=False, img_size=64, depth=2, embed_dim=64, num_heads=2, reg_tokens=4, num_classes=10)
    fixed = timm.create_model("vit_small_patch16_224", **kw).eval()
    dynamic = timm.create_model("vit_small_patch16_224", dynamic_img_size=True, **kw).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = fixed(x)
        assert allow_any_input_size(fixed) and not allow_any_input_size(fixed)
        torch.testing.assert_close(fixed(x), before)
        y = torch.randn(1, 3, 48, 80)
        torch.testing.assert_close(fixed(y), dynamic(y))
    assert not allow_any_input_size(torch.nn.Conv2d(3, 3, 1))


def test_cli_shards_and_merge_equal_one_run(tmp_path, capsys):
    root = make_folder(tmp_path / "data", n=5)
    base = ["corloc", "--format", "folder", "--root", str(root), "--model", "--baseline", "slic", "grid", *SMALL]
    assert cli.main([*base, "--out", str(tmp_path / "one")]) == 0
    for i in range(2):
        assert cli.main([*base, "--num-shards", "2", "--shard-index", str(i), "--out", str(tmp_path / f"s{i}")]) == 0
    capsys.readouterr()
    assert cli.main(["corloc", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.split()[0] == str(tmp_path / "m" / "summary.md")
    assert (tmp_path / "m" / "summary.md").read_text() == (tmp_path / "one" / "summary.md").read_text()


def test_cli_auto_k_matches_the_library(tmp_path, capsys):
    root = make_folder(tmp_path / "data", n=2)
    out = tmp_path / "auto"
    argv = ["--seed", "1", "corloc", "--format", "folder", "--root", str(root), "--model",
            "efficientnet_lite0@random", "-k", "auto", "--k-range", "2", "4", "--out", str(out), *SMALL]
    assert cli.main(argv) == 0
    torch.manual_seed(1)
    model, info = load_model("efficientnet_lite0", pretrained=False)
    seg = NaveSegmenter(model, info["default_layers"], n_clusters="auto", mean=info["mean"], std=info["std"],
                        random_state=1, explain_kwargs={"clusterer": "kmeans", "k_range": (2, 3, 4)})
    run_corloc(read_folder(root), {"lite0": seg}, tmp_path / "lib",
               protocol=CorLocProtocol(min_area=16, border=2), fsync=False)
    lib = read_records(tmp_path / "lib" / "records" / "lite0.shard-0-of-1.jsonl")
    got = read_records(out / "records" / "efficientnet_lite0_random.shard-0-of-1.jsonl")
    assert _strip(got) == _strip(lib) and len(got) == 2


def test_parse_model_spec():
    assert parse_model_spec("tv:resnet50", False) == ("tv:resnet50", True)
    assert parse_model_spec("tv:resnet50@random", False) == ("tv:resnet50", False)
    assert parse_model_spec("resnet18", True) == ("resnet18", False)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--format and --root are required"),
        (["--format", "coco", "--root", "{root}"], "--annotations"),
        (["--format", "folder", "--root", "{root}", "--model", "no_such_model_xyz"], "--model"),
        (["--format", "folder", "--root", "{root}", "--model"], "nothing to evaluate"),
        (["--format", "folder", "--root", "{root}", "--num-shards", "2", "--shard-index", "2"], "--shard-index"),
        (["--format", "folder", "--root", "{root}", "--min-area", "-1"], "--min-area"),
        (["--format", "folder", "--root", "{root}", "-k", "1"], "-k/--n-clusters: expected an integer >= 2 or auto, got '1'"),
        (["--format", "folder", "--root", "{root}", "-k", "many"], "expected an integer >= 2 or auto, got 'many'"),
        (["--format", "folder", "--root", "{root}", "-k", "auto", "--k-range", "5", "3"], "--k-range: expected 2 <= MIN <= MAX, got 5 3"),
        (["--format", "voc", "--root", "{root}/missing"], "root"),
        (["--format", "folder", "--root", "{root}", "--model", "efficientnet_lite0", "--layers", "nope"], "--layers"),
        (["--merge", "{root}/nothing"], "no CorLoc records"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, extra, message):
    root = make_folder(tmp_path / "data", n=1)
    argv = ["corloc", *[a.replace("{root}", str(root)) for a in extra], "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- protocol defaults (issue 16, point 19)
def _grid_folder(root: Path) -> Path:
    """Images on which the paper's constants decide the outcome of a 3x3 grid:
    120x150 (cells of 40x50 px, cut by the 14-px border) and 84x84 (cells of exactly 784 px)."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True)
    boxes = {}
    for i, (h, w) in enumerate([(120, 150), (84, 84), (126, 141)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"g{i}.png")
        # g0: the top-left cell, whose boxes the border cuts; g2: the centre cell
        boxes[f"g{i}.png"] = [[0, 0, w // 3 + 2, h // 3]] if i == 0 else [[w // 3, h // 3 - 2, 2 * w // 3 + 3, 2 * h // 3]]
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


def test_cli_without_protocol_flags_records_and_uses_the_papers_values(tmp_path, capsys):
    from captum_nave.evaluation import GridSegmenter

    root = _grid_folder(tmp_path / "data")
    out = tmp_path / "out"
    assert cli.main(["corloc", "--format", "folder", "--root", str(root), "--model", "--baseline", "grid",
                     "--out", str(out)]) == 0
    meta = json.loads((out / "records" / "meta.shard-0-of-1.json").read_text())
    assert meta["protocol"] == {"min_area": 784, "border": 14, "iou_threshold": 0.5, "connectivity": 4,
                                "conventions": "authors"}
    md = (out / "summary.md").read_text()
    assert "protocol 'authors'" in md and "(min_area=784, border=14, connectivity=4)" in md
    assert "| grid 3x3 |" in md and md.count("| 3 | 1 |") == 1  # the 84x84 image keeps no component
    got = _strip(read_records(out / "records" / "grid_3x3.shard-0-of-1.jsonl"))
    data = read_folder(root)

    def records(protocol):
        d = tmp_path / f"lib{len(list(tmp_path.iterdir()))}"
        run_corloc(data, {"grid 3x3": GridSegmenter(3, 3)}, d, protocol=protocol, fsync=False)
        return _strip(read_records(d / "records" / "grid_3x3.shard-0-of-1.jsonl"))

    assert got == records(CorLocProtocol())
    # and the values matter on these images: other constants give other records
    assert got != records(CorLocProtocol(border=13))
    assert got != records(CorLocProtocol(min_area=783))
    assert got != records(CorLocProtocol(conventions="clean"))


def test_cli_protocol_clean_is_recorded_and_resuming_needs_the_same_protocol(tmp_path, capsys):
    root = _grid_folder(tmp_path / "data")
    base = ["corloc", "--format", "folder", "--root", str(root), "--model", "--baseline", "grid",
            "--out", str(tmp_path / "out")]
    assert cli.main([*base, "--protocol", "clean"]) == 0
    meta = json.loads((tmp_path / "out" / "records" / "meta.shard-0-of-1.json").read_text())
    assert meta["protocol"]["conventions"] == "clean"
    assert "protocol 'clean'" in (tmp_path / "out" / "summary.md").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary[0]["protocol"]["conventions"] == "clean"
    capsys.readouterr()
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "different protocol" in err and "--protocol clean" in err and len(err.strip().splitlines()) == 1


def test_cli_boxes_outside_the_image_and_paths_outside_the_root(tmp_path, capsys):
    root = _grid_folder(tmp_path / "data")
    boxes = json.loads((root / "boxes.json").read_text())
    boxes["g0.png"] = [[-3, 10, 60, 130]]  # leaves the 150x120 image at the left and bottom
    (root / "boxes.json").write_text(json.dumps(boxes))
    base = ["corloc", "--format", "folder", "--root", str(root), "--model", "--baseline", "grid"]
    assert cli.main([*base, "--out", str(tmp_path / "o1")]) == 2  # the folder format refuses by default
    assert "--invalid-boxes" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="leave their image"):
        assert cli.main([*base, "--invalid-boxes", "keep", "--out", str(tmp_path / "o2")]) == 0
    assert "1 ground-truth box(es) leave their image" in (tmp_path / "o2" / "summary.md").read_text()
    Image.fromarray(np.zeros((90, 90, 3), dtype=np.uint8)).save(tmp_path / "outside.png")
    boxes["../outside.png"] = [[10, 10, 50, 50]]
    (root / "boxes.json").write_text(json.dumps(boxes))
    capsys.readouterr()
    assert cli.main([*base, "--invalid-boxes", "clip", "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "'../outside.png' points outside" in err and "--allow-outside-root" in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main([*base, "--invalid-boxes", "clip", "--allow-outside-root", "--out", str(tmp_path / "o4")]) == 0
    assert len(read_records(tmp_path / "o4" / "records" / "grid_3x3.shard-0-of-1.jsonl")) == 4
