"""Tests of ``captum-nave report`` run in-process through ``captum_nave.cli.main``."""

from __future__ import annotations

import html
import json
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import captum_nave.cli as cli
from captum_nave import models as models_mod
from captum_nave.evaluation import CorLocProtocol
from captum_nave.report import collect_report, render_report

from test_report import parse


def _write_image(path, shift: int = 0, size=(72, 64)):
    from PIL import Image

    h, w = size
    yy, xx = np.mgrid[:h, :w]
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 2] = 190
    disk = (yy - 28 - shift) ** 2 + (xx - 34) ** 2 < 14**2
    arr[disk] = (230, 120, 20)
    arr[h - 14 :, :] = (40, 160, 40)
    Image.fromarray(arr).save(path)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("captum-nave: error: ")
    return err[0]


def test_report_on_the_offline_model(cached_model, tmp_path, capsys):
    img = _write_image(tmp_path / "disc <b>.png")
    out = tmp_path / "audit.html"
    rc = cli.main(["--seed", "4", "report", str(img), "--size", "64", "-k", "3", "--seeds", "0", "1",
                   "--ig-steps", "4", "--faithfulness-steps", "4", "--randomisation-stages", "2",
                   "--out", str(out), "--title", "Audit <i>1</i>"])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines() == [str(out)]
    text = out.read_text(encoding="utf-8")
    page = parse(text)
    for sid in ("overview", "side-by-side", "segment-relevance", "faithfulness", "stability", "reproducibility"):
        assert sid in page.ids
    assert page.title == "Audit <i>1</i>" and "<i>1</i>" not in text
    rand = page.table("randomisation-table")
    assert {r[3] for r in rand[1:]} == {"classifier, conv_stem"}  # --randomisation-stages 2
    # the explained class is the offline model's ImageNet prediction on the same preprocessing
    model, info = cached_model
    x = models_mod.normalize(models_mod.resize_images(models_mod.load_image(img), 64), info)
    with torch.no_grad():
        p, c = model(x).softmax(-1)[0].max(0)
    row = page.table("overview-table")[1]
    assert row[0] == "disc <b>" and row[1] == "72x64"
    assert row[2] == f"{models_mod.imagenet_class_name(int(c))} ({int(c)}) ({100 * float(p):.1f}%)"
    config = {r[0]: r[1] for r in page.table("configuration")[1:]}
    assert config["seeds"] == "[0, 1]" and config["methods"] == '["nave", "gradcam", "ig", "lrp"]'
    assert '"n_steps": 4' in config["method options"]
    assert "relative to |the target logit|" in text and "relative to |F(x) - F(baseline)|" in text
    assert '"n_steps": 4' in config["faithfulness"] and '"randomisation_stages": 2' in config["faithfulness"]
    models = page.table("models-table")
    assert models[1][0] == "efficientnet_lite0" and models[1][6] == info["weights_sha256"]


def test_default_seeds_follow_the_global_seed(cached_model, tmp_path, capsys):
    img = _write_image(tmp_path / "a.png")
    out = tmp_path / "r.html"
    assert cli.main(["--seed", "5", "report", str(img), "--size", "64", "-k", "2", "--methods", "nave", "--no-faithfulness", "--out", str(out)]) == 0
    config = {r[0]: r[1] for r in parse(out.read_text(encoding="utf-8")).table("configuration")[1:]}
    assert config["seeds"] == "[5, 6, 7]" and config["methods"] == '["nave"]'


def test_register_pair_and_boxes(tmp_path, capsys):
    """Two timm test ViTs (random weights, offline) with a boxes file: the CLI report equals the API's."""
    imgs = [_write_image(tmp_path / f"im{i}.png", shift=6 * i) for i in range(2)]
    boxes = {"im0.png": [[20, 14, 48, 42]], "im1": [[20, 20, 48, 48]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "vit.html"
    args = ["report", *map(str, imgs), "--model", "test_vit", "--model", "test_vit4", "--no-pretrained",
            "--register-pair", "test_vit", "test_vit4", "--boxes", str(tmp_path / "boxes.json"),
            "--min-area", "16", "--border", "2", "--protocol", "clean", "--methods", "nave,gradcam", "--size", "64",
            "-k", "3", "--seeds", "0", "1", "--no-faithfulness", "--out", str(out)]
    assert cli.main(args) == 0
    page = parse(out.read_text(encoding="utf-8"))
    assert {"registers", "corloc", "registers-table", "corloc-table"} <= set(page.ids)
    corloc = page.table("corloc-table")
    assert [r[0] for r in corloc[1:]] == ["test_vit", "test_vit4", "SLIC"]
    # the same report through the API (boxes mapped from 72x64 originals to the 64x64 crop)
    torch.manual_seed(0)  # the CLI seeds random weights with --seed (default 0)
    models = {n: models_mod.load_model(n, pretrained=False) for n in ("test_vit", "test_vit4")}
    data = collect_report(
        [str(p) for p in imgs], models, methods=("nave", "gradcam"), n_clusters=3, seeds=(0, 1), size=64,
        register_pair=("test_vit", "test_vit4"), boxes=[np.array(boxes["im0.png"]), np.array(boxes["im1"])],
        corloc_protocol=CorLocProtocol(min_area=16, border=2, conventions="clean"), faithfulness=False,
    )
    assert "protocol 'clean': a hit is IoU >= 0.5" in html.unescape(out.read_text(encoding="utf-8"))
    api = parse(render_report(data))
    assert api.table("corloc-table") == corloc
    assert api.table("registers-table") == page.table("registers-table")
    assert api.table("stability-table") == page.table("stability-table")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "missing.png"], "image file 'missing.png' does not exist"),
        (["report", "--methods", "nave,shap"], "--methods: expected a comma-separated list"),
        (["report", "--target", "cat"], "--target: expected a class index"),
        (["report", "-k", "1"], "-k/--n-clusters: expected an integer >= 2"),
        (["report", "--seeds", "1", "1"], "--seeds: expected distinct seeds"),
        (["report", "--model", "a", "--register-pair", "a", "b"], "--register-pair: 'b' is not one of the --model names"),
        (["report", "--boxes", "b.json"], "--boxes: give the IMAGE files"),
        (["report", "--model", "no_such_model_xyz"], "--model: "),
        (["--device", "bogus", "report"], "--device: expected a torch device"),
        (["report", "--out", "/dev/null/r.html"], "--out: cannot create folder '/dev/null': '/dev/null' is a file"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in _one_line_error(capsys)


def test_bad_boxes_files(tmp_path, capsys):
    img = _write_image(tmp_path / "a.png")
    bad = tmp_path / "bad.json"
    for content, message in (
        ("{not json", "cannot read"),
        ("[1, 2]", "expected a JSON object"),
        ('{"other.png": [[0, 0, 5, 5]]}', "no key of"),
        ('{"a.png": [[5, 5, 1, 1]]}', "x_max > x_min"),
        ('{"a.png": [["x", 1, 2]]}', "must be a list"),
    ):
        bad.write_text(content)
        assert cli.main(["report", str(img), "--boxes", str(bad)]) == 2
        assert message in _one_line_error(capsys)


def test_debug_shows_the_traceback(capsys):
    assert cli.main(["--debug", "report", "missing.png"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CLIError" in err
    assert err.strip().splitlines()[-1] == "captum-nave: error: image file 'missing.png' does not exist"


def test_progress_bar_on_a_terminal(cached_model, tmp_path, capsys, monkeypatch):
    import sys

    img = _write_image(tmp_path / "a.png")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(["report", str(img), "--size", "64", "-k", "2", "--methods", "nave,gradcam", "--seeds", "0",
                     "--faithfulness-steps", "2", "--randomisation-stages", "0", "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"report: 100%.*4/4", err), err  # nave, gradcam, importance, faithfulness
