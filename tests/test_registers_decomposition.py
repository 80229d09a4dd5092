"""CLS decomposition (Lappe & Giese) and linear CKA against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_nave.registers.capture import collect_token_statistics
from captum_nave.registers.decomposition import cosine, decompose_cls, linear_cka
from captum_nave.registers.layout import ViTLayout

from test_registers_models import HAND_LAYOUT, HFStyleViT, HubStyleViT, hand_vit, tiny_timm


def _residual_after_attention(model, norm2, x, cls_index):
    """CLS token after the attention sublayer, read at the input of the block's norm2."""
    got = []
    h = norm2.register_forward_pre_hook(lambda m, a: got.append(a[0][:, cls_index].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return got[0]


@pytest.mark.parametrize("init_values", [None, 0.3], ids=["no-layerscale", "layerscale"])
def test_parts_sum_to_attention_output_timm(init_values):
    model = tiny_timm(reg_tokens=4, init_values=init_values).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    st = collect_token_statistics(model, x, decompose_layers=(-1, 0))
    for b in (0, 2):
        d = st.decompositions[b]
        recon = d.patches + d.registers + d.cls + d.other + d.bias
        # the model's own projection output (+ bias, layer-scaled)
        torch.testing.assert_close(recon, st.attn_out_model[b], rtol=0, atol=1e-12)
        resid = _residual_after_attention(model, model.blocks[b].norm2, x, 0)
        torch.testing.assert_close(d.skip + recon, resid, rtol=0, atol=1e-12)
        torch.testing.assert_close(d.residual, resid, rtol=0, atol=1e-12)
        assert d.registers.abs().sum() > 0 and d.other.abs().sum() == 0
    ls = model.blocks[2].ls1
    bias = model.blocks[2].attn.proj.bias
    torch.testing.assert_close(st.decompositions[2].bias[0], ls(bias), rtol=0, atol=1e-15)


def test_patch_part_matches_a_loop_reference():
    """Patch contribution = W_o concat_h(sum over patch j of a_hj v_hj) * gamma, by loops."""
    model = hand_vit().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    st = collect_token_statistics(model, x, HAND_LAYOUT, decompose_layers=(1,))
    blk = model.layers[1]
    inp = []
    h = blk.register_forward_pre_hook(lambda m, a: inp.append(a[0]))
    with torch.no_grad():
        model(x)
    h.remove()
    with torch.no_grad():
        t = blk.n1(inp[0])[0]  # (T, D)
        qkv = blk.mix.to_qkv(t)
    T, D = t.shape
    heads, hd = 2, D // 2
    q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
    parts = {"patches": range(3, T), "registers": (0, 2), "cls": (1,)}
    for name, idx in parts.items():
        mixed = torch.zeros(D, dtype=torch.float64)
        for hh in range(heads):
            sl = slice(hh * hd, (hh + 1) * hd)
            logits = torch.tensor([float(q[1, sl] @ k[j, sl]) / hd**0.5 for j in range(T)], dtype=torch.float64)
            a = torch.softmax(logits, 0)
            for j in idx:
                mixed[sl] += a[j] * v[j, sl]
        want = (blk.mix.out.weight.detach() @ mixed) * blk.scale1.g.detach()
        torch.testing.assert_close(getattr(st.decompositions[1], name)[0], want, rtol=0, atol=1e-12)


def test_hub_and_hf_decomposition_sums():
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    hub = HubStyleViT().double().eval()
    st = collect_token_statistics(hub, x)
    d = st.decompositions[2]
    torch.testing.assert_close(d.attn_out, st.attn_out_model[2], rtol=0, atol=1e-12)
    last = hub.blocks[1][2]
    torch.testing.assert_close(d.residual, _residual_after_attention(hub, last.norm2, x, 0), rtol=0, atol=1e-12)
    hf = HFStyleViT().double().eval()
    st = collect_token_statistics(hf, x)
    d = st.decompositions[1]
    torch.testing.assert_close(d.attn_out, st.attn_out_model[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        d.residual, _residual_after_attention(hf, hf.encoder.layer[1].norm2, x, 0), rtol=0, atol=1e-12
    )


def test_no_cls_model_has_no_decomposition():
    st = collect_token_statistics(tiny_timm(class_token=False, global_pool="avg"), torch.randn(2, 3, 32, 32))
    assert st.decompositions == {} and st.cls_tokens is None and st.cls_layer_cosine() is None
    with pytest.raises(ValueError, match="CLS"):
        decompose_cls(
            torch.ones(1, 1, 3) / 3, torch.zeros(1, 1, 3, 2), torch.zeros(2, 2), None,
            ViTLayout(num_prefix_tokens=1, cls_index=None), torch.zeros(1, 2),
        )


def test_cosines_and_cls_layer_cosine():
    model = tiny_timm(reg_tokens=2)
    st = collect_token_statistics(model, torch.randn(3, 3, 32, 32))
    d = st.decompositions[2]
    co = d.cosines()
    torch.testing.assert_close(co["skip_vs_residual"], torch.nn.functional.cosine_similarity(d.skip.double(), d.residual.double()))
    curve = st.cls_layer_cosine()
    assert curve.shape == (3, 3)
    torch.testing.assert_close(curve[:, -1], torch.ones(3, dtype=torch.float64))
    assert cosine(torch.zeros(1, 4), torch.ones(1, 4)).item() == 0.0


def _cka_reference(x, y):
    """Gram-matrix form with an explicit centring matrix (float64 numpy)."""
    n = x.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ (x @ x.T) @ H, H @ (y @ y.T) @ H
    return np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L))


def test_linear_cka_properties_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, dtype=torch.float64, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=g))
    assert linear_cka(x, x @ q) == pytest.approx(linear_cka(x, x), abs=1e-12)
    assert linear_cka(x, 3.0 * x + 1.0) == pytest.approx(1.0, abs=1e-12)
    big = torch.randn(4000, 5, dtype=torch.float64, generator=g)
    indep = torch.randn(4000, 5, dtype=torch.float64, generator=g)
    assert linear_cka(big, indep) < 0.01
    # both code paths (n >= p and n < p) against the centring-matrix reference
    for n, p, qd in ((40, 6, 3), (10, 30, 25)):
        a = torch.randn(n, p, dtype=torch.float64, generator=g)
        b = a[:, :2] @ torch.randn(2, qd, dtype=torch.float64, generator=g) + 0.5 * torch.randn(n, qd, dtype=torch.float64, generator=g)
        assert linear_cka(a, b) == pytest.approx(_cka_reference(a.numpy(), b.numpy()), abs=1e-12)
    assert np.isnan(linear_cka(torch.ones(5, 3), x[:5]))
    with pytest.raises(ValueError, match="x, y"):
        linear_cka(x, x[:10])
