"""Tests of ``captum-nave compare`` run in-process through ``captum_nave.cli.main``.

The written CSV must equal what the public API gives for the same images and options
(NAVE segments, then ``attribute`` and ``segment_relevance`` per method), and the PNG
must have one row per image and one column per panel. User mistakes end with one
error line and exit code 2.
"""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from captum_nave import LayerClusterExplainer
from captum_nave import cli
from captum_nave import models as models_mod
from captum_nave.attribution import attribute, segment_relevance


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_compare_sample_photos_matches_the_api(cached_model, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--size", "64", "-k", "3", "--ig-steps", "8", "--no-faithfulness", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "compare.png"), str(out / "segment_relevance.csv")]

    # the same computation through the public API
    model, info = cached_model
    samples = models_mod.sample_images()
    x = models_mod.normalize(torch.cat([models_mod.resize_images(v, (64, 64)) for v in samples.values()]), info)
    seg = LayerClusterExplainer(model, info["default_layers"]).attribute(x, n_clusters=3, random_state=0)
    options = {"gradcam": {}, "ig": {"n_steps": 8, "baselines": "zeros", "internal_batch_size": 16}, "lrp": {}}
    expected = []
    for method, opts in options.items():
        maps = attribute(method, model, x, "auto", **opts).maps
        expected += segment_relevance(seg, maps, method=method, image_names=list(samples)).rows
    rows = _read_csv(out / "segment_relevance.csv")
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        assert (got["method"], got["image_name"], int(got["segment"])) == (want["method"], want["image_name"], want["segment"])
        for key in ("pixels", "area_share", "positive", "negative", "absolute_share", "density"):
            assert np.isclose(float(got[key]), want[key], rtol=1e-6, atol=1e-9), (key, got[key], want[key])

    png = imread(out / "compare.png")
    # plot_side_by_side: 2.4 inches per panel at 100 dpi; 4 images x (image + 4 panels)
    assert png.shape[0] == 4 * 240 and png.shape[1] == 5 * 240


def test_compare_one_file_some_methods_and_a_fixed_target(cached_model, tiny_image, tmp_path, capsys) -> None:
    out = tmp_path / "one"
    code = cli.main([
        "--seed", "1", "compare", str(tiny_image), "--methods", "gradcam,lrp", "--target", "285",
        "--size", "64", "-k", "2", "--no-faithfulness", "--out", str(out),
    ])
    assert code == 0
    rows = _read_csv(out / "segment_relevance.csv")
    assert {r["method"] for r in rows} == {"gradcam", "lrp"} and {r["image_name"] for r in rows} == {"tiny"}
    for method in ("gradcam", "lrp"):
        shares = [float(r["area_share"]) for r in rows if r["method"] == method]
        assert len(shares) == 2 and np.isclose(sum(shares), 1.0)
    png = imread(out / "compare.png")
    assert png.shape[:2] == (240, 3 * 240)  # image | Grad-CAM | LRP (no NAVE panel asked)


def test_lrp_composite_option(cached_model, tiny_image, tmp_path) -> None:
    """--lrp-composite reaches LRP; epsilon-gamma-box gets the model's normalisation as input bounds."""
    from captum_nave.attribution.lrp import normalisation_bounds

    model, info = cached_model
    x = models_mod.normalize(models_mod.resize_images(models_mod.load_image(str(tiny_image)), (64, 64)), info)
    seg = LayerClusterExplainer(model, info["default_layers"]).attribute(x, n_clusters=2, random_state=0)
    bounds = normalisation_bounds(info["mean"], info["std"])
    shares = {}
    for composite in ("epsilon", "epsilon-gamma-box"):
        out = tmp_path / composite
        argv = ["compare", str(tiny_image), "--methods", "lrp", "--target", "285", "--size", "64", "-k", "2",
                "--lrp-composite", composite, "--out", str(out)]
        assert cli.main(argv) == 0
        rows = _read_csv(out / "segment_relevance.csv")
        maps = attribute("lrp", model, x, 285, composite=composite, input_bounds=bounds).maps
        want = segment_relevance(seg, maps, method="lrp", image_names=["tiny"]).rows
        got = [float(r["absolute_share"]) for r in rows]
        assert np.allclose(got, [w["absolute_share"] for w in want], rtol=1e-6, atol=1e-9)
        shares[composite] = got
    assert not np.allclose(shares["epsilon"], shares["epsilon-gamma-box"], atol=1e-3)


def test_compare_writes_the_faithfulness_tables_of_the_api(cached_model, tiny_image, tmp_path, capsys) -> None:
    from captum_nave.attribution import segment_importance
    from captum_nave.evaluation.faithfulness import faithfulness_audit, randomisation_check

    out = tmp_path / "faith"
    code = cli.main(["compare", str(tiny_image), "--methods", "nave,gradcam", "--size", "64", "-k", "3",
                     "--faithfulness-steps", "5", "--randomisation-stages", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed[-2:] == [str(out / "faithfulness.csv"), str(out / "randomisation.csv")]
    model, info = cached_model
    x01 = models_mod.resize_images(models_mod.load_image(tiny_image), (64, 64))
    x = models_mod.normalize(x01, info)
    seg = LayerClusterExplainer(model, info["default_layers"]).attribute(x, n_clusters=3, random_state=0)
    res = attribute("gradcam", model, x, "auto")
    audit = faithfulness_audit(model, x, {"gradcam": res.maps}, res.target, segments=seg, images=x01, n_steps=5,
                               segment_scores={"segment_importance": segment_importance(model, x, seg, res.target)})
    rows = _read_csv(out / "faithfulness.csv")
    want = audit.rows(per_image=True)
    assert len(rows) == len(want) == 2 * 4 + 1
    for got, w in zip(rows, want):
        assert (got["method"], got["ranking"], got["image_name"], got["model"]) == (
            w["method"], w["ranking"], "tiny", "efficientnet_lite0")
        for key in ("deletion_auc", "insertion_auc"):
            # float32 model: the CLI and this call batch the perturbed images differently (~1e-6 relative)
            assert float(got[key]) == pytest.approx(w[key], rel=1e-4, abs=1e-6)
    sanity = randomisation_check(model, x, res.target, methods=["gradcam"], stages=2)
    rand = [r for r in _read_csv(out / "randomisation.csv") if r["method"] == "gradcam"]
    assert [r["randomised_down_to"] for r in rand] == sanity.stages == ["classifier", "conv_stem"]
    for r, s_mean, ssim in zip(rand, sanity.spearman["gradcam"].mean(1), sanity.ssim["gradcam"].mean(1)):
        assert float(r["spearman"]) == pytest.approx(float(s_mean), abs=1e-6)
        assert float(r["ssim"]) == pytest.approx(float(ssim), abs=1e-6)
    nave = [r for r in _read_csv(out / "randomisation.csv") if r["method"] == "nave"]
    assert float(nave[0]["ari"]) == 1.0  # the classifier is above NAVE's layers


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lrp-composite", "zplus"], "--lrp-composite: expected auto or one of epsilon, .*got 'zplus'"),
        (["--lrp-epsilon", "nan"], "--lrp-epsilon: expected a number >= 0, got nan"),
        (["--methods", "nave,smoothgrad"], "--methods: expected names from nave, gradcam, ig, lrp"),
        (["--methods", ","], "--methods: expected at least one of"),
        (["--target", "cat"], "--target: expected a class index"),
        (["--target", "1000"], r"--target: expected a class index in \[0, 999\]"),
        (["-k", "1"], "-k/--n-clusters: expected an integer >= 2, got 1"),
        (["--ig-baseline", "black"], "--ig-baseline: expected one of zeros, blur, uniform"),
        (["missing.png"], "image file 'missing.png' does not exist"),
        (["--model", "resnet_999"], "--model: name: unknown model 'resnet_999'"),
        (["--layers", "blocks.99"], "--layers: "),
        (["--faithfulness-steps", "0"], "--faithfulness-steps: expected a positive integer, got 0"),
        (["--randomisation-stages", "-1"], "--randomisation-stages: expected an integer >= 0, got -1"),
    ],
)
def test_user_errors_are_one_line(cached_model, tmp_path, capsys, argv, message) -> None:
    import re

    code = cli.main(["compare", "--size", "32", "--out", str(tmp_path / "x"), *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-nave: error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "x" / "compare.png").exists()


def test_help_has_an_example(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "Example:" in text and "captum-nave compare" in text and "--methods" in text


def test_target_by_imagenet_class_name() -> None:
    """Names resolve to the class whose synonyms hold them; ambiguous and unknown names are refused."""
    from captum_nave.cli import CLIError
    from captum_nave.cli.compare import parse_target
    from captum_nave.models import imagenet_class_index, imagenet_class_name

    assert parse_target("Egyptian  Cat") == 285 and parse_target("tabby cat") == parse_target("tabby") == 281
    assert parse_target("285") == 285 and parse_target("AUTO") == "auto"
    for idx in (0, 281, 285, 999):  # round trip through the first synonym
        assert imagenet_class_index(imagenet_class_name(idx)) == idx
    with pytest.raises(CLIError, match=r"'crane' names several ImageNet-1k classes, pass an index: 134 \(crane\); 517"):
        parse_target("crane")
    with pytest.raises(CLIError, match=r"got 'cat' \(closest: 'tabby cat', 'tiger cat'"):
        parse_target("cat")


def test_compare_target_by_name_explains_that_class(cached_model, tiny_image, tmp_path) -> None:
    def run(target: str) -> list:
        out = tmp_path / target.replace(" ", "_")
        code = cli.main(["compare", str(tiny_image), "--methods", "gradcam", "--target", target,
                         "--size", "64", "-k", "2", "--out", str(out)])
        assert code == 0
        return _read_csv(out / "segment_relevance.csv")

    named, index, other = run("Egyptian cat"), run("285"), run("0")
    assert named == index
    assert [r["positive"] for r in named] != [r["positive"] for r in other]
