"""Tests for Grad-CAM (captum_nave.attribution.gradcam) through ``attribute("gradcam", ...)``.

* Known answers: on a model whose head is global average pooling + linear, Grad-CAM of
  the input has the closed form ``relu(sum_c W[t, c] x_c) / (H W)``; on a tiny conv net
  it equals a float64 re-implementation (activation and its gradient computed by hand
  from the weights, channel weights = mean gradient, ReLU, bilinear upsampling).
* ViTs: the default layer for class-token models (the last block's ``norm1``) gives a
  non-zero map equal to a float64 reference that reads the token layout from timm
  itself; the last block's output would give an all-zero map (why it is not the
  default); the grid is the patch grid, also non-square; huge values planted in the
  prefix tokens (class + 4 registers) of an average-pooled ViT's last block change
  neither the logits nor the map, and a wrong prefix count is refused.
* Default layers per family and the generic fallback; bad layers raise errors naming
  the parameter.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from captum_nave.attribution import attribute, default_gradcam_layer


def _tiny_vit(reg_tokens: int = 0, **kw) -> nn.Module:
    args = dict(
        pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
        num_classes=6, reg_tokens=reg_tokens,
    )
    args.update(kw)
    return timm.create_model("vit_small_patch16_224", **args).eval()


# --------------------------------------------------------------------------- known answers
def test_closed_form_on_gap_linear_head() -> None:
    """Layer = the input itself, head = GAP + linear: alpha_c = W[t, c] / (H W)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        feat=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(3, 2),
    )).double().eval()
    x = torch.randn(3, 3, 5, 7, dtype=torch.float64)
    target = torch.tensor([0, 1, 1])
    w = model.fc.weight.detach()
    expected = torch.einsum("nc,nchw->nhw", w[target], x)[:, None] / (5 * 7)
    res = attribute("gradcam", model, x, target, layer="feat")
    torch.testing.assert_close(res.raw, expected.clamp(min=0), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(res.maps, expected.clamp(min=0), rtol=1e-12, atol=1e-15)
    assert (expected < 0).any() and (expected > 0).any()  # the ReLU matters here
    signed = attribute("gradcam", model, x, target, layer="feat", relu_attributions=False)
    torch.testing.assert_close(signed.raw, expected, rtol=1e-12, atol=1e-15)


def test_matches_float64_hand_computation_on_tiny_cnn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, stride=2, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(4, 5, 1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(5, 3),
    )).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([2, 0])

    # reference, written out from the weights: A = relu(conv1 x); S = fc(gap(relu(conv2 A)))
    c1, c2, fc = model.conv1, model.conv2, model.fc
    a = F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1).clamp(min=0).detach()  # (2, 4, 4, 4)
    z2 = torch.einsum("oc,nchw->nohw", c2.weight[:, :, 0, 0], a) + c2.bias[None, :, None, None]
    # dS/dA by the chain rule: dS/dz2 = W_fc[t, o] / 16 where z2 > 0; dA = sum_o W2[o, c] dz2[o]
    dz2 = fc.weight[target][:, :, None, None] / 16.0 * (z2 > 0)
    grad_a = torch.einsum("oc,nohw->nchw", c2.weight[:, :, 0, 0], dz2)
    alpha = grad_a.mean(dim=(2, 3))
    cam = torch.einsum("nc,nchw->nhw", alpha, a).clamp(min=0)[:, None].detach()
    expected_maps = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)

    res = attribute("gradcam", model, x, target, layer="relu1")
    assert res.raw.shape == (2, 1, 4, 4) and res.options["grid"] == (4, 4)
    torch.testing.assert_close(res.raw, cam, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.maps, expected_maps, rtol=1e-12, atol=1e-14)
    assert (cam > 0).any()
    # the autograd gradient agrees with the hand-written chain rule
    a_leaf = a.clone().requires_grad_(True)
    s = model.fc(model.flat(model.pool(model.relu2(model.conv2(a_leaf)))))
    (g,) = torch.autograd.grad(s.gather(1, target[:, None]).sum(), a_leaf)
    torch.testing.assert_close(g, grad_a, rtol=1e-12, atol=1e-15)


def test_upsampling_mode_option() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 96, 96)
    nearest = attribute("gradcam", model, x, 1, interpolate_mode="nearest")
    assert nearest.raw.shape == (1, 1, 3, 3)
    torch.testing.assert_close(nearest.maps, nearest.raw.repeat_interleave(32, 2).repeat_interleave(32, 3))
    with pytest.raises(ValueError, match="interpolate_mode: expected one of .* got 'cubic'"):
        attribute("gradcam", model, x, 1, interpolate_mode="cubic")
    with pytest.raises(TypeError, match="relu_attributions: expected a bool"):
        attribute("gradcam", model, x, 1, relu_attributions="yes")


# --------------------------------------------------------------------------- ViTs
def _reference_vit_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Float64 Grad-CAM on ``module``'s output tokens, the layout read from timm."""
    store = {}

    def hook(mod, args, out):
        out.retain_grad()
        store["tokens"] = out

    h = module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        h.remove()
    logits.gather(1, target[:, None]).sum().backward()
    tokens, grads = store["tokens"], store["tokens"].grad
    model.zero_grad(set_to_none=True)
    p = model.num_prefix_tokens
    ph, pw = model.patch_embed.patch_size
    gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
    n, _, c = tokens.shape
    act = tokens[:, p:].reshape(n, gh, gw, c)
    grd = grads[:, p:].reshape(n, gh, gw, c)
    alpha = grd.mean(dim=(1, 2))
    return torch.einsum("nc,nhwc->nhw", alpha, act).clamp(min=0)[:, None].detach()


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_vit_default_layer_matches_float64_reference(reg_tokens: int) -> None:
    torch.manual_seed(0)
    model = _tiny_vit(reg_tokens).double()
    assert model.num_prefix_tokens == 1 + reg_tokens
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 4])
    res = attribute("gradcam", model, x, target)
    assert res.options["layer"] == "blocks.1.norm1"
    assert res.options["num_prefix_tokens"] == 1 + reg_tokens
    assert res.raw.shape == (2, 1, 4, 4) and res.options["grid"] == (4, 4)
    expected = _reference_vit_gradcam(model, x, target, model.blocks[1].norm1)
    torch.testing.assert_close(res.raw, expected, rtol=1e-10, atol=1e-14)
    assert (res.raw.flatten(1) > 0).sum(1).min() >= 2  # non-zero, not a single hot patch
    assert all(p.grad is None for p in model.parameters())


def test_vit_last_block_output_gives_a_zero_map_for_class_token_pooling() -> None:
    """Why the default is blocks[-1].norm1: the head only reads the class token."""
    torch.manual_seed(0)
    model = _tiny_vit(4).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    last = attribute("gradcam", model, x, 2, layer="blocks.1", relu_attributions=False)
    assert torch.count_nonzero(last.raw) == 0
    default = attribute("gradcam", model, x, 2, relu_attributions=False)
    assert torch.count_nonzero(default.raw) == default.raw.numel()


def test_vit_non_square_input_grid() -> None:
    torch.manual_seed(0)
    model = _tiny_vit(4, dynamic_img_size=True).double()
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    res = attribute("gradcam", model, x, 0)
    assert res.raw.shape == (1, 1, 4, 6) and res.maps.shape == (1, 1, 32, 48)
    expected = _reference_vit_gradcam(model, x, torch.tensor([0]), model.blocks[1].norm1)
    torch.testing.assert_close(res.raw, expected, rtol=1e-10, atol=1e-14)


def test_vit_layer_input_equals_previous_block_output() -> None:
    torch.manual_seed(0)
    model = _tiny_vit(0, depth=3).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    via_input = attribute("gradcam", model, x, 3, layer="blocks.2", attribute_to_layer_input=True)
    via_output = attribute("gradcam", model, x, 3, layer="blocks.1")
    torch.testing.assert_close(via_input.raw, via_output.raw, rtol=1e-12, atol=1e-14)
    assert via_input.raw.abs().sum() > 0


def test_vit_prefix_tokens_do_not_enter_the_map() -> None:
    """Average-pooled ViT with a class token and 4 registers: its head ignores the prefix
    tokens of the last block, so planting huge values there must change nothing."""
    torch.manual_seed(0)
    model = _tiny_vit(4, global_pool="avg").double()
    assert model.num_prefix_tokens == 5
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert default_gradcam_layer(model) == "blocks.1"
    clean = attribute("gradcam", model, x, [0, 5])

    def plant(mod, args, out):
        out = out.clone()
        out[:, :5] = 1e6 * torch.randn_like(out[:, :5])
        return out

    h = model.blocks[1].register_forward_hook(plant)
    try:
        with torch.no_grad():
            logits_planted = model(x)
        planted = attribute("gradcam", model, x, [0, 5])
    finally:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(logits_planted, model(x), rtol=1e-12, atol=1e-12)
    assert clean.options["layer"] == "blocks.1" and clean.raw.shape == (2, 1, 4, 4)
    assert clean.raw.abs().sum() > 0
    torch.testing.assert_close(planted.raw, clean.raw, rtol=1e-10, atol=1e-14)
    # a wrong prefix count is refused rather than mixing registers into the grid
    with pytest.raises(ValueError, match="patch tokens do not form a grid"):
        attribute("gradcam", model, x, 0, num_prefix_tokens=1)


def test_torchvision_vit_class_token() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises the head to zero
    x = torch.randn(2, 3, 32, 32)
    res = attribute("gradcam", model, x, "auto", relu_attributions=False)
    assert res.options["layer"] == "encoder.layers.encoder_layer_1.ln_1"  # its named_modules() path
    assert res.options["num_prefix_tokens"] == 1
    assert res.raw.shape == (2, 1, 4, 4) and torch.count_nonzero(res.raw) == res.raw.numel()


# --------------------------------------------------------------------------- default layers
def test_default_layers_per_family() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    assert default_gradcam_layer(timm.create_model("resnet18", pretrained=False, num_classes=3)) == "layer4"
    assert default_gradcam_layer(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)) == "bn2"
    assert default_gradcam_layer(timm.create_model("mobilenetv2_050", pretrained=False, num_classes=3)) == "bn2"
    assert default_gradcam_layer(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)) == "blocks.5"
    assert default_gradcam_layer(torchvision.models.efficientnet_b0(weights=None, num_classes=3)) == "features.8"
    assert default_gradcam_layer(torchvision.models.mobilenet_v3_small(weights=None, num_classes=3)) == "features.12"
    assert default_gradcam_layer(
        timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    ) == "stages.3"
    vgg_like = nn.Module()
    vgg_like.features = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2)
    )
    assert default_gradcam_layer(vgg_like) == "features.4"
    assert default_gradcam_layer(_tiny_vit(0)) == "blocks.1.norm1"
    assert default_gradcam_layer(_tiny_vit(0, global_pool="map")) == "blocks.1"
    tv_vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    assert default_gradcam_layer(tv_vit) == "encoder.layers.encoder_layer_1.ln_1"


def test_generic_fallback_is_the_last_spatial_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    assert default_gradcam_layer(model, x) == "3"  # the pool's 1x1 output is not a map
    res = attribute("gradcam", model, x, 1)
    assert res.options["layer"] == "3" and res.raw.shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="layer: no default Grad-CAM layer"):
        default_gradcam_layer(model)  # without inputs the generic rule cannot run


# --------------------------------------------------------------------------- bad layers
def test_bad_layers_are_refused_with_clear_messages() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    model.unused = nn.Conv2d(3, 3, 1)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"layer: 'layer4.1.relu' runs more than once"):
        attribute("gradcam", model, x, 0, layer="layer4.1.relu")
    with pytest.raises(ValueError, match=r"layer: 'fc' gives a tensor of shape \(1, 4\)"):
        attribute("gradcam", model, x, 0, layer="fc")
    with pytest.raises(ValueError, match=r"layer: 'unused' did not run"):
        attribute("gradcam", model, x, 0, layer="unused")
    with pytest.raises(ValueError, match="no layer named 'layer5'.*closest valid names: layer"):
        attribute("gradcam", model, x, 0, layer="layer5")
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.modules())

    class TokenNet(nn.Module):  # tokens, but nothing says how many are prefix tokens
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            return self.head(self.mix(t).mean(1))

    with pytest.raises(ValueError, match="num_prefix_tokens: layer 'mix' gives tokens"):
        attribute("gradcam", TokenNet().eval(), torch.randn(1, 3, 16, 16), 0, layer="mix")
    res = attribute("gradcam", TokenNet().eval(), torch.randn(1, 3, 16, 16), 0, layer="mix", num_prefix_tokens=0)
    assert res.raw.shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="num_prefix_tokens: expected an int >= 0 or None, got -1"):
        attribute("gradcam", TokenNet().eval(), torch.randn(1, 3, 16, 16), 0, layer="mix", num_prefix_tokens=-1)


def test_integer_target_costs_no_extra_forward_pass() -> None:
    """An explicit class needs no prediction: one forward pass, as Captum's LayerGradCam alone.

    The forward passes are counted with a hook on the model; ``"auto"`` needs one more (the
    prediction). The class range is still checked, on the method's own forward pass.
    """
    from captum.attr import LayerGradCam

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    calls: list = []
    model.register_forward_hook(lambda *_: calls.append(1))
    LayerGradCam(model, model.layer4).attribute(x, target=3)
    captum_calls, calls[:] = len(calls), []
    res = attribute("gradcam", model, x, target=3)
    assert captum_calls == 1 and len(calls) == 1
    assert res.target.tolist() == [3, 3]
    calls[:] = []
    attribute("gradcam", model, x, target=[3, 4])
    assert len(calls) == 1
    calls[:] = []
    attribute("gradcam", model, x, target="auto")
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 9\] \(the model has 10 outputs\), got \[10\]"):
        attribute("gradcam", model, x, target=[3, 10])
    with pytest.raises(ValueError, match=r"target: expected class indices >= 0, got \[-1, -1\]"):
        attribute("gradcam", model, x, target=-1)
    assert not model._forward_hooks.keys() - {min(model._forward_hooks)}  # only the counting hook is left
