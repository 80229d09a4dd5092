"""Tests of ``captum-nave explain`` run in-process through ``captum_nave.cli.main``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from captum_nave import LayerClusterExplainer
from captum_nave import models as models_mod
from captum_nave.cli import main
from captum_nave.cli.explain import explain_figure, parse_layers, parse_n_clusters, parse_resolution
from captum_nave.visualization import legend_colors


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("captum-nave: error: ")
    return err[0]


def test_explain_writes_the_figure_of_the_api_result(cached_model, tiny_image, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(tiny_image), "--out", str(out), "-k", "3", "--size", "64"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [str(out / "tiny_nave.png")]
    written = imread(printed[0])
    assert written.ndim == 3 and written.shape[0] > 100

    # the same figure rebuilt from the public API: identical pixels
    model, info = cached_model
    x01 = models_mod.resize_images(models_mod.load_image(tiny_image), 64)
    seg = LayerClusterExplainer(model, info["default_layers"]).attribute(
        models_mod.normalize(x01, info), n_clusters=3, random_state=0
    )
    assert sorted(seg.unique().tolist()) == [0, 1, 2]
    with torch.no_grad():
        prob = model(models_mod.normalize(x01, info)).softmax(-1)[0]
    p, c = prob.max(0)
    fig, axes = explain_figure(
        x01[0], seg[0],
        title="tiny - efficientnet_lite0, layers blocks.4, blocks.5, K=3, kmeans\n"
        "whole 64x64 image at 64x64; clustered on the 4x4 grid of blocks.4\n"
        "(--resolution layer, the paper's choice; --resolution input gives boundaries at every pixel)",
        subtitle=f"prediction: {models_mod.imagenet_class_name(int(c))} ({100 * float(p):.0f}%)",
    )
    fig.savefig(tmp_path / "expected.png", dpi=100)
    np.testing.assert_array_equal(imread(tmp_path / "expected.png"), written)
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend == ["segment 0", "segment 1", "segment 2"]


def test_explain_without_images_uses_the_sample_photos(cached_model, tmp_path, capsys):
    out = tmp_path / "samples"
    rc = main(["explain", "--out", str(out), "--size", "64", "-k", "4", "--resolution", "input"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    names = ("chelsea", "coffee", "astronaut", "rocket")
    assert printed == [str(out / f"{n}_nave.png") for n in names]
    # each figure is the public API's result on the whole photo (shorter side 64), pixel for pixel
    model, info = cached_model
    samples = models_mod.sample_images()
    originals = {"chelsea": (300, 451), "coffee": (400, 600), "astronaut": (512, 512), "rocket": (427, 640)}
    views = {"chelsea": (64, 96), "coffee": (64, 96), "astronaut": (64, 64), "rocket": (64, 96)}
    explainer = LayerClusterExplainer(model, info["default_layers"])
    for name, path in zip(names, printed):
        assert tuple(samples[name].shape[-2:]) == originals[name]
        x01 = models_mod.resize_images(samples[name], views[name], crop=False)
        x = models_mod.normalize(x01, info)
        seg = explainer.attribute(x, n_clusters=4, resolution="input", random_state=0)
        with torch.no_grad():
            prob, cls = model(x).softmax(-1).max(1)
        assert sorted(seg[0].unique().tolist()) == [0, 1, 2, 3]
        (h, w), (vh, vw) = originals[name], views[name]
        fig, _ = explain_figure(
            x01[0], seg[0],
            title=f"{name} - efficientnet_lite0, layers blocks.4, blocks.5, K=4, kmeans\n"
                  f"whole {h}x{w} image at {vh}x{vw}; clustered at input resolution {vh}x{vw} (--resolution input)",
            subtitle=f"prediction: {models_mod.imagenet_class_name(int(cls[0]))} ({100 * float(prob[0]):.0f}%)",
        )
        fig.savefig(tmp_path / "expected.png", dpi=100)
        np.testing.assert_array_equal(imread(tmp_path / "expected.png"), imread(path), err_msg=name)


def test_explain_figure_structure():
    image = torch.rand(3, 20, 30)
    seg = torch.zeros(1, 20, 30, dtype=torch.long)
    seg[:, :, 15:] = 3
    fig, axes = explain_figure(image, seg, title="T", subtitle="S")
    assert len(axes) == 2 and fig._suptitle.get_text() == "T"
    assert axes[0].get_title() == "S" and axes[1].get_title() == "NAVE segments"
    handles = axes[1].get_legend().legend_handles
    assert [h.get_label() for h in handles] == ["segment 0", "segment 3"]
    # swatches are the overlay colours (alpha 0.45 over neutral grey), not the solid palette
    np.testing.assert_allclose([h.get_facecolor()[:3] for h in handles], legend_colors(4, 0.45)[[0, 3]])


def test_argument_parsers():
    assert parse_resolution("layer") == "layer" and parse_resolution("Input") == "input"
    assert parse_resolution("28x20") == (28, 20)
    assert parse_n_clusters("auto") == "auto" and parse_n_clusters("7") == 7
    assert parse_layers(["blocks.4", "-1", "layer4"]) == ["blocks.4", -1, "layer4"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["missing.png"], "image file 'missing.png' does not exist"),
        (["--resolution", "12by12"], "--resolution: expected 'layer', 'input' or HxW"),
        (["-k", "1"], "-k/--n-clusters: expected an integer >= 2 or 'auto', got '1'"),
        (["--clusterer", "dbscan"], "--clusterer: expected one of kmeans, ward, pca, auto"),
        (["--model", "resnet5O"], "close names: "),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, expected, tmp_path, capsys):
    rc = main(["explain", *argv, "--out", str(tmp_path)])
    assert rc == 2
    assert expected in _one_line_error(capsys)


def test_unknown_layer_and_offline_model_errors(cached_model, tiny_image, tmp_path, capsys, monkeypatch):
    rc = main(["explain", str(tiny_image), "--layers", "blocks.40", "--out", str(tmp_path)])
    assert rc == 2
    assert _one_line_error(capsys).startswith("captum-nave: error: --layers: ")

    # timm ViTs take any size (dynamic image size); a torchvision ViT takes only 224x224
    rc = main(["explain", str(tiny_image), "--model", "tv:vit_b_16", "--no-pretrained",
               "--size", "64", "--out", str(tmp_path)])
    assert rc == 2
    assert "--size: model 'tv:vit_b_16' only accepts 224x224 inputs, got 64x64" in _one_line_error(capsys)

    import timm

    from captum_nave.models import network

    def offline(name, pretrained=False, **kw):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(network, "unreachable", lambda *a, **k: None)  # the host answers, the download fails
    monkeypatch.setattr(timm, "create_model", offline)
    rc = main(["explain", str(tiny_image), "--model", "resnet18", "--out", str(tmp_path / "o")])
    assert rc == 2
    line = _one_line_error(capsys)
    assert "'resnet18'" in line and "download" in line and "efficientnet_lite0" in line
    assert "--no-pretrained" in line and "pretrained=False" not in line
    assert not (tmp_path / "o").exists()
