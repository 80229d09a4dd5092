"""LRP composites, rule maps and the relative stabiliser (captum_nave.attribution.lrp).

What is checked, and why each check can fail:

* zennit agreement: every named CNN composite gives the relevance map of the
  zennit composite of the same name (``EpsilonPlus``, ``EpsilonPlusFlat``,
  ``EpsilonGammaBox``, ``EpsilonAlpha2Beta1``, and epsilon on all layers) on
  ResNet18 and VGG16-BN (zennit's own canonizers) and on EfficientNet-Lite0 with
  its real ImageNet weights (zennit run on our canonical copy, whose residual
  additions are handed to zennit's ``Sum`` layer), in float64 and in both
  stabiliser modes (zennit ``Stabilizer(norm_scale=True)`` for "relative").
* Transformers, which zennit does not cover: a timm ViT against a float64
  re-implementation of the CP-LRP and AttnLRP rules written out in this file,
  with the first-layer rules (flat, z+, z^B) of the composites on its patch
  embedding.
* A two-layer net whose relevance is computed by hand in the comments for the
  z+, flat, gamma, z^B and alpha-beta rules (negative inputs included).
* The relative stabiliser keeps conservation within 0.1 % on a LayerScale ViT
  whose logits are of order 1e-3; the absolute one loses most of the relevance.
* Rule maps by name pattern and by type merged over a composite: precedence,
  original module names, the same result as zennit's ``NameMapComposite``, and
  clear errors.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from captum_nave.attribution.lrp import (
    COMPOSITES,
    Add,
    Epsilon,
    Gamma,
    ZPlus,
    canonize,
    lrp_attribute,
    lrp_rules,
    normalisation_bounds,
)

zennit = pytest.importorskip("zennit", reason="zennit is a test dependency (pip install .[test])")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    MixedComposite,
    NameMapComposite,
    layer_map_base,
)
from zennit.core import Stabilizer as ZStabilizer  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import Epsilon as ZEpsilon  # noqa: E402
from zennit.rules import Gamma as ZGamma  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Convolution  # noqa: E402

from lrp_reference import eps_step, stab  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CNN_COMPOSITES = ["epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1"]


# --------------------------------------------------------------------------- #
# zennit side
# --------------------------------------------------------------------------- #


class _StackedAdd(nn.Module):
    """Our two-input ``Add`` as zennit's ``Sum`` of stacked inputs (zennit hooks take one input)."""

    def __init__(self) -> None:
        super().__init__()
        self.sum = Sum()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.sum(torch.stack([a, b], dim=-1))


def _zennit_composite(name: str, stab, bounds, canonizers):
    kw = dict(epsilon=stab, stabilizer=stab, canonizers=canonizers)
    if name == "epsilon":  # zennit has no named all-epsilon composite: its base map + Epsilon
        layer_map = layer_map_base(stab) + [(Convolution, ZEpsilon(stab)), (nn.Linear, ZEpsilon(stab))]
        return LayerMapComposite(layer_map, canonizers=canonizers)
    if name == "epsilon-plus":
        return EpsilonPlus(**kw)
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(**kw)
    if name == "epsilon-gamma-box":
        return EpsilonGammaBox(low=bounds[0], high=bounds[1], **kw)
    if name == "epsilon-alpha2-beta1":
        return EpsilonAlpha2Beta1(**kw)
    raise KeyError(name)


def _zennit_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite) -> torch.Tensor:
    """zennit's relevance of the target logits (output relevance = the logit, as ours)."""
    model = copy.deepcopy(model)
    with Gradient(model=model, composite=composite) as attributor:
        logits = model(x)
        start = torch.zeros_like(logits)
        start[torch.arange(len(target)), target] = logits.detach()[torch.arange(len(target)), target]
        _, rel = attributor(x, start)
    return rel.detach()


def _agreement(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(min over images of the Pearson correlation, max |ours - ref| / max |ref|)."""
    a, b = ours.double().flatten(1).numpy(), ref.double().flatten(1).numpy()
    pearson = min(float(np.corrcoef(a[i], b[i])[0, 1]) for i in range(len(a)))
    err = float(np.max(np.abs(a - b).max(1) / np.abs(b).max(1)))
    return pearson, err


def _bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, and eps = 0.

    zennit's ``MergeBatchNorm`` folds a BatchNorm into the convolution and leaves
    the BatchNorm computing ``x / sqrt(1 + eps)``: a (1 - eps / 2) scale per layer
    that is not in the model (ours folds exactly).  With ``eps = 0`` both
    canonicalisations compute the model itself, so the maps must agree to float64
    rounding.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.eps = 0.0
    return model


def _images(n: int, size: int, mean, std, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return (x01 - m) / s


@pytest.fixture(scope="module")
def zennit_models(lite0):
    """(our model, zennit's model, zennit canonizer or None, mean, std) in float64."""
    torch.manual_seed(0)
    resnet = _bn_stats(torchvision.models.resnet18(weights=None)).eval().double()
    vgg = torchvision.models.vgg16_bn(weights=None, num_classes=10)
    # all 13 conv + BatchNorm + ReLU layers and the max poolings of VGG16-BN; the classifier
    # keeps its layer types (linear, ReLU, dropout) but not its 120 M parameters, which would
    # make this float64 test slow without testing anything more
    vgg.avgpool = nn.AdaptiveAvgPool2d(1)
    vgg.classifier = nn.Sequential(
        nn.Linear(512, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, 10),
    )
    vgg = _bn_stats(vgg, seed=1).eval().double()
    model, info = lite0
    ours = canonize(model).double()  # real weights, BatchNorm folded exactly
    theirs = copy.deepcopy(ours)
    for m in list(theirs.modules()):
        for key, child in list(m._modules.items()):
            if isinstance(child, Add):
                m._modules[key] = _StackedAdd()
    return {
        "resnet18": (resnet, resnet, ResNetCanonizer, *IMAGENET),
        "vgg16_bn": (vgg, vgg, VGGCanonizer, *IMAGENET),
        "efficientnet_lite0": (ours, theirs, None, info["mean"], info["std"]),
    }


#: every composite on every family with the default (relative) stabiliser; the absolute one
#: (zennit's default) on ResNet18
ZENNIT_CASES = [
    (family, composite, "relative")
    for family in ("resnet18", "vgg16_bn", "efficientnet_lite0")
    for composite in CNN_COMPOSITES
] + [("resnet18", composite, "absolute") for composite in CNN_COMPOSITES]


@pytest.mark.parametrize("family, composite, mode", ZENNIT_CASES)
def test_cnn_composites_equal_zennit(zennit_models, family: str, composite: str, mode: str) -> None:
    ours_model, z_model, canonizer, mean, std = zennit_models[family]
    x = _images(2 if family == "resnet18" else 1, 32, mean, std)  # float64 convolutions are slow
    with torch.no_grad():
        target = ours_model(x).argmax(1)
    bounds = tuple(torch.tensor(b, dtype=torch.float64).view(1, 3, 1, 1) for b in normalisation_bounds(mean, std))
    stab = ZStabilizer(1e-6, norm_scale=True) if mode == "relative" else 1e-6
    z_comp = _zennit_composite(composite, stab, bounds, [canonizer()] if canonizer else None)
    ref = _zennit_relevance(z_model, x, target, z_comp)
    ours = lrp_attribute(
        ours_model, x, target, composite=composite, input_bounds=bounds, stabilizer_mode=mode
    )
    assert ref.abs().sum() > 0 and torch.isfinite(ours).all()
    pearson, err = _agreement(ours, ref)
    print(f"{family} {composite} {mode}: Pearson {pearson:.12f}, max rel. error {err:.2e}")
    # float64 on both sides: the only difference is the order of float64 operations
    # (u = 1.1e-16), amplified where an epsilon-rule denominator is close to zero
    # (measured at most 7e-12 for "epsilon", 4e-15 for the other rules): 1e-9 leaves
    # a margin of 100 over the worst case.
    assert err < 1e-9, err
    assert pearson > 1 - 1e-12


def test_zennit_comparison_is_sensitive(zennit_models) -> None:
    """Control: two composites differ far beyond the tolerance of the comparison above."""
    model, _, canonizer, mean, std = zennit_models["resnet18"]
    x = _images(1, 32, mean, std)
    ref = _zennit_relevance(model, x, torch.tensor([1]), _zennit_composite("epsilon-plus", 1e-6, None, [canonizer()]))
    ours = lrp_attribute(model, x, 1, composite="epsilon-plus-flat", stabilizer_mode="absolute")
    assert _agreement(ours, ref)[1] > 1e-2


def test_name_map_equals_zennit_name_map_composite(zennit_models) -> None:
    """Rules by module name over a composite, as zennit's NameMapComposite in a MixedComposite."""
    model, _, canonizer, mean, std = zennit_models["resnet18"]
    x = _images(1, 32, mean, std)
    target = torch.tensor([7])
    names = tuple(n for n, m in model.named_modules() if n.startswith("layer4.") and isinstance(m, nn.Conv2d))
    assert len(names) == 5  # conv1/conv2 of two blocks and the downsample convolution
    # (zennit names the modules of the model itself: its canonizers rename nothing)
    z_comp = MixedComposite(
        [NameMapComposite([(names, ZGamma(gamma=0.5, stabilizer=1e-6))]), EpsilonPlusFlat(epsilon=1e-6, stabilizer=1e-6)],
        canonizers=[canonizer()],
    )
    ref = _zennit_relevance(model, x, target, z_comp)
    ours = lrp_attribute(
        model, x, target, composite="epsilon-plus-flat", stabilizer_mode="absolute",
        name_map={"layer4.*": Gamma(0.5, 1e-6, relative=False)},
    )
    assert _agreement(ours, ref)[1] < 1e-9
    plain = lrp_attribute(model, x, target, composite="epsilon-plus-flat", stabilizer_mode="absolute")
    assert _agreement(plain, ref)[1] > 1e-3  # the name map changed the map


# --------------------------------------------------------------------------- #
# a two-layer net, relevance by hand
# --------------------------------------------------------------------------- #


def _two_layer_net() -> tuple[nn.Module, torch.Tensor]:
    """x = (1, -2, 0.5) -> 1x1 conv W -> ReLU -> linear v, no biases.

    W = [[1, -1, 2], [2, 1, 1]]: contributions x_i W_ji are (1, 2, 1) for neuron 1
    (z1 = 4) and (2, -2, 0.5) for neuron 2 (z2 = 0.5); v = (1, 2): out = 4 + 1 = 5.
    The dense layer (epsilon) passes R_a = a * v = (4, 1) to the ReLU outputs.
    """
    net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [2.0, 1.0, 1.0]]).view(2, 3, 1, 1))
        net[3].weight.copy_(torch.tensor([[1.0, 2.0]]))
    return net.eval(), torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)


HAND = {
    # epsilon: R_i = sum_j x_i W_ji R_j / z_j = (1, 2, 1) + (2, -2, 0.5) * 1 / 0.5
    "epsilon": ({"composite": "epsilon"}, [1 + 4, 2 - 4, 1 + 1]),
    # z+ (generalised): neuron 1 has only positive contributions (1, 2, 1) -> R = (1, 2, 1);
    # neuron 2: positive ones are x1 W1 = 2 and x3 W3 = 0.5 (x2 W2 = -2 < 0, and x2 < 0
    # meets no negative weight), so R = 1 * (2, 0, 0.5) / 2.5 = (0.8, 0, 0.2)
    "zplus": ({"composite": "epsilon-plus"}, [1.8, 2.0, 1.2]),
    # flat: weights and inputs set to one, so each neuron spreads its relevance equally
    # over its 3 inputs: (4 + 1) / 3 each
    "flat": ({"composite": "epsilon-plus-flat"}, [5 / 3, 5 / 3, 5 / 3]),
    # gamma = 0.25, outputs > 0: x+ (W + g W+) + x- (W + g W-).
    # neuron 1: (1 * 1.25, -2 * -1.25, 0.5 * 2.5) = (1.25, 2.5, 1.25), z = 5, R = 4 -> (1, 2, 1)
    # neuron 2: (1 * 2.5, -2 * 1, 0.5 * 1.25) = (2.5, -2, 0.625), z = 1.125, R = 1
    "gamma": (
        {"composite": "epsilon", "type_map": {nn.Conv2d: Gamma(0.25)}},
        [1 + 2.5 / 1.125, 2 - 2 / 1.125, 1 + 0.625 / 1.125],
    ),
    # z^B with low = -3, high = 3: R_i = (x_i W_ji - l W+_ji - h W-_ji) R_j / z_j,
    # z_j = sum of those. Neuron 1: (1 + 3, 2 + 3, 1 + 6) = (4, 5, 7), z = 16, R = 4 -> /4;
    # neuron 2: (2 + 6, -2 + 3, 0.5 + 3) = (8, 1, 3.5), z = 12.5, R = 1
    "zbox": (
        {"composite": "epsilon-gamma-box", "input_bounds": (-3.0, 3.0)},
        [1 + 8 / 12.5, 1.25 + 1 / 12.5, 1.75 + 3.5 / 12.5],
    ),
    # alpha = 2, beta = 1: neuron 1 has no negative part: 2 * (1, 2, 1) = (2, 4, 2);
    # neuron 2: 2 * (0.8, 0, 0.2) - 1 * (0, -2, 0) * 1 / (-2) = (1.6, -1, 0.4).
    # Sums to 9, not 5: alpha-beta conserves only where both parts are non-zero.
    "alpha2-beta1": ({"composite": "epsilon-alpha2-beta1"}, [3.6, 3.0, 2.4]),
}


@pytest.mark.parametrize("rule", sorted(HAND))
def test_rules_on_a_hand_computed_net(rule: str) -> None:
    net, x = _two_layer_net()
    options, expected = HAND[rule]
    rel, delta = lrp_attribute(net, x, 0, return_convergence_delta=True, **options)
    expected_t = torch.tensor(expected, dtype=torch.float32).view(1, 3, 1, 1)
    # the only approximation is the stabiliser: 1e-6 relative to the layer's RMS
    torch.testing.assert_close(rel, expected_t, rtol=1e-5, atol=1e-5)
    if rule != "alpha2-beta1":  # all the others conserve (no biases)
        assert abs(float(delta)) < 1e-4


def test_default_composite_is_epsilon_plus_flat_for_cnns_and_cp_lrp_for_vits() -> None:
    net, x = _two_layer_net()
    torch.testing.assert_close(lrp_attribute(net, x, 0), lrp_attribute(net, x, 0, composite="epsilon-plus-flat"))
    vit = _tiny_vit()
    xv = torch.randn(1, 3, 8, 8)
    plan = {row[1]: row[3] for row in lrp_rules(vit, xv)}
    assert type(plan["blocks.0.attn.scores"]).__name__ == "Constant"
    assert type(plan["patch_embed.proj"]).__name__ == "Epsilon"
    torch.testing.assert_close(lrp_attribute(vit, xv, 1), lrp_attribute(vit, xv, 1, composite="cp-lrp"))


# --------------------------------------------------------------------------- #
# transformers: float64 re-implementation of CP-LRP and AttnLRP
# --------------------------------------------------------------------------- #


def _tiny_vit(**kw) -> nn.Module:
    args = dict(
        pretrained=False, img_size=8, patch_size=4, depth=1, embed_dim=8, num_heads=2, mlp_ratio=2.0,
        num_classes=3, reg_tokens=2,
    )
    args.update(kw)
    torch.manual_seed(4)
    vit = timm.create_model("vit_small_patch16_224", **args).eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() == 1 or name in ("pos_embed", "cls_token", "reg_token"):
                p.copy_(0.3 * torch.randn_like(p))
        vit.blocks[0].attn.qkv.weight.mul_(4.0)  # sharp attention: the q/k path matters
    return vit


def _first_layer(rule: str, w, b, x, r, eps: float, bounds) -> torch.Tensor:
    """Rules of the patch embedding (stride = kernel = 4, no padding), float64."""
    conv = lambda t, wt, bt=None: F.conv2d(t, wt, bt, stride=4)  # noqa: E731

    def grad(inp, wt, s):
        inp = inp.detach().requires_grad_(True)
        (c,) = torch.autograd.grad(conv(inp, wt), inp, grad_outputs=s)
        return c

    if rule == "epsilon":
        return eps_step(lambda t: conv(t, w, b), x, r, eps)
    if rule == "flat":
        ones = torch.ones_like(x)
        return grad(ones, torch.ones_like(w), r / stab(conv(ones, torch.ones_like(w)), eps))
    if rule == "zplus":
        wp, wn, xp, xn = w.clamp(min=0), w.clamp(max=0), x.clamp(min=0), x.clamp(max=0)
        s = r / stab(conv(xp, wp, b.clamp(min=0)) + conv(xn, wn), eps)
        return xp * grad(xp, wp, s) + xn * grad(xn, wn, s)
    if rule == "zbox":
        lo, hi = (t.expand_as(x) for t in bounds)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        z = conv(x, w, b) - conv(lo, wp, b.clamp(min=0)) - conv(hi, wn, b.clamp(max=0))
        s = r / stab(z, eps)
        return x * grad(x, w, s) - lo * grad(lo, wp, s) - hi * grad(hi, wn, s)
    raise KeyError(rule)


def _vit_reference(vit, x, target, first: str, attention: str, eps: float, bounds=None) -> torch.Tensor:
    """LRP of a one-block timm ViT (class token pooling), written out in float64.

    Dense layers: epsilon; LayerNorm: epsilon with the std held constant; GELU:
    identity; residual additions and the positional embedding: epsilon.
    Attention "cp": the probabilities are constants, all relevance to the values.
    Attention "attnlrp": half of it to the probabilities (uniform rule on the
    product), then the softmax rule R_L = L (R_p - p sum R_p), then half each to
    the queries and keys (uniform rule on q k^T).
    """
    sd = {k: v.double() for k, v in vit.state_dict().items()}
    blk = vit.blocks[0]
    heads, hd, scale = blk.attn.num_heads, blk.attn.head_dim, blk.attn.scale
    npre = vit.num_prefix_tokens
    lin = lambda name: (lambda t: t @ sd[name + ".weight"].T + sd[name + ".bias"])  # noqa: E731

    def ln(name, a):
        std = torch.sqrt(a.var(dim=-1, unbiased=False, keepdim=True) + 1e-6)
        return lambda t: (t - t.mean(dim=-1, keepdim=True)) / std * sd[name + ".weight"] + sd[name + ".bias"]

    x64 = x.double()
    n = x.shape[0]
    h0 = F.conv2d(x64, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    tokens0 = h0.flatten(2).transpose(1, 2)
    prefix = torch.cat([sd["cls_token"].expand(n, -1, -1), sd["reg_token"].expand(n, -1, -1)], 1)
    hc = torch.cat([prefix, tokens0], dim=1)
    f_pos = lambda t: t + sd["pos_embed"]  # noqa: E731
    h1 = f_pos(hc)
    f_ln1 = ln("blocks.0.norm1", h1)
    n1 = f_ln1(h1)
    f_qkv = lin("blocks.0.attn.qkv")
    qkv = f_qkv(n1)
    t = qkv.shape[1]
    split = lambda u: u.reshape(n, t, heads, hd).transpose(1, 2)  # noqa: E731
    merge = lambda u: u.transpose(1, 2).reshape(n, t, heads * hd)  # noqa: E731
    q, k, v = (split(u) for u in qkv.split(heads * hd, dim=-1))
    logits = (q * scale) @ k.transpose(-2, -1)
    p = logits.softmax(dim=-1)
    o = p @ v
    f_proj = lin("blocks.0.attn.proj")
    a = f_proj(merge(o))
    h2 = h1 + a
    f_ln2 = ln("blocks.0.norm2", h2)
    n2 = f_ln2(h2)
    f_fc1, f_fc2 = lin("blocks.0.mlp.fc1"), lin("blocks.0.mlp.fc2")
    u = f_fc1(n2)
    g = F.gelu(u)
    m = f_fc2(g)
    h3 = h2 + m
    f_ln3 = ln("norm", h3)
    n3 = f_ln3(h3)
    f_head = lin("head")
    out = f_head(n3[:, 0])
    torch.testing.assert_close(out.float(), vit(x), rtol=1e-4, atol=1e-5)

    r_out = torch.zeros_like(out)
    r_out[torch.arange(n), target] = out[torch.arange(n), target]
    r = eps_step(f_head, n3[:, 0], r_out, eps)
    r_n3 = torch.zeros_like(n3)
    r_n3[:, 0] = r
    r_h3 = eps_step(f_ln3, h3, r_n3, eps)
    s = r_h3 / stab(h3, eps)
    r_h2, r_m = h2 * s, m * s
    r_g = eps_step(f_fc2, g, r_m, eps)
    r_h2 = r_h2 + eps_step(f_ln2, h2, eps_step(f_fc1, n2, r_g, eps), eps)  # GELU: identity
    s = r_h2 / stab(h2, eps)
    r_h1, r_a = h1 * s, a * s
    r_o = split(eps_step(f_proj, merge(o), r_a, eps))
    d = r_o / stab(o, eps)
    if attention == "cp":
        r_v = v * (p.transpose(-2, -1) @ d)
        r_q = r_k = torch.zeros_like(q)
    else:
        r_v = 0.5 * v * (p.transpose(-2, -1) @ d)
        r_p = 0.5 * p * (d @ v.transpose(-2, -1))
        r_l = logits * (r_p - p * r_p.sum(dim=-1, keepdim=True))
        dl = r_l / stab(logits, eps)
        r_q = 0.5 * (q * scale) * (dl @ k)
        r_k = 0.5 * k * (dl.transpose(-2, -1) @ (q * scale))
    r_qkv = torch.cat([merge(r_q), merge(r_k), merge(r_v)], dim=-1)
    r_h1 = r_h1 + eps_step(f_ln1, h1, eps_step(f_qkv, n1, r_qkv, eps), eps)
    r_hc = eps_step(f_pos, hc, r_h1, eps)
    r_h0 = r_hc[:, npre:].transpose(1, 2).reshape(h0.shape)
    return _first_layer(first, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], x64, r_h0, eps, bounds)


VIT_CASES = {
    "cp-lrp": ("epsilon", "cp"),
    "attnlrp": ("epsilon", "attnlrp"),
    "epsilon-plus-flat": ("flat", "cp"),
    "epsilon-plus": ("zplus", "cp"),
    "epsilon-gamma-box": ("zbox", "cp"),
}


@pytest.mark.parametrize("composite", sorted(VIT_CASES))
def test_vit_composites_match_float64_reference(composite: str) -> None:
    vit = _tiny_vit()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-2.5, 2.5)
    target = torch.tensor([1, 2])
    eps = 0.01  # large, so that every denominator must match
    bounds = (torch.full((1, 3, 1, 1), -2.5, dtype=torch.float64), torch.full((1, 3, 1, 1), 2.5, dtype=torch.float64))
    first, attention = VIT_CASES[composite]
    ref = _vit_reference(vit, x, target, first, attention, eps, bounds)
    ours = lrp_attribute(
        vit, x, target, composite=composite, epsilon=eps, stabilizer=eps, stabilizer_mode="absolute",
        input_bounds=bounds,
    )
    pearson, err = _agreement(ours, ref)
    print(f"vit {composite}: Pearson {pearson:.9f}, max rel. error {err:.2e}")
    # float32 forward and relevance pass (u = 6e-8) over ~15 steps, several of them
    # sums over 8-24 terms, against float64: 1e-4 relative to the largest value
    torch.testing.assert_close(ours.double(), ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())


def test_attnlrp_sends_relevance_through_queries_and_keys() -> None:
    """Control for the reference test: AttnLRP and CP-LRP differ on the same ViT."""
    vit = _tiny_vit()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cp = lrp_attribute(vit, x, [1, 2], composite="cp-lrp")
    attn = lrp_attribute(vit, x, [1, 2], composite="attnlrp")
    assert _agreement(attn, cp)[1] > 0.05


# --------------------------------------------------------------------------- #
# relative stabiliser
# --------------------------------------------------------------------------- #


def test_relative_stabiliser_conserves_on_layerscale_vit_with_small_logits() -> None:
    """DINOv2-like: LayerScale 1e-5, register tokens, every bias zero, logits of order 1e-3."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4, embed_dim=64,
        num_heads=2, num_classes=10, reg_tokens=4, init_values=1e-5,
    ).eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "reg_token", "pos_embed"):
                p.zero_()
        vit.head.weight.mul_(30.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = vit(x)
    target = logits.abs().argmax(1)
    chosen = logits.gather(1, target[:, None])[:, 0]
    assert 1e-4 < chosen.abs().max() < 1e-2, chosen
    for composite in ("cp-lrp", "epsilon-plus-flat"):
        _, delta = lrp_attribute(vit, x, target, composite=composite, return_convergence_delta=True)
        assert ((delta / chosen).abs() < 1e-3).all(), (composite, delta / chosen)
    # control: the same epsilon, absolute, absorbs most of the relevance
    _, delta = lrp_attribute(vit, x, target, stabilizer_mode="absolute", return_convergence_delta=True)
    assert ((delta / chosen).abs() > 0.5).all(), delta / chosen


def test_relative_delta_reported_by_attribute() -> None:
    from captum_nave.attribution import attribute

    net, x = _two_layer_net()
    with torch.no_grad():
        net[3].weight.mul_(1e-3)  # logit 5e-3
    res = attribute("lrp", net, x, 0, composite="epsilon")
    assert res.options["composite"] == "epsilon"
    torch.testing.assert_close(res.relative_delta, res.delta / 5e-3, rtol=1e-4, atol=0)
    assert attribute("lrp", net, x, 0).options["composite"] == "epsilon-plus-flat"


# --------------------------------------------------------------------------- #
# rule maps
# --------------------------------------------------------------------------- #


def test_rule_maps_merge_over_the_composite() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    plan = lrp_rules(
        model, x, composite="epsilon-plus-flat",
        name_map=[(("layer1.*", "fc"), "epsilon")],
        type_map={nn.Conv2d: "gamma", nn.AdaptiveAvgPool2d: Epsilon(0.1)},
    )
    rules = {origin: type(rule).__name__ for _, origin, _, rule in plan}
    copies = {origin: copy_name for copy_name, origin, _, _ in plan}
    assert rules["layer1.0.conv1"] == "Epsilon" and copies["layer1.0.conv1"] == "layer1.0.body.0"
    assert rules["layer1.0.add"] == "Epsilon"  # created by the canonicalisation, named below its block
    assert rules["layer2.0.conv1"] == "Gamma" and rules["layer2.0.downsample.0"] == "Gamma"
    assert rules["conv1"] == "Gamma"  # the type map wins over the composite's first-layer rule
    assert rules["fc"] == "Epsilon" and rules["relu"] == "Pass"
    assert [r for _, o, _, r in plan if o == "avgpool"][0].epsilon.epsilon == 0.1
    # names before types, and the same result by copy names
    a = lrp_attribute(model, x, 2, name_map={"layer1.*": "zplus"}, type_map={nn.Conv2d: "epsilon"})
    b = lrp_attribute(model, x, 2, name_map={"layer1.0.body.*": "zplus", "layer1.1.body.*": "zplus"},
                      type_map={nn.Conv2d: "epsilon"})
    c = lrp_attribute(model, x, 2, type_map={nn.Conv2d: "epsilon"})
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_type_map_matches_the_original_type() -> None:
    """A timm LayerNorm becomes DetachedLayerNorm in the copy; nn.LayerNorm still matches it."""
    vit = _tiny_vit()
    x = torch.randn(1, 3, 8, 8)
    plan = lrp_rules(vit, x, type_map={nn.LayerNorm: Epsilon(0.5)})
    norms = [rule for _, origin, kind, rule in plan if kind == "DetachedLayerNorm"]
    assert len(norms) == 3 and all(r.epsilon.epsilon == 0.5 for r in norms)


def test_rule_map_errors() -> None:
    net, x = _two_layer_net()
    with pytest.raises(ValueError, match=r"name_map\['0'\]: expected a Rule or one of epsilon, .*got 'zz'"):
        lrp_attribute(net, x, 0, name_map={"0": "zz"})
    with pytest.raises(TypeError, match="type_map: keys must be nn.Module subclasses, got 'Conv2d'"):
        lrp_attribute(net, x, 0, type_map={"Conv2d": "epsilon"})
    with pytest.raises(TypeError, match=r"name_map\['0'\]: expected a Rule .*got int"):
        lrp_attribute(net, x, 0, name_map={"0": 3})
    with pytest.raises(TypeError, match="name_map: expected a dict or a list of"):
        lrp_attribute(net, x, 0, name_map="0")
    with pytest.raises(TypeError, match=r"rule ZPlus.*not to '1' \(ReLU\)"):
        lrp_attribute(net, x, 0, name_map={"1": ZPlus()})
    with pytest.raises(ValueError, match=r"input_bounds: the ZBox rule \(on '0'\) needs the range"):
        lrp_attribute(net, x, 0, composite="epsilon-gamma-box")
    with pytest.raises(ValueError, match=r"input_bounds: shapes \(1, 2, 1, 1\)"):
        lrp_attribute(net, x, 0, composite="epsilon-gamma-box", input_bounds=([0.0, 0.0], [1.0, 1.0]))
    vit = _tiny_vit()
    with pytest.raises(TypeError, match="ZPlus.*not to 'blocks.0.norm1' \\(DetachedLayerNorm\\)"):
        lrp_attribute(vit, torch.randn(1, 3, 8, 8), 0, type_map={nn.LayerNorm: ZPlus()})
    with pytest.raises(TypeError, match="rule Epsilon on AttentionMix.*Uniform"):
        lrp_attribute(vit, torch.randn(1, 3, 8, 8), 0, composite="attnlrp",
                      name_map={"blocks.0.attn.mix": Epsilon()})


def test_every_composite_is_documented() -> None:
    import captum_nave.attribution._lrp_composites as mod

    for name, spec in COMPOSITES.items():
        assert f"``{name}``" in mod.__doc__ and spec.reference and spec.summary
    # the CLI lists the names without importing torch: the same names, in the same order
    from captum_nave.cli.compare import LRP_COMPOSITE_NAMES

    assert LRP_COMPOSITE_NAMES == tuple(COMPOSITES)
    assert normalisation_bounds((0.5,) * 3, (0.25,) * 3) == ((-2.0,) * 3, (2.0,) * 3)
    low, high = normalisation_bounds((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert math.isclose(low[0], -0.485 / 0.229) and math.isclose(high[2], 0.594 / 0.225)
