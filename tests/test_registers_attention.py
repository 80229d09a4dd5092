"""CLS attention rows, masses and entropy against independent references.

The library recomputes ``softmax(q_cls k^T * scale)`` from the captured q/k projections
while the model runs its fused SDPA kernel. The references here read the attention
probabilities the models themselves compute: timm's non-fused path (``fused_attn=False``,
hook on ``attn_drop``), the hand model's stored ``last_attn``, and a float64 computation
from the HF-style model's weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from captum_nave.registers.attention import (
    attention_entropy,
    attention_map,
    attention_masses,
    mean_query_attention,
    query_attention,
)
from captum_nave.registers.capture import collect_token_statistics
from captum_nave.registers.layout import ViTLayout, vit_layout

from test_registers_models import HAND_LAYOUT, HFStyleViT, HubStyleViT, hand_vit, tiny_timm


def timm_reference_probs(model, x):
    """Full attention probabilities per block from timm's own non-fused path (float64)."""
    probs, handles, flags = [], [], []
    try:
        for blk in model.blocks:
            flags.append((blk.attn, blk.attn.fused_attn))
            blk.attn.fused_attn = False
            handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o.detach())))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, f in flags:
            m.fused_attn = f
    return probs


@pytest.mark.parametrize(
    "kw",
    [dict(reg_tokens=4), dict(), dict(reg_tokens=2, qk_norm=True), dict(class_token=False, global_pool="avg", reg_tokens=2)],
    ids=["reg4", "plain", "qknorm", "nocls"],
)
def test_timm_rows_equal_non_fused_reference(kw):
    model = tiny_timm(**kw).double()
    if kw.get("qk_norm"):  # make q_norm / k_norm matter
        for blk in model.blocks:
            torch.nn.init.normal_(blk.attn.q_norm.weight, 1.0, 0.5)
            torch.nn.init.normal_(blk.attn.k_norm.bias, 0.0, 0.5)
    assert all(blk.attn.fused_attn for blk in model.blocks)  # the measured run uses SDPA
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    st = collect_token_statistics(model, x)
    ref = timm_reference_probs(model, x)
    lay = vit_layout(model)
    npfx = lay.num_prefix_tokens
    for b, p in enumerate(ref):
        want = p[:, :, 0, :] if lay.has_cls else p[:, :, npfx:, :].mean(dim=2)
        torch.testing.assert_close(st.attention_at(b), want, rtol=0, atol=1e-12)
    assert st.method == "qkv"
    assert st.attention_query == ("cls" if lay.has_cls else "mean_patches")
    torch.testing.assert_close(st.attention.sum(-1), torch.ones_like(st.attention.sum(-1)), rtol=0, atol=1e-12)


def test_eager_method_equals_qkv_and_restores_flags():
    model = tiny_timm(reg_tokens=4).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    a = collect_token_statistics(model, x, method="qkv")
    b = collect_token_statistics(model, x, method="eager")
    assert b.method == "eager"
    torch.testing.assert_close(a.attention, b.attention, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.decompositions[2].patches, b.decompositions[2].patches, rtol=0, atol=1e-12)
    assert all(blk.attn.fused_attn for blk in model.blocks)
    # failure inside the forward pass (wrong input size): flags and hooks restored
    with pytest.raises(Exception):
        collect_token_statistics(model, torch.randn(1, 3, 40, 40, dtype=torch.float64), method="eager")
    assert all(blk.attn.fused_attn for blk in model.blocks)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "name", ["vit_medium_patch16_rope_reg1_gap_256", "beit_base_patch16_224"], ids=["eva-rope", "beit-relpos"]
)
def test_non_standard_timm_attention_falls_back_to_eager(name):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=32, depth=2, embed_dim=48, num_heads=3).eval()
    if name.startswith("beit"):  # make the relative position bias matter
        for blk in model.blocks:
            torch.nn.init.normal_(blk.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="decomposition is skipped") if name.startswith("beit") else _no_warning():
        st = collect_token_statistics(model, x)
    assert st.method == "eager"  # recomputing from qkv would miss rope / the position bias
    assert all(blk.attn.fused_attn for blk in model.blocks)
    ref = timm_reference_probs(model, x)
    npfx = st.layout.num_prefix_tokens
    for b, p in enumerate(ref):
        want = p[:, :, 0, :] if st.layout.has_cls else p[:, :, npfx:, :].mean(dim=2)
        torch.testing.assert_close(st.attention_at(b), want, rtol=0, atol=1e-6)
    # BEiT calls F.linear with qkv.weight: forcing "qkv" cannot see the projections
    if name.startswith("beit"):
        with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="did not run"):
            collect_token_statistics(model, x, method="qkv")
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_hand_hub_and_hf_rows_equal_their_own_probabilities():
    # hand model: stored probabilities of the last block
    model = hand_vit().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    st = collect_token_statistics(model, x, HAND_LAYOUT)
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(st.attention_at(-1), model.layers[-1].mix.last_attn[:, :, 1, :], rtol=0, atol=1e-12)

    # hub style: SDPA inside, nothing to hook; reference in float64 from the weights
    hub = HubStyleViT().double().eval()
    st = collect_token_statistics(hub, x)
    blk = [b for c in hub.blocks for b in c if not isinstance(b, torch.nn.Identity)][1]
    inputs = []
    h = blk.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        hub(x)
    h.remove()
    t = blk.norm1(inputs[0])
    qkv = blk.attn.qkv(t).reshape(2, t.shape[1], 3, 2, 16)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    ref = torch.softmax(q[:, :, 0:1] @ k.transpose(-1, -2) / 4.0, -1)[:, :, 0]
    torch.testing.assert_close(st.attention_at(1), ref, rtol=0, atol=1e-12)

    # HF style: separate query / key projections
    hf = HFStyleViT().double().eval()
    st = collect_token_statistics(hf, x)
    probs = []
    hk = hf.encoder.layer[0].attention.attention.register_forward_hook(lambda m, a, o: probs.append(o[1]))
    with torch.no_grad():
        hf(x)
    hk.remove()
    torch.testing.assert_close(st.attention_at(0), probs[0][:, :, 0, :], rtol=0, atol=1e-12)


def test_query_attention_math_float64():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 7, 4, dtype=torch.float64, generator=g)
    k = torch.randn(2, 3, 7, 4, dtype=torch.float64, generator=g)
    row = query_attention(q, k, 0.5, 2)
    for b in range(2):
        for h in range(3):
            logits = np.array([0.5 * float(q[b, h, 2] @ k[b, h, j]) for j in range(7)])
            ref = np.exp(logits - logits.max())
            ref /= ref.sum()
            np.testing.assert_allclose(row[b, h].numpy(), ref, atol=1e-14)
    mean = mean_query_attention(q, k, 0.5, [3, 4, 5, 6], chunk=3)
    full = torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1)
    torch.testing.assert_close(mean, full[:, :, 3:].mean(2), rtol=0, atol=1e-14)


def test_masses_sum_to_one_and_match_hand_values():
    lay = ViTLayout(num_prefix_tokens=4, cls_index=0, register_indices=(1, 2))  # index 3: "other"
    a = torch.tensor([[0.1, 0.2, 0.05, 0.05, 0.3, 0.1, 0.15, 0.05]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False]])
    m = attention_masses(a, lay, mask)
    assert m["cls"].item() == pytest.approx(0.1)
    assert m["registers"].item() == pytest.approx(0.25)
    assert m["other"].item() == pytest.approx(0.05)
    assert m["patches"].item() == pytest.approx(0.6)
    assert m["outlier_patches"].item() == pytest.approx(0.45)
    assert (m["cls"] + m["registers"] + m["other"] + m["patches"]).item() == pytest.approx(1.0)
    # per-head input is averaged over heads
    per_head = torch.stack([a, a.flip(-1)], dim=1)
    m2 = attention_masses(per_head, lay)
    assert m2["cls"].item() == pytest.approx((0.1 + 0.05) / 2)
    assert math.isnan(m2["outlier_patches"].item())
    with pytest.raises(ValueError, match="outlier_mask"):
        attention_masses(a, lay, torch.ones(1, 3, dtype=torch.bool))


def test_masses_on_real_models_sum_to_one():
    for model, lay in ((tiny_timm(reg_tokens=4), None), (hand_vit(), HAND_LAYOUT)):
        st = collect_token_statistics(model, torch.randn(2, 3, 32, 32), lay)
        for b in range(st.num_blocks):
            m = attention_masses(st.attention_at(b), st.layout)
            total = m["cls"] + m["registers"] + m["other"] + m["patches"]
            torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)
            assert (m["registers"] > 0).all()


def test_entropy_against_hand_values():
    lay = ViTLayout(num_prefix_tokens=1)
    uniform = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2]])
    one_hot = torch.tensor([[0.5, 0.0, 0.5, 0.0, 0.0]])
    assert attention_entropy(uniform, lay).item() == pytest.approx(1.0)
    assert attention_entropy(one_hot, lay).item() == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    r = rng.random((3, 9))
    r /= r.sum(1, keepdims=True)
    p = r[:, 1:] / r[:, 1:].sum(1, keepdims=True)
    want = -(p * np.log(p)).sum(1)
    got = attention_entropy(torch.from_numpy(r), lay, normalized=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(attention_entropy(torch.from_numpy(r), lay).numpy(), want / math.log(8), atol=1e-12)


def test_attention_map_is_raster_ordered():
    lay = ViTLayout(num_prefix_tokens=2, cls_index=0, register_indices=(1,))
    a = torch.zeros(1, 2 + 6)
    a[0, 2 + 4] = 1.0  # patch 4 of a 2x3 grid = row 1, col 1
    amap = attention_map(a, lay, (2, 3))
    assert amap.shape == (1, 2, 3) and amap[0, 1, 1] == 1.0 and amap.sum() == 1.0
