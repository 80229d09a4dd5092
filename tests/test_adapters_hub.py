"""torch-hub DINOv2 (``facebookresearch/dinov2`` code) through every entry point, on a stand-in.

The stand-in (``hub_dinov2.py``) has upstream's module layout and attribute names; the
equivalence with timm and Hugging Face on identical weights is in
``test_adapters_equivalence.py``. Here: the layout read from it (chunked blocks, registers),
layers by name and index against its own ``forward_features``, other input sizes, the
register measures against its explicit attention, Grad-CAM / IG on its CLS output, and
LRP conservation through LayerScale.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from captum_nave import LayerClusterExplainer
from captum_nave.activations import capture_activations
from captum_nave.adapters import HubDinov2Adapter, get_adapter
from captum_nave.attribution import attribute
from captum_nave.attribution.lrp import canonize, lrp_attribute
from captum_nave.registers import collect_token_statistics, compare_registers
from hub_dinov2 import dinov2_standin


def _x(n=2, size=32, dtype=torch.float64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _hub(regs=4, **kw):
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_register_tokens=regs,
                block_chunks=2, init_values=0.5)
    args.update(kw)
    return dinov2_standin(**args).double()


def test_layout_blocks_and_head_are_read_from_the_hub_model():
    model = _hub()
    a = get_adapter(model)
    assert isinstance(a, HubDinov2Adapter)
    lay = a.layout
    assert (lay.num_prefix_tokens, lay.cls_index, lay.register_indices, lay.patch_size) == (5, 0, (1, 2, 3, 4), (8, 8))
    # BlockChunk lists padded with nn.Identity are flattened, in execution order
    assert [n for n, _ in a.blocks()] == ["blocks.0.0", "blocks.1.1", "blocks.2.2"]
    x = _x()
    feats = model.forward_features(x)
    with torch.no_grad():
        torch.testing.assert_close(a.classifier_head()(feats["x_prenorm"]), model(x), rtol=0, atol=1e-14)
    acc = a.attention(1)
    assert acc.qkv is model.blocks[1][1].attn.qkv and acc.layer_scale is model.blocks[1][1].ls1
    assert acc.scale == pytest.approx(16 ** -0.5) and acc.num_heads == 2 and acc.exact


@pytest.mark.parametrize("size", [32, 48])
def test_layers_by_name_and_index_give_the_patch_tokens(size):
    model = _hub()
    x = _x(size=size)
    by_index = LayerClusterExplainer(model, [-1])
    by_name = LayerClusterExplainer(model, ["blocks.2.2"])
    assert by_index.layers[0] is by_name.layers[0] is model.blocks[2][2]
    g = size // 8
    res = by_index.explain(x, n_clusters=3, random_state=0)
    assert res.grid == (g, g)
    assert torch.equal(res.segments, by_name.explain(x, n_clusters=3, random_state=0).segments)
    # NAVE's activation is the hub model's own pre-norm patch tokens (CLS, registers dropped)
    patches = model.forward_features(x)["x_prenorm"][:, 5:]
    act = capture_activations(model, by_index.layers, x, num_prefix=by_index.num_prefix_tokens,
                              patch_size=by_index.patch_size)[0]
    torch.testing.assert_close(act, patches.transpose(1, 2).reshape(2, 32, g, g), rtol=0, atol=0)


def test_planted_registers_do_not_change_segments():
    model = _hub()
    ex = LayerClusterExplainer(model, [-1])
    x = _x(seed=3)
    before = ex.attribute(x, n_clusters=3, random_state=0)

    def plant(module, args, out):
        out = out.clone()
        out[:, :5] = 1e4
        return out

    h = model.blocks[2][2].register_forward_hook(plant)
    try:
        after = ex.attribute(x, n_clusters=3, random_state=0)
    finally:
        h.remove()
    assert torch.equal(before, after)


def test_register_measures_against_the_explicit_attention():
    model = _hub()
    x = _x()
    st = collect_token_statistics(model, x, decompose_layers=(-1,))
    probs = []
    hooks = [b.attn.attn_drop.register_forward_pre_hook(lambda m, a: probs.append(a[0][:, :, 0]))
             for _, b in get_adapter(model).blocks()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(st.attention, torch.stack(probs, dim=1), rtol=0, atol=1e-14)
    d = st.decompositions[2]
    torch.testing.assert_close(d.attn_out, st.attn_out_model[2], rtol=0, atol=1e-12)  # LayerScale included
    res = compare_registers(_hub(regs=0), model, x, n_clusters=3, n_boot=50)
    assert res.per_image["mass_registers"][0].max() == 0 and res.per_image["mass_registers"][1].min() > 0


def test_gradcam_ig_and_lrp_on_the_cls_output():
    model = _hub()
    x = _x()
    target = torch.tensor([2, 7])  # feature indices of the CLS embedding
    gc = attribute("gradcam", model, x, target)
    assert gc.options["layer"] == "blocks.2.2.norm1" and gc.options["num_prefix_tokens"] == 5
    assert gc.raw.shape == (2, 1, 4, 4) and gc.raw.abs().sum() > 0
    ig = attribute("ig", model, x, target, n_steps=4)
    ref = IntegratedGradients(model).attribute(x, target=target, n_steps=4)
    torch.testing.assert_close(ig.raw, ref, rtol=1e-10, atol=1e-13)


def _zero_biases(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "register_tokens", "pos_embed"):
                p.zero_()
            elif p.dim() == 1:  # LayerNorm weights and LayerScale gammas
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("regs", [0, 4])
def test_lrp_conserves_through_layer_scale(regs):
    model = _zero_biases(_hub(regs=regs))
    x = _x()
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(canonize(model)(x), out, rtol=1e-12, atol=1e-12)
    target = out.abs().argmax(1)
    rel, delta = lrp_attribute(model, x, target, epsilon=1e-9, return_convergence_delta=True)
    err = (delta.abs() / out.gather(1, target[:, None])[:, 0].abs()).max().item()
    assert err < 1e-3, err  # float64; the epsilon stabiliser leaves ~1e-7
    assert (rel > 0).any() and (rel < 0).any()
    # relevance went through the hub LayerScales, as per-channel linear maps (epsilon rule)
    scales = [m for m in canonize(model).modules() if type(m).__name__ == "LayerScale"]
    assert len(scales) == 2 * 3
    gammas = sorted(float(m.gamma.sum()) for m in scales)
    assert gammas == pytest.approx(sorted(float(p.detach().sum()) for n, p in model.named_parameters() if n.endswith("gamma")))


def test_hub_model_left_unchanged():
    model = _hub()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _x()
    for method in ("gradcam", "ig", "lrp"):
        attribute(method, model, x, 1, **({"n_steps": 2} if method == "ig" else {}))
    collect_token_statistics(model, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training
