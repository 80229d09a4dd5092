"""Tests for captum_nave.attribution.attribute: the registry, targets, model safety, families.

* Every built-in method runs through the one entry point on every model family of the
  issue (torchvision ResNet18 / VGG11, timm EfficientNet-Lite0, timm ViTs with and
  without register tokens; ResNet50 marked slow) and returns float maps (N, 1, H, W)
  that are finite and not all zero, with the method's convergence delta where it has one.
* The user's model is left exactly as it was (weights, buffers, mode, requires_grad,
  .grad, hooks, modules), after success, after a failure inside the forward pass, and
  for a model in training mode (whose BatchNorm statistics would otherwise move).
* Targets: "auto" is the arg-max class, the int / list / tensor forms agree, bad
  targets and inputs raise errors naming the parameter.
* The registry accepts new methods and rejects malformed ones.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from torch import nn

from captum_nave.attribution import (
    AttributionResult,
    attribute,
    available_methods,
    register_method,
    unregister_method,
)

METHODS = ("gradcam", "ig", "lrp")
OPTIONS = {"gradcam": {}, "ig": {"n_steps": 8}, "lrp": {}}


def _tiny_vit(reg_tokens: int = 0, **kw) -> nn.Module:
    args = dict(
        pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
        num_classes=10, reg_tokens=reg_tokens,
    )
    args.update(kw)
    return timm.create_model("vit_small_patch16_224", **args)


FAMILIES = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), 64, "layer4", (2, 2)),
    "vgg11": (lambda: torchvision.models.vgg11(weights=None, num_classes=10), 64, "features.19", (4, 4)),
    "efficientnet_lite0": (
        lambda: timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10), 64, "bn2", (2, 2)
    ),
    "vit": (lambda: _tiny_vit(0), 32, "blocks.1.norm1", (4, 4)),
    "vit_reg4": (lambda: _tiny_vit(4), 32, "blocks.1.norm1", (4, 4)),
}


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            tuple(len(getattr(m, a)) for a in (
                "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
            ))
            for m in model.modules()
        ],
        "modules": [(n, type(m)) for n, m in model.named_modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"
    for key in ("training", "requires_grad", "hooks", "modules"):
        assert before[key] == after[key], f"{key} changed"
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None and g1 is None) or (g0 is not None and g1 is not None and torch.equal(g0, g1))


# --------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_method_on_every_family(family: str) -> None:
    build, size, layer, grid = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    before = snapshot(model)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    for method in METHODS:
        res = attribute(method, model, x, "auto", **OPTIONS[method])
        assert isinstance(res, AttributionResult) and res.method == method
        assert res.maps.shape == (2, 1, size, size) and res.maps.dtype == torch.float32
        assert torch.isfinite(res.maps).all()
        assert (res.maps.flatten(1).abs().sum(1) > 0).all(), f"{family}/{method}: an all-zero map"
        assert torch.equal(res.target, predicted)
        if method == "gradcam":
            assert res.options["layer"] == layer
            assert res.raw.shape == (2, 1) + grid and res.delta is None
            assert (res.maps >= 0).all()
        else:
            assert res.raw.shape == x.shape
            torch.testing.assert_close(res.maps, res.raw.sum(1, keepdim=True))
            assert res.delta is not None and res.delta.shape == (2,) and torch.isfinite(res.delta).all()
        assert_unchanged(model, before)


@pytest.mark.slow
def test_every_method_on_resnet50() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    before = snapshot(model)
    for method in METHODS:
        res = attribute(method, model, x, 3, **OPTIONS[method])
        assert res.maps.shape == (1, 1, 64, 64) and torch.isfinite(res.maps).all()
        assert res.maps.abs().sum() > 0
    assert res.delta is not None
    assert_unchanged(model, before)


def test_offline_default_model_every_method() -> None:
    """The main job's EfficientNet-Lite0 with its real ImageNet weights: a cat is a cat."""
    from captum_nave.models import load_model, preprocess, sample_images

    model, info = load_model()
    x = preprocess(sample_images()["chelsea"], info, size=96)
    before = snapshot(model)
    cams = {m: attribute(m, model, x, "auto", **OPTIONS[m]) for m in METHODS}
    assert 281 <= int(cams["gradcam"].target) <= 285  # an ImageNet cat class
    for m, res in cams.items():
        assert res.maps.shape == (1, 1, 96, 96) and torch.isfinite(res.maps).all() and res.maps.abs().sum() > 0, m
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- model safety
class _Boom(nn.Module):
    """Identity that raises in forward passes with gradients (the methods' own passes).

    The entry point's first pass (target resolution) runs under ``no_grad`` and
    succeeds, so the failure happens inside the method, with its hooks in place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed and torch.is_grad_enabled():
            raise RuntimeError("boom")
        return x


def _small_cnn(boom: bool = False) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(),
        conv2=nn.Conv2d(8, 8, 3, padding=1, stride=2), relu2=nn.ReLU(),
        boom=_Boom() if boom else nn.Identity(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(8, 4),
    ))


@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_failure_inside_forward(method: str) -> None:
    torch.manual_seed(0)
    model = _small_cnn(boom=True).eval()
    x = torch.randn(2, 3, 16, 16)
    before = snapshot(model)
    model.boom.armed = True
    # LRP works on a canonical copy and refuses the unknown module before propagating
    error, match = (TypeError, "no LRP rule") if method == "lrp" else (RuntimeError, "boom")
    with pytest.raises(error, match=match):
        attribute(method, model, x, 1, **({"layer": "relu2"} if method == "gradcam" else {}))
    model.boom.armed = False
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS)
def test_training_mode_model_is_restored(method: str) -> None:
    torch.manual_seed(0)
    model = _small_cnn().train()
    for p in model.conv1.parameters():
        p.requires_grad_(False)  # a partly frozen model keeps its flags
    x = torch.randn(2, 3, 16, 16)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        res = attribute(method, model, x, [0, 3], **({"layer": "relu2"} if method == "gradcam" else {}))
    assert torch.equal(res.target, torch.tensor([0, 3]))
    assert_unchanged(model, before)  # BatchNorm running statistics included


def test_existing_grads_are_kept() -> None:
    torch.manual_seed(0)
    model = _small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    model(x).sum().backward()  # the user has gradients in .grad
    before = snapshot(model)
    for method in METHODS:
        attribute(method, model, x, 2, **({"layer": "relu2"} if method == "gradcam" else {}))
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- targets
def test_target_forms_agree_and_auto_is_argmax() -> None:
    torch.manual_seed(0)
    model = _small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        pred = model(x).argmax(1)
    auto = attribute("ig", model, x, "auto", n_steps=4)
    none = attribute("ig", model, x, None, n_steps=4)
    explicit = attribute("ig", model, x, pred.tolist(), n_steps=4)
    assert torch.equal(auto.target, pred) and torch.equal(none.target, pred)
    torch.testing.assert_close(auto.maps, explicit.maps)
    as_int = attribute("gradcam", model, x, 2, layer="relu2")
    as_tensor = attribute("gradcam", model, x, torch.tensor(2), layer="relu2")
    as_list = attribute("gradcam", model, x, [2, 2, 2], layer="relu2")
    torch.testing.assert_close(as_int.maps, as_tensor.maps)
    torch.testing.assert_close(as_int.maps, as_list.maps)
    # a different class gives a different map: the target is really used
    other = attribute("gradcam", model, x, 3, layer="relu2")
    assert not torch.allclose(as_int.maps, other.maps)


@pytest.mark.parametrize(
    "target, error, match",
    [
        (4, ValueError, r"target: expected class indices in \[0, 3\].*got \[4, 4, 4\]"),
        (-1, ValueError, "target: expected class indices"),
        ([0, 1], ValueError, "target: expected 3 ints"),
        (torch.zeros(2, dtype=torch.long), ValueError, r"target: expected a tensor of shape \(\) or \(3,\)"),
        (torch.zeros(3), TypeError, "target: expected an integer tensor"),
        ("cat", ValueError, "target: expected 'auto'"),
        (True, TypeError, "target: .*bool"),
        (1.5, TypeError, "target: expected"),
    ],
)
def test_bad_targets(target, error, match) -> None:
    model = _small_cnn().eval()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        attribute("ig", model, torch.randn(3, 3, 16, 16), target)
    assert_unchanged(model, before)


def test_bad_inputs_and_method() -> None:
    model = _small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"method: expected one of 'gradcam', 'ig', 'lrp'.*got 'smoothgrad'"):
        attribute("smoothgrad", model, x, 0)
    with pytest.raises(TypeError, match="method: expected a method name"):
        attribute(3, model, x, 0)
    with pytest.raises(ValueError, match=r"inputs: expected a 4-D tensor.*\(3, 16, 16\)"):
        attribute("ig", model, x[0], 0)
    with pytest.raises(TypeError, match="inputs: expected a floating point tensor"):
        attribute("ig", model, x.long(), 0)
    with pytest.raises(TypeError, match="inputs: expected a Tensor"):
        attribute("ig", model, x.numpy(), 0)
    with pytest.raises(ValueError, match="inputs: expected a non-empty batch"):
        attribute("ig", model, x[:0], 0)
    with pytest.raises(TypeError, match="model: expected an nn.Module or a callable"):
        attribute("ig", "resnet", x, 0)
    with pytest.raises(ValueError, match=r"model: expected an output of shape \(N, K\)"):
        attribute("ig", nn.Conv2d(3, 2, 1).eval(), x, 0)
    with pytest.raises(ValueError, match="n_steps: expected an int >= 1, got 0"):
        attribute("ig", model, x, 0, n_steps=0)
    with pytest.raises(TypeError, match="return_convergence_delta"):
        attribute("lrp", model, x, 0, return_convergence_delta=False)


def test_method_names_are_case_insensitive() -> None:
    model = _small_cnn().eval()
    x = torch.randn(1, 3, 16, 16)
    assert attribute("IG", model, x, 0, n_steps=4).method == "ig"


# --------------------------------------------------------------------------- registry
def test_register_a_new_method() -> None:
    def input_x_gradient(model, inputs, target):
        x = inputs.detach().clone().requires_grad_(True)
        score = model(x).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(score, x)
        raw = (g * x).detach()
        return raw.sum(1, keepdim=True), raw, None

    assert set(METHODS) <= set(available_methods())
    register_method("input_x_gradient", input_x_gradient)
    try:
        assert "input_x_gradient" in available_methods()
        # a linear model: IG from a zero baseline equals input x gradient exactly
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
        ).eval()
        x = torch.randn(2, 3, 16, 16)
        res = attribute("input_x_gradient", model, x, 1)
        assert res.maps.shape == (2, 1, 16, 16) and res.delta is None
        ig = attribute("ig", model, x, 1, n_steps=2, method="riemann_trapezoid")
        torch.testing.assert_close(res.maps, ig.maps, rtol=1e-4, atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            register_method("input_x_gradient", input_x_gradient)
        register_method("input_x_gradient", input_x_gradient, overwrite=True)
    finally:
        unregister_method("input_x_gradient")
    assert "input_x_gradient" not in available_methods()


def test_register_rejects_bad_names_and_bad_outputs() -> None:
    with pytest.raises(ValueError, match="name: expected a non-empty identifier"):
        register_method("grad cam", lambda *a: None)
    with pytest.raises(TypeError, match="name: expected a str"):
        register_method(3, lambda *a: None)
    with pytest.raises(TypeError, match="fn: expected a callable"):
        register_method("x", 3)
    register_method("broken", lambda model, inputs, target: (inputs, inputs, None))
    try:
        with pytest.raises(ValueError, match=r"method 'broken' returned maps \(1, 3, 8, 8\); expected .*\(1, 1, 8, 8\)"):
            attribute("broken", _small_cnn().eval(), torch.randn(1, 3, 8, 8), 0)
    finally:
        unregister_method("broken")
