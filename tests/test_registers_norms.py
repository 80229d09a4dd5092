"""High-norm outlier tokens: planted tokens are found exactly, at the planted block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_nave.registers.capture import collect_token_statistics
from captum_nave.registers.norms import (
    detect_outliers,
    first_outlier_layer,
    norm_map,
    outlier_report,
    robust_threshold,
)

from test_registers_models import HAND_LAYOUT, hand_vit, tiny_timm


def assert_planted_outliers_found(st, planted, block):
    """The outlier measure finds exactly the planted patches (3 of a 6x6 grid), from ``block`` on."""
    rep = outlier_report(st.block_norms, st.layout)
    n = st.norms.shape[0]
    for i in range(n):
        assert rep.outlier_indices(i, block) == planted
        assert rep.outlier_indices(i, block + 1) == planted  # the residual stream keeps them
    assert rep.first_layer.tolist() == [block] * n
    assert not rep.mask[:, :block].any()
    np.testing.assert_allclose(rep.fraction[:, block].numpy(), 3 / 36)
    assert (rep.max_median_ratio[:, block] > 10).all() and (rep.max_median_ratio[:, 0] < 3).all()


def plant(block, positions, factor=20.0):
    """Forward hook that multiplies the given sequence positions of the block output."""

    def hook(module, args, output):
        out = output.clone()
        out[:, list(positions)] *= factor
        return out

    return block.register_forward_hook(hook)


@pytest.mark.parametrize(
    "kw", [dict(reg_tokens=4), dict(), dict(class_token=False, global_pool="avg", reg_tokens=2)],
    ids=["reg4", "plain", "nocls"],
)
def test_planted_patch_outliers_are_found_exactly(kw):
    model = tiny_timm(img_size=48, depth=4, **kw)
    npfx = model.num_prefix_tokens
    planted = (3, 17, 30)  # patch indices on the 6x6 grid
    block = 2
    h = plant(model.blocks[block], [npfx + p for p in planted])
    try:
        st = collect_token_statistics(model, torch.randn(4, 3, 48, 48), attention_layers=None)
    finally:
        h.remove()
    assert_planted_outliers_found(st, planted, block)
    # fixed threshold between normal and planted norms finds the same set
    patch = st.block_norms[:, block, npfx:]
    thr = float(patch.median()) * 5
    fixed = outlier_report(st.block_norms, st.layout, method="fixed", threshold=thr)
    assert fixed.outlier_indices(0, block) == planted


def test_high_norm_registers_are_identified():
    model = tiny_timm(img_size=32, depth=3, reg_tokens=4)
    # register r2 sits at sequence position 1 + 2 (after CLS)
    h = plant(model.blocks[1], [3], factor=200.0)
    try:
        st = collect_token_statistics(model, torch.randn(3, 3, 32, 32), attention_layers=None)
    finally:
        h.remove()
    rep = outlier_report(st.block_norms, st.layout)
    assert rep.register_high.shape == (3, 3, 4)
    assert rep.register_high[:, 1].tolist() == [[False, False, True, False]] * 3
    assert not rep.register_high[:, 0].any()
    assert (rep.register_ratio[:, 1, 2] > 5).all()
    assert not rep.mask.any()  # patches are unaffected


def test_hand_model_planted_outliers():
    model = hand_vit()
    h = plant(model.layers[1], [3 + 5, 3 + 10])
    try:
        st = collect_token_statistics(model, torch.randn(2, 3, 32, 32), HAND_LAYOUT)
    finally:
        h.remove()
    rep = outlier_report(st.block_norms, HAND_LAYOUT)
    assert rep.first_layer.tolist() == [1, 1]
    assert rep.outlier_indices(1, 1) == (5, 10)
    nm = norm_map(st.block_norms[:, 1], HAND_LAYOUT, st.grid)
    assert nm.shape == (2, 4, 4)
    # patch 5 = row 1, col 1; patch 10 = row 2, col 2
    top2 = set(torch.topk(nm[0].flatten(), 2).indices.tolist())
    assert top2 == {5, 10} and nm[0, 1, 1] == st.block_norms[0, 1, 3 + 5]


def test_robust_threshold_against_numpy():
    rng = np.random.default_rng(0)
    v = rng.gamma(3.0, size=(4, 51))  # odd count: torch lower median == numpy median
    med = np.median(v, axis=1)
    mad = np.median(np.abs(v - med[:, None]), axis=1)
    want = med + 3.5 * 1.4826 * mad
    np.testing.assert_allclose(robust_threshold(torch.from_numpy(v), 3.5).numpy(), want, rtol=1e-12)
    mask = detect_outliers(torch.from_numpy(v), k=3.5, min_ratio=None).numpy()
    np.testing.assert_array_equal(mask, v > want[:, None])


def test_min_ratio_guard_and_constant_norms():
    v = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.5]])  # MAD = 0: 1.5 passes the MAD rule
    assert detect_outliers(v, min_ratio=None).tolist() == [[False] * 4 + [True]]
    assert not detect_outliers(v, min_ratio=2.0).any()  # but is not 2x the median
    assert not detect_outliers(torch.ones(1, 6), min_ratio=None).any()


def test_first_outlier_layer_by_hand():
    m = torch.zeros(3, 4, 5, dtype=torch.bool)
    m[0, 2, 1] = True
    m[0, 3, 0] = True
    m[1, 0, 4] = True
    assert first_outlier_layer(m).tolist() == [2, 0, -1]


def test_bad_arguments_name_the_parameter():
    v = torch.rand(2, 5)
    with pytest.raises(ValueError, match="method"):
        detect_outliers(v, method="iqr")
    with pytest.raises(ValueError, match="threshold"):
        detect_outliers(v, method="fixed")
    with pytest.raises(ValueError, match="k"):
        detect_outliers(v, k=-1)
    with pytest.raises(ValueError, match="norms"):
        outlier_report(v, HAND_LAYOUT)
