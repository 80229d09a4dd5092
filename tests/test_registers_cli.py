"""``captum-nave compare-registers`` run in-process through ``captum_nave.cli.main``."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import captum_nave.cli as cli
import captum_nave.models as models

from test_registers_models import tiny_timm


@pytest.fixture
def main():
    return cli.main


@pytest.fixture
def tiny_loader(monkeypatch):
    """``load_model`` stand-in: tiny random timm ViTs (and a CNN) by name, 48-pixel inputs."""
    real = models.load_model

    def load(name, pretrained=True, device=None):
        info = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (48, 48)}
        if name == "tiny-plain":
            return tiny_timm(img_size=48), dict(info, patch_size=8)
        if name == "tiny-reg":
            return tiny_timm(img_size=48, reg_tokens=4, seed=1), dict(info, patch_size=8)
        if name == "tiny-cnn":
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval(), dict(info, patch_size=None)
        return real(name, pretrained=pretrained, device=device)

    monkeypatch.setattr(models, "load_model", load)


@pytest.fixture
def images(tmp_path):
    from skimage import data

    paths = []
    for name in ("chelsea", "coffee", "astronaut"):
        arr = getattr(data, name)()
        img = Image.fromarray(arr).resize((72, 60))
        p = tmp_path / f"{name}.png"
        img.save(p)
        paths.append(str(p))
    return paths


def test_cli_writes_summary_tables_and_figure(main, tiny_loader, images, tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"chelsea.png": [[20, 5, 60, 55]], "coffee.png": [[5, 5, 50, 40]],
                                 "astronaut.png": [[10, 0, 40, 30]]}))
    out = tmp_path / "out"
    rc = main(["compare-registers", "--model-a", "tiny-plain", "--model-b", "tiny-reg", "--n-clusters", "3",
               "--boxes", str(boxes), "--corloc-min-area", "10", "--corloc-border", "0",
               "--corloc-protocol", "clean", "--out", str(out), *images])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    files = ("summary.md", "per_image.csv", "aggregated.csv", "figure.png", "lens_layers.csv", "lens_segments.csv",
             "lens.png")
    assert printed == [str(out / f) for f in files]
    md = (out / "summary.md").read_text()
    assert "tiny-plain vs tiny-reg" in md and "CorLoc (inner)" in md and "| mass_registers |" in md
    assert "| lens_patches |" in md and "| lens_registers |" in md
    assert "CorLoc protocol 'clean': a hit is IoU >= 0.5" in md and "min_area=10, border=0" in md
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert {r["image"] for r in rows} == {"0", "1", "2"}
    # the files are the public API's result on the same models, images and boxes
    res = _api_result(images, json.loads(boxes.read_text()), n_clusters=3, min_area=10, border=0, conventions="clean")
    assert md == res.to_markdown()
    for name, which in (("per_image.csv", "per_image"), ("aggregated.csv", "aggregated")):
        expected = res.to_csv(tmp_path / f"api_{name}", which=which)
        assert (out / name).read_text() == open(expected).read(), name
    # the per-image values are the measures of those models (one spot check each way)
    by = {(r["model"], r["measure"], r["image"]): r["value"] for r in rows}
    assert float(by[("tiny-reg", "mass_registers", "2")]) == pytest.approx(float(res.per_image["mass_registers"][1][2]))
    assert float(by[("tiny-plain", "mass_registers", "0")]) == 0.0  # no registers in model A
    from matplotlib.image import imread

    fig = imread(out / "figure.png")
    assert fig.ndim == 3 and fig.shape[1] > fig.shape[0]  # 3 rows x 7 columns of panels
    assert (out / "lens.png").read_bytes()[:4] == b"\x89PNG"
    # the lens tables equal class_lens on the same inputs
    from captum_nave.lens import class_lens

    info = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    x = torch.cat([models.normalize(models.resize_images(models.load_image(p), (48, 48)), info) for p in images])
    layers = list(csv.DictReader(open(out / "lens_layers.csv")))
    for name, model in (("tiny-plain", tiny_timm(img_size=48)), ("tiny-reg", tiny_timm(img_size=48, reg_tokens=4, seed=1))):
        lens = class_lens(model, x)
        mine = [r for r in layers if r["model"] == name]
        assert [int(r["layer"]) for r in mine] == list(range(lens.n_layers))
        for r in mine:
            assert float(r["patches"]) == pytest.approx(float(lens.identifiability("patches")[int(r["layer"])]))
            assert float(r["cls"]) == pytest.approx(float(lens.identifiability("cls")[int(r["layer"])]))
            assert (r["registers"] == "") == (name == "tiny-plain")
    segs = list(csv.DictReader(open(out / "lens_segments.csv")))
    assert {r["image_name"] for r in segs} == {"chelsea", "coffee", "astronaut"}
    assert all(-1 <= int(r["first_layer"]) < 3 for r in segs)  # 3 blocks


def _api_result(images, box_table, *, n_clusters, min_area, border, seed=0, conventions="authors"):
    """``compare_registers`` called as the CLI documents it, with the tiny models."""
    from captum_nave.cli.compare_registers import _transform_box
    from captum_nave.evaluation.corloc import CorLocProtocol
    from captum_nave.registers.compare import compare_registers

    model_a, info = models.load_model("tiny-plain")
    model_b, _ = models.load_model("tiny-reg")
    raw = [models.load_image(p) for p in images]
    x = torch.cat([models.normalize(models.resize_images(r, (48, 48)), info) for r in raw])
    boxes = [[_transform_box(b, tuple(r.shape[-2:]), (48, 48)) for b in box_table[p.split("/")[-1]]]
             for p, r in zip(images, raw)]
    return compare_registers(
        model_a, model_b, x, images_b=x, names=("tiny-plain", "tiny-reg"), n_clusters=n_clusters,
        seeds=(seed, seed + 1), boxes=boxes, corloc_protocol=CorLocProtocol(min_area=min_area, border=border, conventions=conventions),
        random_state=seed, batch_size=8, display_images=torch.cat([models.resize_images(r, (48, 48)) for r in raw]),
    )


def test_box_mapping_follows_resize_and_centre_crop():
    from captum_nave.cli.compare_registers import _transform_box

    # 60x120 image -> scale 0.8 to 48x96, centre crop 48x48 from x = 24
    assert _transform_box([30, 0, 90, 60], (60, 120), (48, 48)) == pytest.approx([0.0, 0.0, 47.0, 47.0])
    assert _transform_box([40, 10, 60, 30], (60, 120), (48, 48)) == pytest.approx([8.0, 8.0, 24.0, 24.0])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-a", "tiny-plain", "--model-b", "tiny-reg", "missing.png"], "does not exist"),
        (["--model-a", "tiny-cnn", "--model-b", "tiny-reg", "IMG"], "--model-a: 'tiny-cnn' is not a ViT"),
        (["--model-a", "tiny-plain", "--model-b", "tiny-reg", "--size", "50", "IMG"], "--size"),
        (["--model-a", "tiny-plain", "--model-b", "tiny-reg", "--boxes", "nope.json", "IMG"], "--boxes"),
        (["--model-a", "tiny-plain", "--model-b", "no_such_model_xyz", "IMG"], "no_such_model_xyz"),
        (["--model-a", "tiny-plain", "--model-b", "tiny-reg", "--n-clusters", "1", "IMG"], "--n-clusters"),
    ],
)
def test_cli_user_errors_exit_2(main, tiny_loader, images, argv, message, capsys):
    argv = [images[0] if a == "IMG" else a for a in argv]
    rc = main(["compare-registers", *argv, "--out", "unused"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_real_timm_names_random_weights(main, images, tmp_path):
    out = tmp_path / "real"
    rc = main(["compare-registers", "--model-a", "vit_tiny_patch16_224", "--model-b", "vit_wee_patch16_reg1_gap_256",
               "--no-pretrained", "--n-clusters", "3", "--out", str(out), *images[:2]])
    assert rc == 0
    md = (out / "summary.md").read_text()
    assert "blocks 11 (vit_tiny_patch16_224) and 13 (vit_wee_patch16_reg1_gap_256)" in md
    # the same comparison through the API: the models drawn from the same seed, each
    # image at each model's own input size
    from captum_nave.registers.compare import compare_registers

    names = ("vit_tiny_patch16_224", "vit_wee_patch16_reg1_gap_256")
    torch.manual_seed(0)
    loaded = [models.load_model(n, pretrained=False) for n in names]
    raw = [models.load_image(p) for p in images[:2]]
    xs = [torch.cat([models.normalize(models.resize_images(r, tuple(info["input_size"])), info) for r in raw])
          for _, info in loaded]
    res = compare_registers(
        loaded[0][0], loaded[1][0], xs[0], images_b=xs[1], names=names, n_clusters=3, seeds=(0, 1),
        random_state=0, batch_size=8,
        display_images=torch.cat([models.resize_images(r, tuple(loaded[0][1]["input_size"])) for r in raw]),
    )
    assert md == res.to_markdown()
    assert (out / "per_image.csv").read_text() == open(res.to_csv(tmp_path / "api.csv")).read()
