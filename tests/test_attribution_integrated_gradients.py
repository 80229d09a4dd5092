"""Tests for Integrated Gradients through ``attribute("ig", ...)``.

* Exactness: equals a float64 IG written out here (Gauss-Legendre nodes from numpy,
  gradients by autograd at each point of the straight path) for each baseline kind.
* Completeness on ResNet18: the attributions sum to ``F(x) - F(baseline)`` computed
  independently, the returned delta is exactly that difference, and it shrinks as the
  number of steps grows (blurred baseline, a non-trivial path).
* The trapezoidal rule is exact on a linear model (Captum 0.9's weights alone miss
  completeness by ``(n - 1) / n``, which the wrapper corrects).
* Baselines: blur equals scipy's Gaussian filter, uniform noise stays within each
  image's channel range and is reproducible, tensors broadcast; bad values raise errors
  that name the parameter. ``internal_batch_size`` does not change the result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from captum_nave.attribution import attribute
from captum_nave.attribution.integrated_gradients import gaussian_blur, make_baseline


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.Tanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4),
    ).double().eval()


def _reference_ig(model: nn.Module, x: torch.Tensor, b: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    total = torch.zeros_like(x)
    for t, w in zip(nodes, weights):
        alpha, weight = (t + 1.0) / 2.0, w / 2.0
        point = (b + alpha * (x - b)).detach().requires_grad_(True)
        score = model(point).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(score, point)
        total += weight * g
    return (x - b) * total


@pytest.mark.parametrize("baselines", ["zeros", "blur", "uniform", 0.5, "tensor"])
def test_matches_float64_reference(baselines) -> None:
    torch.manual_seed(0)
    model = _tiny_net()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    target = torch.tensor([1, 3])
    if baselines == "tensor":
        baselines = torch.randn(3, 12, 12, dtype=torch.float64)  # broadcast over the batch
    b = make_baseline(x, baselines, random_state=7)
    res = attribute("ig", model, x, target, baselines=baselines, n_steps=20, random_state=7)
    expected = _reference_ig(model, x, b, target, 20)
    # Captum's quadrature nodes carry ~1e-11 rounding; any modelling error is far larger
    torch.testing.assert_close(res.raw, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(res.maps, expected.sum(1, keepdim=True), rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        gap = (model(x) - model(b)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(res.delta, expected.sum((1, 2, 3)) - gap, rtol=1e-6, atol=1e-9)


def test_completeness_on_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)[1:]
    b = make_baseline(x, "blur")
    with torch.no_grad():
        gap = (model(x) - model(b))[:, 3]
    coarse = attribute("ig", model, x, 3, baselines="blur", n_steps=4)
    fine = attribute("ig", model, x, 3, baselines="blur", n_steps=48)
    for res in (coarse, fine):
        # the delta is what it claims: sum of attributions minus F(x) - F(b)
        torch.testing.assert_close(res.delta, res.raw.sum((1, 2, 3)) - gap, rtol=1e-9, atol=1e-12)
    assert (gap.abs() > 0.05).all()  # a non-trivial difference to explain
    # measured: F(x) - F(b) = 0.136; |delta| = 1.2e-2 with 4 steps, 7e-4 with 48
    assert (fine.delta.abs() < 0.02 * gap.abs()).all(), (fine.delta, gap)
    assert (fine.delta.abs() < coarse.delta.abs() / 4).all()


def test_trapezoid_rule_is_exact_on_a_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    model = model.double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xx)[:, 2].sum(), xx)
    for n in (2, 5, 50):
        res = attribute("ig", model, x, 2, n_steps=n, method="riemann_trapezoid")
        # Captum's step sizes are float32 values: agreement to ~1e-8, not 4/5 or 1/2
        torch.testing.assert_close(res.raw, g * x, rtol=1e-7, atol=1e-9)
        assert res.delta.abs().max() < 1e-7
    from captum.attr import IntegratedGradients

    raw_captum = IntegratedGradients(model).attribute(x, target=2, n_steps=5, method="riemann_trapezoid")
    torch.testing.assert_close(raw_captum, g * x * 4 / 5)  # why the wrapper rescales


def test_internal_batch_size_and_multiply_by_inputs() -> None:
    torch.manual_seed(0)
    model = _tiny_net()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    whole = attribute("ig", model, x, 0, n_steps=10)
    chunked = attribute("ig", model, x, 0, n_steps=10, internal_batch_size=4)
    torch.testing.assert_close(chunked.raw, whole.raw, rtol=1e-10, atol=1e-12)
    local = attribute("ig", model, x, 0, n_steps=10, multiply_by_inputs=False)
    torch.testing.assert_close(local.raw * x, whole.raw, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- baselines
def test_blur_baseline_equals_scipy_gaussian_filter() -> None:
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 17, dtype=torch.float64)
    for sigma in (1.0, 1.5, 2.0):
        ours = gaussian_blur(x, sigma).numpy()
        # torch "reflect" padding is scipy's "mirror"; radius ceil(3 sigma) = int(3 sigma + 0.5) here
        ref = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    default = make_baseline(x, "blur")
    torch.testing.assert_close(default, gaussian_blur(x, 2.0))  # max(H, W) / 10
    # a very wide blur on a small image keeps working (radius capped by the image)
    wide = gaussian_blur(x, 50.0)
    assert torch.isfinite(wide).all() and wide.std() < x.std() / 3


def test_uniform_baseline_range_and_seed() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    a = make_baseline(x, "uniform", random_state=3)
    b = make_baseline(x, "uniform", random_state=3)
    c = make_baseline(x, "uniform", random_state=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert ((a >= lo) & (a <= hi)).all()
    # it fills the range, per image and channel
    assert ((a.amax((2, 3), keepdim=True) - a.amin((2, 3), keepdim=True)) > 0.9 * (hi - lo)).all()
    state = torch.get_rng_state()
    make_baseline(x, "uniform", random_state=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched


def test_bad_baselines_and_options() -> None:
    model = _tiny_net()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="baselines: expected 'zeros', 'blur', 'uniform'.*got 'black'"):
        attribute("ig", model, x, 0, baselines="black")
    with pytest.raises(ValueError, match=r"baselines: expected a tensor broadcastable to .*\(2, 3, 12, 12\).*\(3, 5, 5\)"):
        attribute("ig", model, x, 0, baselines=torch.zeros(3, 5, 5))
    with pytest.raises(TypeError, match="baselines: .*got bool"):
        attribute("ig", model, x, 0, baselines=True)
    with pytest.raises(TypeError, match="baselines: .*got list"):
        attribute("ig", model, x, 0, baselines=[0.0])
    with pytest.raises(ValueError, match="blur_sigma: expected a finite number > 0, got -1"):
        attribute("ig", model, x, 0, baselines="blur", blur_sigma=-1)
    with pytest.raises(ValueError, match="method: expected one of gausslegendre"):
        attribute("ig", model, x, 0, method="simpson")
    with pytest.raises(ValueError, match="internal_batch_size: expected None or an int >= 1, got 0"):
        attribute("ig", model, x, 0, internal_batch_size=0)
    with pytest.raises(TypeError, match="random_state: expected an int or None"):
        attribute("ig", model, x, 0, baselines="uniform", random_state="seed")
