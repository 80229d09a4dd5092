"""Tests for per-segment relevance and segment importance (captum_nave.attribution.segment_scores),
and for the figures drawn from them.

* ``segment_relevance``: with dyadic values (exact in float64 whatever the summation
  order) the per-segment masses add up *exactly* to the map totals; on random float32 /
  float64 maps every column equals a brute-force loop over segment masks; shares,
  density, NaN for empty totals, absent and non-contiguous ids; table access and the
  CSV / Markdown exports read back.
* ``segment_importance``: the ablation score of each NAVE segment equals the logit drop
  measured by hand; Shapley values are efficient (they sum to F(x) - F(all ablated))
  and equal the ablation scores on a model that is additive over segments.
* Figures (matplotlib Agg, saved in tmp_path): the side-by-side grid of NAVE, Grad-CAM,
  IG and LRP, the per-segment relevance bars and the segment overlay, structure checked.
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

from captum_nave import LayerClusterExplainer
from captum_nave.attribution import (
    SegmentRelevanceTable,
    attribute,
    segment_importance,
    segment_relevance,
)
from synthetic import shapes_dataset


def _brute_force(seg: np.ndarray, val: np.ndarray) -> dict:
    """{(image, segment): masses} by looping over masks, in float64."""
    out = {}
    for i in range(seg.shape[0]):
        s, v = seg[i, 0], val[i, 0].astype(np.float64)
        tot = {"positive": v[v > 0].sum(), "negative": v[v < 0].sum(), "absolute": np.abs(v).sum()}
        for k in np.unique(s):
            m = s == k
            pos, neg, ab = v[m & (v > 0)].sum(), v[m & (v < 0)].sum(), np.abs(v[m]).sum()
            area = m.mean()
            out[(i, int(k))] = {
                "pixels": int(m.sum()), "area_share": area, "positive": pos, "negative": neg,
                "absolute": ab, "net": v[m].sum(),
                "positive_share": pos / tot["positive"] if tot["positive"] else math.nan,
                "negative_share": neg / tot["negative"] if tot["negative"] else math.nan,
                "absolute_share": ab / tot["absolute"],
                "density": (ab / tot["absolute"]) / area,
            }
    return out


# --------------------------------------------------------------------------- segment_relevance
def test_masses_add_up_exactly_to_the_map_totals() -> None:
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 5, (3, 1, 24, 20), generator=g)
    # multiples of 1/16 in [-4, 4]: every partial sum is exact in float64
    maps = torch.randint(-64, 65, (3, 1, 24, 20), generator=g).double() / 16
    table = segment_relevance(seg, maps)
    for i in range(3):
        rows = table.for_image(i).rows
        v = maps[i].flatten().tolist()
        assert sum(r["pixels"] for r in rows) == 24 * 20
        assert sum(r["positive"] for r in rows) == sum(a for a in v if a > 0) == table.totals[i]["positive"]
        assert sum(r["negative"] for r in rows) == sum(a for a in v if a < 0) == table.totals[i]["negative"]
        assert sum(r["absolute"] for r in rows) == sum(abs(a) for a in v) == table.totals[i]["absolute"]
        assert sum(r["net"] for r in rows) == sum(v) == table.totals[i]["net"]
        for key in ("area_share", "positive_share", "negative_share", "absolute_share"):
            assert math.isclose(sum(r[key] for r in rows), 1.0, rel_tol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_column_equals_a_brute_force_loop(dtype) -> None:
    g = torch.Generator().manual_seed(1)
    seg = torch.randint(0, 6, (2, 1, 17, 13), generator=g)
    seg[1][seg[1] == 2] = 9  # non-contiguous ids; id 2 absent from image 1
    maps = torch.randn(2, 1, 17, 13, generator=g, dtype=dtype) ** 3
    table = segment_relevance(seg, maps, method="ig", image_names=["a", "b"])
    expected = _brute_force(seg.numpy(), maps.numpy())
    assert {(r["image"], r["segment"]) for r in table.rows} == set(expected)
    assert [(r["image"], r["segment"]) for r in table.rows] == sorted(expected)  # ordered
    for r in table.rows:
        ref = expected[(r["image"], r["segment"])]
        assert r["method"] == "ig" and r["image_name"] == "ab"[r["image"]]
        for key, value in ref.items():
            assert math.isclose(r[key], value, rel_tol=1e-12, abs_tol=1e-12), (key, r[key], value)


def test_documented_example_and_density() -> None:
    seg = torch.tensor([[[[0, 0], [1, 1]]]])
    rel = torch.tensor([[[[3.0, -1.0], [0.5, 0.5]]]])
    t = segment_relevance(seg, rel)
    assert [(r["segment"], r["positive"], r["negative"], r["absolute_share"]) for r in t.rows] == [
        (0, 3.0, -1.0, 0.8), (1, 1.0, 0.0, 0.2)
    ]
    assert [r["density"] for r in t.rows] == [1.6, 0.4]
    assert t.rows[1]["negative_share"] == 0.0  # the image has negative relevance, not here
    # an image without any negative relevance: the share is undefined (NaN), not 0
    nonneg = segment_relevance(seg, rel.clamp(min=0))
    assert all(math.isnan(r["negative_share"]) for r in nonneg.rows)
    # a map with the same |value| everywhere: every segment's density is 1
    flat = segment_relevance(torch.randint(0, 3, (1, 1, 8, 8)), torch.full((1, 1, 8, 8), -2.0))
    assert all(math.isclose(r["density"], 1.0) for r in flat.rows)


def test_table_access_and_exports(tmp_path) -> None:
    g = torch.Generator().manual_seed(2)
    seg = torch.randint(0, 3, (2, 1, 6, 6), generator=g)
    a = segment_relevance(seg, torch.randn(2, 1, 6, 6, generator=g), method="gradcam", image_names=["x", "y"])
    b = segment_relevance(seg, torch.randn(2, 1, 6, 6, generator=g), method="lrp", image_names=["x", "y"])
    both = SegmentRelevanceTable.concat([a, b])
    assert len(both) == len(a) + len(b) and list(both) == a.rows + b.rows
    assert both.for_method("lrp").rows == b.rows
    assert both.for_image(1).column("image") == [1] * (len(a.for_image(1)) + len(b.for_image(1)))
    assert "rows" in repr(both)
    path = both.to_csv(tmp_path / "table.csv")
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(both)
    for r, s in zip(both.rows, back):
        assert s["method"] == r["method"] and int(s["segment"]) == r["segment"] and s["image_name"] == r["image_name"]
        assert float(s["absolute"]) == r["absolute"] and float(s["density"]) == r["density"]  # full precision
    md = both.to_markdown(digits=3).splitlines()
    assert md[0].startswith("| image | image_name | method | segment |") and md[1].startswith("|---|")
    assert len(md) == 2 + len(both)
    with pytest.raises(ValueError, match=r"i: expected an image index in \[0, 1\], got 5"):
        both.for_image(5)
    with pytest.raises(ValueError, match="method: expected one of"):
        both.for_method("ig")
    with pytest.raises(ValueError, match="name: expected one of"):
        both.column("mass")


def test_bad_inputs_name_the_parameter() -> None:
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    maps = torch.zeros(1, 1, 4, 4)
    with pytest.raises(TypeError, match="segments: expected integer segment ids"):
        segment_relevance(seg.float(), maps)
    with pytest.raises(ValueError, match=r"segments: expected shape \(N, 1, H, W\)"):
        segment_relevance(seg[0], maps)
    with pytest.raises(ValueError, match="segments: expected non-negative segment ids, got minimum -1"):
        segment_relevance(seg - 1, maps)
    with pytest.raises(ValueError, match=r"attributions: expected the segments' shape \(1, 1, 4, 4\).*\(1, 3, 4, 4\)"):
        segment_relevance(seg, torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError, match="attributions: expected a floating point tensor"):
        segment_relevance(seg, seg)
    with pytest.raises(ValueError, match="attributions: expected finite values"):
        segment_relevance(seg, torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="image_names: expected 1 names"):
        segment_relevance(seg, maps, image_names=["a", "b"])


def test_real_nave_segments_and_gradcam_totals() -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    seg = LayerClusterExplainer(model, ["layer3", "layer4"]).attribute(x, n_clusters=4, random_state=0)
    cam = attribute("gradcam", model, x, "auto").maps
    table = segment_relevance(seg, cam)
    for i in range(2):
        rows = table.for_image(i).rows
        assert {r["segment"] for r in rows} == set(seg[i].unique().tolist())
        assert math.isclose(sum(r["positive"] for r in rows), float(cam[i].double().sum()), rel_tol=1e-12)


# --------------------------------------------------------------------------- segment_importance
def _small_cnn() -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 8, 3, padding=1, stride=2),
        relu2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(8, 3),
    )).double().eval()


def test_ablation_score_is_the_logit_drop() -> None:
    torch.manual_seed(0)
    model = _small_cnn()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    seg = LayerClusterExplainer(model, ["relu1", "relu2"]).attribute(x, n_clusters=3, random_state=0)
    target = torch.tensor([0, 2])
    scores = segment_importance(model, x, seg, target, method="ablation")
    assert scores.shape == (2, int(seg.max()) + 1)
    with torch.no_grad():
        full = model(x)
        for i in range(2):
            for k in range(scores.shape[1]):
                mask = seg[i, 0] == k
                if not mask.any():
                    assert math.isnan(scores[i, k])
                    continue
                xk = x[i : i + 1].clone()
                xk[0][:, mask] = 0.0
                drop = full[i, target[i]] - model(xk)[0, target[i]]
                assert math.isclose(float(scores[i, k]), float(drop), rel_tol=1e-9, abs_tol=1e-12)
    # another baseline: the per-channel mean of each image
    mean = x.mean(dim=(2, 3), keepdim=True)
    scores_mean = segment_importance(model, x, seg, target, baselines=mean)
    with torch.no_grad():
        xk = x[:1].clone()
        m = seg[0, 0] == 0
        xk[0][:, m] = mean[0].expand_as(xk[0])[:, m]
        drop = full[0, 0] - model(xk)[0, 0]
    assert math.isclose(float(scores_mean[0, 0]), float(drop), rel_tol=1e-9, abs_tol=1e-12)


def test_shapley_is_efficient_and_equals_ablation_for_an_additive_model() -> None:
    torch.manual_seed(0)
    model = _small_cnn()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    seg = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    seg[:, :, 8:, :] = 1
    seg[:, :, :, 10:] += 2  # 4 quadrant-like segments, ids 0..3
    shap = segment_importance(model, x, seg, "auto", method="shapley", n_samples=8)
    with torch.no_grad():
        out = model(x)
        t = out.argmax(1)
        gap = out.gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    # (Captum accumulates with ~1e-9 relative rounding even in float64)
    torch.testing.assert_close(shap.sum(1), gap, rtol=1e-7, atol=1e-9)
    # a linear model is additive over segments: Shapley = ablation, for any sample count
    linear = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    linear = linear.double().eval()
    shap_lin = segment_importance(linear, x, seg, 1, method="shapley", n_samples=3)
    abl_lin = segment_importance(linear, x, seg, 1, method="ablation")
    torch.testing.assert_close(shap_lin, abl_lin, rtol=1e-7, atol=1e-9)
    # reproducible, and the global RNG is not consumed
    state = torch.get_rng_state()
    again = segment_importance(model, x, seg, "auto", method="shapley", n_samples=8)
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(again, shap)


def test_segment_importance_bad_input_and_model_untouched() -> None:
    model = _small_cnn().train()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    seg = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    segment_importance(model, x, seg, 0)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="method: expected 'ablation' or 'shapley'"):
        segment_importance(model, x, seg, 0, method="lime")
    with pytest.raises(ValueError, match=r"segments: expected shape \(1, 1, 8, 8\)"):
        segment_importance(model, x, torch.zeros(1, 1, 4, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="n_samples: expected an int >= 1"):
        segment_importance(model, x, seg, 0, method="shapley", n_samples=0)
    with pytest.raises(TypeError, match="baselines: expected a number or a Tensor"):
        segment_importance(model, x, seg, 0, baselines="zeros")
    with pytest.raises(ValueError, match="target: expected class indices"):
        segment_importance(model, x, seg, 7)


# --------------------------------------------------------------------------- figures
@pytest.fixture(scope="module")
def comparison():
    """Two synthetic photos, a small CNN, its NAVE segments and the three maps."""
    import torchvision

    torch.manual_seed(0)
    images, _, _, _ = shapes_dataset(2, 48, seed=3)
    x = (images - 0.5) / 0.25
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    seg = LayerClusterExplainer(model, ["layer2", "layer3"]).attribute(x, n_clusters=4, random_state=0)
    maps = {m: attribute(m, model, x, "auto", **({"n_steps": 8} if m == "ig" else {})).maps
            for m in ("gradcam", "ig", "lrp")}
    return images, x, seg, maps


def test_side_by_side_figure(comparison, tmp_path) -> None:
    from captum_nave.visualization import plot_side_by_side

    images, _, seg, maps = comparison
    fig, axes = plot_side_by_side(images, {"resnet18": {"nave": seg, **maps}}, image_names=["a", "b"])
    assert axes.shape == (2, 5)
    assert [ax.get_title() for ax in axes[0]] == ["Image", "NAVE", "Grad-CAM", "IG", "LRP"]
    assert [axes[r, 0].get_ylabel() for r in range(2)] == ["a", "b"]
    assert all(len(ax.images) >= 1 for ax in axes.flat)
    fig.savefig(tmp_path / "side_by_side.png")
    assert (tmp_path / "side_by_side.png").stat().st_size > 1000
    # two models as rows: a second model's maps (a random re-initialisation here)
    fig2, axes2 = plot_side_by_side(
        images, {"resnet18": {"nave": seg, **maps}, "random": {"gradcam": maps["gradcam"].flip(-1)}}
    )
    assert axes2.shape == (4, 5)
    assert [t.get_text() for t in axes2[1, 1].texts] == ["n/a"]  # "random" has no NAVE panel
    fig2.savefig(tmp_path / "two_models.png")


def test_segment_relevance_bars(comparison, tmp_path) -> None:
    from captum_nave.visualization import plot_segment_relevance

    _, _, seg, maps = comparison
    rows = segment_relevance(seg, maps["lrp"], method="lrp").for_image(0).rows
    fig, ax = plot_segment_relevance(
        [r["absolute_share"] for r in rows], area_share=[r["area_share"] for r in rows],
        segment_ids=[r["segment"] for r in rows], title="LRP per NAVE segment",
    )
    assert ax.get_title() == "LRP per NAVE segment"
    assert len(ax.patches) == 2 * len(rows)  # one relevance bar and one area bar per segment
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(r["segment"]) for r in rows]
    assert len(ax.get_legend().get_texts()) == 2
    fig.savefig(tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000


def test_segment_overlay(comparison, tmp_path) -> None:
    from captum_nave.visualization import plot_segments

    images, _, seg, _ = comparison
    fig, ax = plot_segments(images[0], seg[0], title="NAVE")
    assert ax.get_title() == "NAVE"
    assert len(ax.get_legend().get_texts()) == len(seg[0].unique())
    fig.savefig(tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 1000
