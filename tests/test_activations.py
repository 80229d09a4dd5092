"""Layer resolution and token handling for CNNs and ViTs."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.segments import resize_labels
from captum_nave.activations import (
    capture_activations,
    num_prefix_tokens,
    resolve_layers,
    tokens_to_grid,
)


def tiny_vit(**kw):
    args = dict(pretrained=False, img_size=64, depth=2, embed_dim=48, num_heads=2, num_classes=5)
    args.update(kw)
    name = args.pop("name", "vit_small_patch16_224")
    return timm.create_model(name, **args).eval()


def test_resolve_names_modules_and_negative_indices():
    vit = tiny_vit()
    assert resolve_layers(vit, [-1])[0] is vit.blocks[-1]
    assert resolve_layers(vit, ["blocks.-1"])[0] is vit.blocks[1]
    assert resolve_layers(vit, ["blocks.0", vit.norm]) == [vit.blocks[0], vit.norm]
    r = torchvision.models.resnet18(weights=None)
    assert resolve_layers(r, "layer4.1.conv2")[0] is r.layer4[1].conv2


def test_unknown_layer_lists_closest_names():
    r = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match=r"layers: no layer named 'layer5'.*closest valid names: .*layer\d"):
        resolve_layers(r, ["layer5"])
    with pytest.raises(ValueError, match="integer index"):
        resolve_layers(r, [-1])
    with pytest.raises(ValueError, match="block index must be in"):
        resolve_layers(tiny_vit(), [5])
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layers(r, [nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="empty"):
        resolve_layers(r, [])


@pytest.mark.parametrize(
    "kw,prefix",
    [
        (dict(), 1),
        (dict(reg_tokens=4), 5),
        (dict(reg_tokens=4, class_token=False, global_pool="avg"), 4),
        (dict(name="deit_tiny_distilled_patch16_224"), 2),
    ],
)
def test_vit_token_layouts_give_patch_grids(kw, prefix):
    vit = tiny_vit(**kw)
    assert num_prefix_tokens(vit) == prefix
    ex = LayerClusterExplainer(vit, [-1])
    res = ex.explain(torch.randn(2, 3, 64, 64), n_clusters=3, random_state=0)
    assert res.grid == (4, 4) and res.layer_shapes == [(48, 4, 4)]
    assert res.segments.shape == (2, 1, 64, 64)


def test_non_square_dynamic_size_vit():
    vit = tiny_vit(reg_tokens=4, dynamic_img_size=True)
    res = LayerClusterExplainer(vit, [-1]).explain(torch.randn(1, 3, 48, 80), n_clusters=3, random_state=0)
    assert res.grid == (3, 5)
    assert res.segments.shape == (1, 1, 48, 80)
    # every 16x16 patch of the input carries the label of its grid cell
    seg = res.segments[0, 0]
    assert torch.equal(seg[::16, ::16], res.grid_labels[0])
    assert torch.equal(seg, res.grid_labels[0].repeat_interleave(16, 0).repeat_interleave(16, 1))


def test_padded_vit_input_not_multiple_of_patch():
    vit = tiny_vit(dynamic_img_size=True, dynamic_img_pad=True)
    x = torch.randn(2, 3, 50, 70)
    ex = LayerClusterExplainer(vit, [-1])
    res = ex.explain(x, n_clusters=3, random_state=0)
    assert res.grid == (4, 5)  # ceil(50/16), ceil(70/16)
    # the activations are timm's own patch grid of the padded input
    acts = capture_activations(vit, ex.layers, x, num_prefix=ex.num_prefix_tokens, patch_size=ex.patch_size)
    ref = vit.forward_intermediates(x, indices=[1], output_fmt="NCHW", intermediates_only=True)[0]
    assert torch.equal(acts[0], ref)
    # timm pads at the bottom and right: input pixel (y, x) lies in patch (y // 16, x // 16)
    rows, cols = torch.arange(50) // 16, torch.arange(70) // 16
    for i in range(2):
        assert torch.equal(res.segments[i, 0], res.grid_labels[i][rows][:, cols])
    cc = ConceptClusters(ex, 3, random_state=0).fit(x)
    ids = cc.transform(x).argmin(1)
    assert torch.equal(cc.predict(x)[:, 0], ids[:, rows][:, :, cols])


def test_cropping_patch_embedding_maps_the_remainder_to_the_last_patch():
    """A convolution patch embedding drops the last 30 % 8 = 6 rows and 45 % 8 = 5 columns;
    those pixels get the label of the nearest (last) patch, the others of their own patch."""
    hub = HubStyleViT(regs=2, patch=8)
    x = torch.randn(1, 3, 30, 45)
    res = LayerClusterExplainer(hub, ["blocks.1"]).explain(x, n_clusters=3, random_state=0)
    assert res.grid == (3, 5)
    rows = (torch.arange(30) // 8).clamp_max(2)
    cols = (torch.arange(45) // 8).clamp_max(4)
    assert torch.equal(res.segments[0, 0], res.grid_labels[0][rows][:, cols])
    # a grid that is not the patch grid is resized by pixel centres as for CNNs
    res = LayerClusterExplainer(hub, ["blocks.1"]).explain(x, n_clusters=3, random_state=0, resolution=(6, 9))
    assert torch.equal(res.segments[0, 0], resize_labels(res.grid_labels[0], (30, 45)))


def test_planted_extreme_prefix_tokens_do_not_change_segments():
    vit = tiny_vit(reg_tokens=4)
    x = torch.randn(2, 3, 64, 64)
    ex = LayerClusterExplainer(vit, [-1])
    before = ex.attribute(x, n_clusters=4, random_state=0)

    def plant(module, args, out):
        out = out.clone()
        out[:, : vit.num_prefix_tokens] = 1e4 * torch.randn_like(out[:, : vit.num_prefix_tokens])
        return out

    h = vit.blocks[-1].register_forward_hook(plant)
    try:
        after = ex.attribute(x, n_clusters=4, random_state=0)
        # planting into a *patch* token does change the map: the check can fail
        def plant_patch(module, args, out):
            out = out.clone()
            out[:, vit.num_prefix_tokens + 5] = 1e4
            return out

        h2 = vit.blocks[-1].register_forward_hook(plant_patch)
        changed = ex.attribute(x, n_clusters=4, random_state=0)
        h2.remove()
    finally:
        h.remove()
    assert torch.equal(before, after)
    assert not torch.equal(before, changed)


class HubStyleViT(nn.Module):
    """A torch-hub DINOv2-like model: cls_token, num_register_tokens, patch_size attributes."""

    def __init__(self, regs=4, dim=12, patch=8):
        super().__init__()
        self.patch_size = patch
        self.num_register_tokens = regs
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.full((1, regs, dim), 50.0))
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList([nn.Identity(), nn.Identity()])

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        n = x.shape[0]
        t = torch.cat([self.cls_token.expand(n, -1, -1), self.register_tokens.expand(n, -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        return t[:, 0]


class HFStyleConfig:
    patch_size = 8
    num_register_tokens = 0


def test_hub_and_hf_style_models_and_explicit_override():
    hub = HubStyleViT()
    assert num_prefix_tokens(hub) == 5
    res = LayerClusterExplainer(hub, ["blocks.1"]).explain(torch.randn(1, 3, 32, 48), n_clusters=2, random_state=0)
    assert res.grid == (4, 6)
    # Hugging Face style: number of prefix tokens from config
    hub2 = HubStyleViT(regs=0)
    del hub2.num_register_tokens
    hub2.config = HFStyleConfig()
    assert num_prefix_tokens(hub2) == 1
    # anything else: explicit description
    plain = HubStyleViT(regs=2)
    del plain.num_register_tokens
    with pytest.raises(ValueError, match="prefix tokens is unknown"):
        LayerClusterExplainer(plain, ["blocks.0"]).attribute(torch.randn(1, 3, 32, 32), n_clusters=2)
    ex = LayerClusterExplainer(plain, ["blocks.0"], num_prefix_tokens=3, patch_size=8)
    assert ex.attribute(torch.randn(1, 3, 32, 32), n_clusters=2).shape == (1, 1, 32, 32)


def test_tokens_to_grid_without_patch_size_uses_aspect_ratio():
    t = torch.arange(2 * (1 + 12) * 3).float().reshape(2, 13, 3)
    g = tokens_to_grid(t, 1, (30, 40), None)
    assert g.shape == (2, 3, 3, 4)
    assert torch.equal(g[0, :, 0, 1], t[0, 2])  # token 1 of the patches -> row 0, column 1


@pytest.mark.parametrize(
    "name,indices,grid",
    [
        ("resnet18", [3, 4], (4, 4)),
        ("vgg11", [3, 4], (8, 8)),
        ("convnext_atto", [2, 3], (4, 4)),
        ("efficientnet_lite0", [3, 4], (4, 4)),
        ("efficientnet_b0", [3, 4], (4, 4)),
    ],
)
def test_cnn_families(name, indices, grid):
    """Stages named as timm's feature_info: the captured activations are exactly timm's own
    forward_intermediates, and the k-means segments on a 16x16 grid are a Lloyd fixed point
    of the float64 Algorithm-1 reference features (each pixel nearest its segment's mean)."""
    from reference import reference_features

    m = timm.create_model(name, pretrained=False, num_classes=5).eval()
    layers = [m.feature_info[i]["module"] for i in indices]
    x = torch.randn(1, 3, 64, 64)
    ex = LayerClusterExplainer(m, layers)
    acts = capture_activations(m, ex.layers, x)
    for a, ref in zip(acts, m.forward_intermediates(x, indices=indices, intermediates_only=True)):
        assert torch.equal(a, ref)
    assert ex.explain(x, n_clusters=3, random_state=0).grid == grid
    res = ex.explain(x, n_clusters=3, random_state=0, resolution=(16, 16), dtype=torch.float64)
    X = reference_features(acts, (16, 16))[0]
    lab = res.grid_labels[0].reshape(-1)
    assert lab.unique().tolist() == [0, 1, 2]
    means = torch.stack([X[lab == k].mean(0) for k in range(3)])
    assert torch.equal(torch.cdist(X, means).argmin(1), lab)
    assert torch.allclose(res.centroids[0], means, rtol=1e-9, atol=1e-12)


def test_torchvision_cnn_and_capture_matches_direct_forward():
    m = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    acts = capture_activations(m, resolve_layers(m, ["layer2", "layer4"]), x)
    with torch.no_grad():
        h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        l2 = m.layer2(m.layer1(h))
        l4 = m.layer4(m.layer3(l2))
    assert torch.allclose(acts[0], l2) and torch.allclose(acts[1], l4)
