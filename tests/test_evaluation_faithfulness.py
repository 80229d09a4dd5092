"""Tests for captum_nave.evaluation.faithfulness.

* Deletion / insertion on a model whose answer is known: for a linear model on pixels
  the exact attribution (IG, exact for linear models, with the perturbation's own
  baseline) removes at every step the pixels whose removal lowers the logit most, so its
  deletion curve lies below the curve of ANY other ranking at every step (and its
  insertion curve above); random maps, gradient-only and noisy maps are measurably
  worse. The same holds for units ranked by relevance mass, and ranking NAVE-style
  segments by ``segment_importance`` (ablation = contribution mass for a linear model)
  gives the identical curve.
* Curves and AUCs equal a plain float64 NumPy re-implementation (masks built with
  ``np.argsort``, the linear model evaluated in NumPy, ``np.trapezoid``), for pixels,
  units, both modes, both orders, the three baselines and probability outputs.
* Cross-checks with Quantus 0.6 (test-only dependency): ``PixelFlipping`` curves on a
  small CNN, ``PointingGame`` and ``RelevanceMassAccuracy``.
* Randomisation: on the trained bars classifier, every method's map decorrelates as
  the cascade goes down, a map that ignores the model stays identical (Spearman and SSIM
  exactly 1), NAVE is untouched until its own layer is randomised; Spearman and SSIM
  equal scipy's ``spearmanr`` (ties) and scikit-image's ``structural_similarity``.
* The audit table, its CSV and figure; model safety and errors naming the parameter.
"""

from __future__ import annotations

import copy
import csv
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from captum_nave.attribution import attribute, segment_importance
from captum_nave.evaluation.faithfulness import (
    CSV_COLUMNS,
    RANDOM_METHOD,
    box_masks,
    cascade_stages,
    energy_in_box,
    faithfulness_audit,
    grid_units,
    map_ssim,
    perturbation_baseline,
    perturbation_curve,
    pointing_game,
    randomisation_check,
    rank_correlation,
    reinitialise,
    slic_units,
    unit_order,
)

C, H, W, K = 3, 12, 12, 4


class LinearPixels(nn.Module):
    """logits = W . x + b over all pixels and channels (float64)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(K, C, H, W, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(K, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kchw,nchw->nk", self.weight, x) + self.bias


@pytest.fixture(scope="module")
def linear():
    model = LinearPixels().eval()
    x = torch.randn(3, C, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x


def _random_maps(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape[0], 1, *x.shape[-2:], generator=g, dtype=x.dtype)


# --------------------------------------------------------------------------- known answer
@pytest.mark.parametrize("baseline", ["zeros", "blur"])
def test_exact_attribution_gives_the_best_deletion_and_insertion_curves(linear, baseline) -> None:
    model, x = linear
    target = 2
    kw = dict(baseline=baseline, output="logit", n_steps=16)
    # IG is exact for a linear model; with the perturbation's own baseline it is the
    # contribution of every pixel to the logit
    exact = attribute("ig", model, x, target, baselines=baseline, n_steps=4).maps
    base = perturbation_baseline(x, baseline)
    contrib = (model.weight[target] * (x - base)).sum(1, keepdim=True).detach()
    assert torch.allclose(exact, contrib, rtol=1e-10, atol=1e-12)
    others = [_random_maps(x, s) for s in range(8)]
    others += [model.weight[target].sum(0).detach().expand(x.shape[0], 1, H, W).clone(),  # gradient only
               exact.abs(), exact + 0.5 * exact.std() * _random_maps(x, 99)]
    best_del = perturbation_curve(model, x, exact, target, mode="deletion", **kw)
    best_ins = perturbation_curve(model, x, exact, target, mode="insertion", **kw)
    # float64 sums of 432 terms: 1e-9 is far above rounding and far below any real gap
    for other in others:
        d = perturbation_curve(model, x, other, target, mode="deletion", **kw)
        i = perturbation_curve(model, x, other, target, mode="insertion", **kw)
        assert (best_del.scores <= d.scores + 1e-9).all()
        assert (best_ins.scores >= i.scores - 1e-9).all()
    span = (best_del.scores[:, 0] - best_del.scores[:, -1]).abs()
    for other in others[:8]:  # random maps: clearly worse
        d = perturbation_curve(model, x, other, target, mode="deletion", **kw)
        i = perturbation_curve(model, x, other, target, mode="insertion", **kw)
        assert ((d.auc() - best_del.auc()) > 0.1 * span).all()
        assert ((best_ins.auc() - i.auc()) > 0.1 * span).all()
    # the end points do not depend on the map: input and baseline
    assert torch.allclose(best_del.scores[:, 0], model(x)[:, target].detach())
    assert torch.allclose(best_del.scores[:, -1], model(base)[:, target].detach())
    assert torch.allclose(best_ins.scores[:, 0], model(base)[:, target].detach())


def test_least_relevant_first_is_the_mirror_image(linear) -> None:
    model, x = linear
    exact = attribute("ig", model, x, 1, baselines="zeros", n_steps=4).maps
    kw = dict(baseline="zeros", output="logit", n_steps=12)
    lerf = perturbation_curve(model, x, exact, 1, mode="deletion", order="least", **kw)
    for s in range(4):
        other = perturbation_curve(model, x, _random_maps(x, s), 1, mode="deletion", order="least", **kw)
        assert (lerf.scores >= other.scores - 1e-9).all()
    # LeRF on the map equals MoRF on the negated map
    morf_neg = perturbation_curve(model, x, -exact, 1, mode="deletion", **kw)
    assert torch.equal(lerf.scores, morf_neg.scores)


def test_units_ranked_by_mass_are_optimal_and_segment_importance_agrees(linear) -> None:
    model, x = linear
    target = 0
    g = torch.Generator().manual_seed(5)
    seg = torch.randint(0, 6, (x.shape[0], 1, H, W), generator=g)
    seg[:, :, :2, :2] = 7  # a gap in the ids (6 absent): only present ids count
    exact = attribute("ig", model, x, target, baselines="zeros", n_steps=4).maps
    kw = dict(baseline="zeros", output="logit", units=seg)
    best = perturbation_curve(model, x, exact, target, mode="deletion", **kw)
    assert best.n_points.tolist() == [8, 8, 8]  # 7 units present + the unperturbed input
    for s in range(6):
        scores = torch.rand(x.shape[0], 8, generator=g, dtype=torch.float64)
        other = perturbation_curve(model, x, target=target, mode="deletion", unit_scores=scores, **kw)
        assert (best.scores <= other.scores + 1e-9).all()
    # ablating a segment of a linear model removes exactly its contribution mass
    imp = segment_importance(model, x, seg, target, baselines=0.0)
    by_importance = perturbation_curve(model, x, target=target, mode="deletion", unit_scores=imp, **kw)
    assert torch.allclose(by_importance.scores, best.scores, rtol=1e-12, atol=1e-12)
    assert by_importance.ranking == "unit scores" and best.ranking == "units"


# --------------------------------------------------------------------------- independent reference
def _np_curve(model, x, a, target, *, mode, baseline, n_steps=None, units=None, aggregate="sum",
              order="most", output="logit"):
    """Plain float64 NumPy: masks, linear model, softmax, trapezoid."""
    wt = model.weight.detach().numpy().reshape(K, -1)
    b = model.bias.detach().numpy()
    xs = x.detach().numpy().reshape(x.shape[0], C, -1)
    if baseline == "zeros":
        bs = np.zeros_like(xs)
    elif baseline == "mean":
        bs = np.broadcast_to(xs.mean(axis=2, keepdims=True), xs.shape)
    else:  # a precomputed tensor
        bs = baseline.detach().numpy().reshape(xs.shape)
    aucs, curves = [], []
    sign = 1.0 if order == "most" else -1.0
    for i in range(x.shape[0]):
        v = a[i, 0].detach().numpy().reshape(-1)
        masks = []
        if units is None:
            rank = np.argsort(-sign * v, kind="stable")
            ks = [int(np.floor(s * v.size / n_steps + 0.5)) for s in range(n_steps + 1)]  # round(s HW / S)
            for k in ks:
                m = np.zeros(v.size, dtype=bool)
                m[rank[:k]] = True
                masks.append(m)
            grid_x = np.asarray(ks, dtype=np.float64) / v.size  # the fraction actually perturbed
        else:
            ids = units[i, 0].numpy().reshape(-1)
            present = np.unique(ids)
            mass = np.array([v[ids == u].sum() if aggregate == "sum" else v[ids == u].mean() for u in present])
            ranked = present[np.argsort(-sign * mass, kind="stable")]
            n_units = len(present)
            if n_units <= n_steps:
                ks = range(n_units + 1)
            else:  # more units than steps: round(s K / S) units at step s
                ks = [int(np.floor(s * n_units / n_steps + 0.5)) for s in range(n_steps + 1)]
            masks = [np.isin(ids, ranked[:k]) for k in ks]
            grid_x = np.asarray(list(ks), dtype=np.float64) / n_units
        ys = []
        for m in masks:
            keep_base = m if mode == "deletion" else ~m
            xp = np.where(keep_base[None, :], bs[i], xs[i]).reshape(-1)
            logits = wt @ xp + b
            if output == "probability":
                e = np.exp(logits - logits.max())
                ys.append(e[target] / e.sum())
            else:
                ys.append(logits[target])
        ys = np.array(ys)
        curves.append(ys)
        aucs.append(np.trapezoid(ys, grid_x))
    return curves, np.array(aucs)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("baseline", ["zeros", "mean", "blur"])
@pytest.mark.parametrize("ranking", ["pixels", "units-sum", "units-mean", "many-sum"])
def test_curves_and_auc_equal_an_independent_numpy_computation(linear, mode, baseline, ranking) -> None:
    model, x = linear
    a = _random_maps(x, 3)
    # units of very different sizes (mean and sum rankings differ): horizontal bands + a block
    units = None
    if ranking.startswith("many"):  # 35 grid cells > 12 steps: uneven numbers of units per step
        units = grid_units(x.shape, 5, 7)
    elif ranking != "pixels":
        units = (torch.arange(H)[:, None] // torch.tensor([1, 2, 5])[torch.arange(H) % 3][:, None]).expand(H, W) % 5
        units = units.clone()[None, None].repeat(x.shape[0], 1, 1, 1)
        units[1, :, 4:9, 2:10] = 7
        units[2, :, :, :3] = 6
    agg = ranking.split("-")[1] if units is not None else "sum"
    ref_base = perturbation_baseline(x, "blur") if baseline == "blur" else baseline
    # pixels: 7 steps over 144 pixels, so that round(s * 144 / 7) differs from the floor (20.57 -> 21)
    steps = 7 if ranking == "pixels" else 12
    for order, output in (("most", "logit"), ("least", "probability")):
        res = perturbation_curve(model, x, a, 3, mode=mode, baseline=baseline, n_steps=steps, units=units,
                                 unit_aggregate=agg, order=order, output=output, batch_size=7)
        curves, aucs = _np_curve(model, x, a, 3, mode=mode, baseline=ref_base, n_steps=steps, units=units,
                                 aggregate=agg, order=order, output=output)
        for i, ref in enumerate(curves):  # float64 on both sides: rounding of a 432-term dot product
            np.testing.assert_allclose(res.curve(i)[1].numpy(), ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.auc().numpy(), aucs, rtol=1e-10, atol=1e-12)


def test_blur_baseline_is_a_gaussian_blur_and_mean_is_per_channel(linear) -> None:
    from scipy.ndimage import gaussian_filter

    _, x = linear
    blur = perturbation_baseline(x, "blur", blur_sigma=1.5)
    # reflect padding = scipy's 'mirror'; radius ceil(3 sigma) = 5 = truncate 5/1.5
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5), mode="mirror", truncate=5 / 1.5)
    np.testing.assert_allclose(blur.numpy(), ref, rtol=1e-10, atol=1e-12)
    mean = perturbation_baseline(x, "mean")
    np.testing.assert_allclose(mean.numpy(), np.broadcast_to(x.numpy().mean(axis=(2, 3), keepdims=True), x.shape))
    assert torch.equal(perturbation_baseline(x, 0.25), torch.full_like(x, 0.25))


def test_area_axis_and_mean_curve(linear) -> None:
    model, x = linear
    units = grid_units(x.shape, 2, 3)  # 6 equal cells
    res = perturbation_curve(model, x, _random_maps(x, 0), 0, units=units, baseline="zeros", output="logit")
    # equal cells: the area perturbed is the fraction of units
    assert torch.allclose(res.fractions, res.unit_fractions)
    assert torch.allclose(res.auc("area"), res.auc("units"))
    grid, mean = res.mean_curve(n_grid=11)
    assert torch.allclose(mean[0], res.scores[:, 0].mean()) and torch.allclose(mean[-1], res.scores[:, -1].mean())
    x6, y6 = res.curve(0)
    np.testing.assert_allclose(np.interp(grid.numpy(), x6.numpy(), res.scores[:, :].numpy().mean(0)),
                               mean.numpy(), rtol=1e-12)


def test_batch_size_does_not_change_the_result(linear) -> None:
    model, x = linear
    a = _random_maps(x, 1)
    one = perturbation_curve(model, x, a, 1, batch_size=1, n_steps=8)
    many = perturbation_curve(model, x, a, 1, batch_size=64, n_steps=8)
    assert torch.allclose(one.scores, many.scores, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- Quantus
def _small_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3),
    ).eval()


def test_deletion_curve_equals_quantus_pixel_flipping() -> None:
    quantus = pytest.importorskip("quantus")
    model = _small_cnn()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 12, 12, generator=g)
    a = torch.randn(4, 1, 12, 12, generator=g)
    y = model(x).argmax(1)
    steps = 12
    metric = quantus.PixelFlipping(features_in_step=3 * 144 // steps, perturb_baseline=0.0, normalise=False,
                                   abs=False, disable_warnings=True, display_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                                channel_first=True, softmax=True, device="cpu"))
    ours = perturbation_curve(model, x, a, y, mode="deletion", baseline="zeros", n_steps=steps)
    # the same float32 forward of the same perturbed images; only batch composition differs
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), ref, rtol=1e-5, atol=1e-6)
    # Quantus' AUC integrates its curve (without the unperturbed point) with dx = 1
    np.testing.assert_allclose(np.trapezoid(ours.scores[:, 1:].numpy(), axis=1),
                               np.trapezoid(ref, axis=1), rtol=1e-5)


def test_pointing_game_and_energy_equal_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(5, 1, 16, 16, generator=g)
    maps[0, 0, 3, 4] = 10.0  # image 0: maximum inside its box
    maps[1, 0, 12, 12] = 10.0  # image 1: maximum outside
    boxes = [np.array([[2, 1, 8, 6]]), np.array([[0, 0, 5, 5]]), np.array([[4, 4, 12, 9], [10, 0, 16, 3]]),
             np.array([[1, 1, 15, 15]]), np.array([[6, 6, 7, 7]])]
    masks = box_masks(boxes, maps.shape).numpy()[:, None].astype(np.float64)
    x = torch.rand(5, 3, 16, 16, generator=g).numpy()
    y = np.zeros(5, dtype=int)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 256, 2)).eval()
    ours = pointing_game(maps, boxes).numpy()
    assert ours[0] == 1.0 and ours[1] == 0.0
    ref = quantus.PointingGame(disable_warnings=True, abs=False, normalise=False)(
        model=model, x_batch=x, y_batch=y, a_batch=maps.numpy(), s_batch=masks, channel_first=True, device="cpu")
    np.testing.assert_array_equal(ours, np.asarray(ref, dtype=np.float64))
    ref_mass = quantus.RelevanceMassAccuracy(disable_warnings=True, abs=False, normalise=False)(
        model=model, x_batch=x, y_batch=y, a_batch=maps.clamp_min(0).numpy(), s_batch=masks,
        channel_first=True, device="cpu")
    np.testing.assert_allclose(energy_in_box(maps, boxes).numpy(), ref_mass, rtol=1e-6)
    np.testing.assert_allclose(energy_in_box(maps, boxes, positive=False).numpy(),
                               (maps.numpy() * masks).sum((1, 2, 3)) / maps.numpy().sum((1, 2, 3)), rtol=1e-6)


def test_box_masks_tolerance_and_missing_boxes() -> None:
    m = box_masks([np.array([[2, 2, 5, 5]]), None], (2, 1, 8, 8))
    assert m[0].sum() == 9 and m[0, 2:5, 2:5].all() and not m[1].any()
    grown = box_masks([np.array([[2, 2, 5, 5]]), np.zeros((0, 4))], (2, 1, 8, 8), tolerance=1)
    assert grown[0].sum() == 25
    maps = torch.zeros(2, 1, 8, 8)
    maps[:, 0, 6, 6] = 1.0
    assert pointing_game(maps, [np.array([[2, 2, 5, 5]]), None], tolerance=0)[0] == 0.0
    assert pointing_game(maps, [np.array([[2, 2, 5, 5]]), None], tolerance=2)[0] == 1.0
    assert math.isnan(float(pointing_game(maps, [np.array([[2, 2, 5, 5]]), None])[1]))
    assert math.isnan(float(energy_in_box(torch.zeros(1, 1, 8, 8), [np.array([[0, 0, 4, 4]])])[0]))


# --------------------------------------------------------------------------- randomisation
def test_rank_correlation_and_ssim_equal_scipy_and_scikit_image() -> None:
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (4, 1, 20, 24), generator=g).to(torch.float64)  # many ties
    b = torch.randn(4, 1, 20, 24, generator=g, dtype=torch.float64)
    b[1] = b[1].round()
    rho = rank_correlation(a, b)
    for i in range(4):
        ref = spearmanr(a[i].abs().reshape(-1).numpy(), b[i].abs().reshape(-1).numpy())[0]
        assert abs(float(rho[i]) - ref) < 1e-12
    assert float(rank_correlation(a, a.abs() * 2 + 1)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(rank_correlation(torch.zeros(1, 1, 4, 4), b[:1, :, :4, :4])[0]) == 0.0  # constant map
    s = map_ssim(a, b)
    for i in range(4):
        u = a[i, 0].abs().numpy()
        v = b[i, 0].abs().numpy()
        u = (u - u.min()) / (u.max() - u.min())
        v = (v - v.min()) / (v.max() - v.min())
        ref = structural_similarity(u, v, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(float(s[i]) - ref) < 1e-12
    assert torch.allclose(map_ssim(b, b), torch.ones(4, dtype=torch.float64))


def test_cascade_stages_of_real_families() -> None:
    import timm
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    assert cascade_stages(resnet) == ["fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1",
                                      "layer2.0", "layer1.1", "layer1.0", "bn1", "conv1"]
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=32,
                            num_heads=2, reg_tokens=2)
    assert cascade_stages(vit) == ["head", "norm", "blocks.1", "blocks.0", "patch_embed"]
    rand = reinitialise(vit, ["patch_embed"], random_state=0, root_parameters=True)
    for name in ("cls_token", "reg_token", "pos_embed"):
        assert not torch.equal(getattr(rand, name), getattr(vit, name))
        assert torch.equal(getattr(rand, name).flatten().sort().values,
                           getattr(vit, name).flatten().sort().values)  # permuted: the same values


def test_reinitialise_changes_exactly_the_named_modules_and_not_the_user_model(bars_net) -> None:
    net = bars_net[0]
    before = copy.deepcopy(net.state_dict())
    rand = reinitialise(net, ["fc", "stage3"], random_state=4)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    changed = {k for k, v in rand.state_dict().items() if not torch.equal(v, before[k])}
    assert {k.split(".")[0] for k in changed} == {"fc", "stage3"}
    assert {"fc.weight", "fc.bias", "stage3.0.weight", "stage3.1.running_mean"} <= changed
    again = reinitialise(net, ["fc", "stage3"], random_state=4)
    for k, v in rand.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])  # seeded


def _edges(model, inputs, target):
    """A 'method' that ignores the model: the image's own intensity."""
    return inputs.abs().sum(1, keepdim=True)


def test_randomisation_check_separates_model_explanations_from_input_ones(bars_net) -> None:
    net, x, y, _ = bars_net
    before = copy.deepcopy(net.state_dict())
    res = randomisation_check(
        net, x, y,
        methods={"gradcam": None, "ig": None, "lrp": None, "edges": _edges, "nave": None},
        method_options={"gradcam": {"layer": "stage3"}, "ig": {"n_steps": 16},
                        "nave": {"layers": ["stage2"], "n_clusters": 3}},
        return_maps=True,
    )
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert res.stages == ["fc", "stage3", "stage2", "stage1"]
    assert res.randomised[1] == ["fc", "stage3"]
    for m in ("gradcam", "ig", "lrp"):
        rho = res.spearman[m].mean(dim=1)
        print(m, "spearman per stage", [round(float(v), 3) for v in rho],
              "ssim", [round(float(v), 3) for v in res.ssim[m].mean(dim=1)])
        # measured 0.31-0.41 after fc + stage3 (test_attribution_sanity.py: < 0.7 with margin)
        assert float(rho[1]) < 0.7
        assert float(res.ssim[m][-1].mean()) < 0.7
    # the input-only map never changes
    assert torch.equal(res.spearman["edges"], torch.ones(4, 16, dtype=torch.float64))
    assert torch.allclose(res.ssim["edges"], torch.ones(4, 16, dtype=torch.float64))
    # NAVE explains its own layer: randomising the layers above leaves it exactly as it was
    ari = res.ari["nave"].mean(dim=1)
    assert float(ari[0]) == 1.0 and float(ari[1]) == 1.0 and float(ari[2]) < 0.9
    assert res.maps["gradcam"].shape == (5, 16, 1, 32, 32)
    rows = res.summary()
    assert {r["method"] for r in rows} == {"gradcam", "ig", "lrp", "edges", "nave"} and len(rows) == 20
    fig, axes = res.plot()
    assert axes.shape == (1, 2) and len(axes[0, 0].lines) >= 5


def test_independent_randomisation_and_stage_selection(bars_net) -> None:
    net, x, y, _ = bars_net
    res = randomisation_check(net, x[:4], y[:4], methods=["gradcam"], method_options={"gradcam": {"layer": "stage3"}},
                              cascading=False, stages=["stage3", "stage1"])
    assert res.randomised == [["stage3"], ["stage1"]] and not res.cascading
    two = randomisation_check(net, x[:2], y[:2], methods=["gradcam"], stages=2,
                              method_options={"gradcam": {"layer": "stage3"}})
    assert two.stages == ["fc", "stage1"] and two.randomised[1] == ["fc", "stage3", "stage2", "stage1"]
    # given reference maps are used instead of recomputing them
    ref = attribute("gradcam", net, x[:2], y[:2], layer="stage3").maps
    reused = randomisation_check(net, x[:2], y[:2], methods=["gradcam"], stages=2, reference_maps={"gradcam": ref},
                                 method_options={"gradcam": {"layer": "stage3"}})
    assert torch.equal(reused.spearman["gradcam"], two.spearman["gradcam"])
    other = randomisation_check(net, x[:2], y[:2], methods=["gradcam"], stages=2,
                                reference_maps={"gradcam": ref.flip(-1)}, method_options={"gradcam": {"layer": "stage3"}})
    assert not torch.equal(other.spearman["gradcam"], two.spearman["gradcam"])
    with pytest.raises(ValueError, match="reference_maps: maps for"):
        randomisation_check(net, x[:2], y[:2], methods=["gradcam"], reference_maps={"ig": ref})
    with pytest.raises(ValueError, match="stages: 'nope' is not one of"):
        randomisation_check(net, x[:2], y[:2], methods=["gradcam"], stages=["nope"])
    with pytest.raises(ValueError, match="stages: expected names in cascade order"):
        randomisation_check(net, x[:2], y[:2], methods=["gradcam"], stages=["stage1", "fc"])
    with pytest.raises(ValueError, match="method_options"):
        randomisation_check(net, x[:2], y[:2], methods=["gradcam"], method_options={"ig": {}})


# --------------------------------------------------------------------------- audit
def test_audit_table_csv_and_figure(linear, tmp_path) -> None:
    model, x = linear
    target = 1
    exact = attribute("ig", model, x, target, baselines="blur", n_steps=4).maps
    seg = grid_units(x.shape, 3, 3)
    imp = segment_importance(model, x, seg, target, baselines=perturbation_baseline(x, "blur"))
    boxes = [np.array([[0, 0, 6, 6]]), None, np.array([[3, 3, 9, 9]])]
    audit = faithfulness_audit(
        model, x, {"ig": exact, "gradient": model.weight[target].sum(0).detach().expand(3, 1, H, W).clone()},
        target, segments=seg, segment_scores={"segment_importance": imp}, images=torch.sigmoid(x.float()),
        slic_segments=6, grid=(2, 2), output="logit", boxes=boxes, image_names=["a", "b", "c"], model_name="lin",
    )
    assert audit.methods == ["ig", "gradient", RANDOM_METHOD, "segment_importance"]
    assert audit.rankings == ["pixels", "segments", "slic", "grid"]
    mean = {(r["method"], r["ranking"]): r for r in audit.rows()}
    for ranking in ("pixels", "segments"):  # the exact map beats the random map
        assert mean[("ig", ranking)]["deletion_auc"] < mean[(RANDOM_METHOD, ranking)]["deletion_auc"]
        assert mean[("ig", ranking)]["insertion_auc"] > mean[(RANDOM_METHOD, ranking)]["insertion_auc"]
    # segment importance with the blur baseline = exact mass: same curve
    assert mean[("segment_importance", "segments")]["deletion_auc"] == pytest.approx(
        mean[("ig", "segments")]["deletion_auc"], rel=1e-10)
    # direct call gives the same numbers
    direct = perturbation_curve(model, x, exact, target, units=audit.units["slic"], output="logit")
    assert mean[("ig", "slic")]["deletion_auc"] == pytest.approx(float(direct.auc().mean()), rel=1e-12)
    assert math.isnan(mean[("ig", "pixels")]["pointing_game"]) is False
    expected_pg = np.nanmean(pointing_game(exact, boxes).numpy())
    assert mean[("ig", "pixels")]["pointing_game"] == pytest.approx(expected_pg)
    path = audit.to_csv(tmp_path / "faith.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(audit.rows(per_image=True))
    row = next(r for r in rows if r["method"] == "ig" and r["ranking"] == "grid" and r["image"] == "2")
    assert float(row["deletion_auc"]) == float(audit.auc("ig", "grid", "deletion")[2])
    assert row["image_name"] == "c" and row["model"] == "lin"
    assert not list(tmp_path.glob("*.tmp"))
    md = audit.to_markdown()
    assert "| ig | NAVE segments |" in md and "pointing_game" in md
    fig, axes = audit.plot(rankings=["pixels", "segments"])
    assert axes.shape == (2, 2) and len(axes[0, 0].lines) == 3


def test_random_map_rows_give_a_shard_the_whole_batch_noise(linear) -> None:
    # a torchrun report audits each rank's images with their rows of the whole batch's random map: the per-image
    # results equal the whole batch's rows (float64 linear model: exact up to rounding)
    from captum_nave.evaluation.faithfulness import random_maps

    model, x = linear
    a = _random_maps(x, 5)
    kw = dict(rankings=("pixels", "grid"), grid=(2, 2), n_steps=6, baseline="zeros", output="logit")
    full = faithfulness_audit(model, x, {"a": a}, [0, 1, 2], **kw)
    rows = [2, 0]
    part = faithfulness_audit(model, x[rows], {"a": a[rows]}, [2, 0], **kw,
                              random_map=random_maps(x.shape, 0)[rows])
    drawn = faithfulness_audit(model, x[rows], {"a": a[rows]}, [2, 0], **kw)  # drawn for the 2 images alone
    for ranking in ("pixels", "grid"):
        ref = full.auc(RANDOM_METHOD, ranking, "deletion")[rows]
        torch.testing.assert_close(part.auc(RANDOM_METHOD, ranking, "deletion"), ref, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(drawn.auc(RANDOM_METHOD, ranking, "deletion"), ref)
        torch.testing.assert_close(part.auc("a", ranking, "deletion"), full.auc("a", ranking, "deletion")[rows],
                                   rtol=1e-12, atol=1e-12)
    assert part.config == drawn.config
    with pytest.raises(ValueError, match=r"random_map: expected a float tensor of shape \(2, 1, 12, 12\)"):
        faithfulness_audit(model, x[rows], {"a": a[rows]}, [2, 0], **kw, random_map=random_maps(x.shape, 0))
    with pytest.raises(TypeError, match=r"random_map: expected True, False or a Tensor \(N, 1, H, W\), got str"):
        faithfulness_audit(model, x[rows], {"a": a[rows]}, [2, 0], **kw, random_map="yes")


# --------------------------------------------------------------------------- safety and errors
def test_model_state_is_restored_and_training_mode_warns() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    model.train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning, match="training mode"):
        perturbation_curve(model, x, torch.rand(2, 1, 12, 12), n_steps=4)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())


def test_bad_input_names_the_parameter(linear) -> None:
    model, x = linear
    a = _random_maps(x, 0)
    with pytest.raises(ValueError, match="mode: expected one of 'deletion', 'insertion', got 'delete'"):
        perturbation_curve(model, x, a, mode="delete")
    with pytest.raises(ValueError, match="baseline: expected one of 'blur', 'mean', 'zeros'"):
        perturbation_curve(model, x, a, baseline="black")
    with pytest.raises(ValueError, match=r"attributions: expected a float tensor of shape \(3, 1, 12, 12\)"):
        perturbation_curve(model, x, a[:, :, :6])
    with pytest.raises(ValueError, match="n_steps: expected an int >= 1, got 0"):
        perturbation_curve(model, x, a, n_steps=0)
    with pytest.raises(ValueError, match="units: expected shape"):
        perturbation_curve(model, x, a, units=torch.zeros(3, 1, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="unit_scores: scores per unit need units="):
        perturbation_curve(model, x, unit_scores=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"unit_scores: expected a tensor of shape \(3, K\) with K >= 2"):
        unit_order(torch.ones(3, 1, 4, 4, dtype=torch.long), unit_scores=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="output: expected one of 'probability', 'logit'"):
        perturbation_curve(model, x, a, output="prob")
    with pytest.raises(ValueError, match="target: expected class indices in"):
        perturbation_curve(model, x, a, target=9)
    with pytest.raises(ValueError, match="rankings: expected a sequence of"):
        faithfulness_audit(model, x, {"a": a}, rankings=("pixel",))
    with pytest.raises(ValueError, match="maps: the name 'random' is reserved"):
        faithfulness_audit(model, x, {"random": a})
    with pytest.raises(ValueError, match="images: expected values in"):
        slic_units(x.float(), 4)


def test_runs_on_the_inputs_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = _small_cnn().cuda()
    x = torch.randn(3, 3, 12, 12, device="cuda")
    a = torch.randn(3, 1, 12, 12, device="cuda")
    gpu = perturbation_curve(model, x, a, mode="insertion", units=grid_units(x.shape, 3, 3, device="cuda"))
    cpu = perturbation_curve(model.cpu(), x.cpu(), a.cpu(), mode="insertion", units=grid_units(x.shape, 3, 3))
    # float32 convolutions on two devices: agreement to float32 rounding of a short sum
    assert torch.allclose(gpu.scores, cpu.scores, rtol=1e-4, atol=1e-5)
