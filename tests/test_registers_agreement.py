"""NAVE agreement between models: ARI / NMI on a common grid, seed noise floor, outlier clusters."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch

from captum_nave import LayerClusterExplainer
from captum_nave.registers.agreement import (
    common_grid,
    label_agreement,
    nave_grid_labels,
    outlier_cluster_share,
    resize_label_grid,
)
from captum_nave.registers.layout import vit_layout

from test_registers_models import HAND_LAYOUT, hand_vit, tiny_timm


def _ari_reference(x, y):
    """Hubert & Arabie ARI from the contingency table (plain Python)."""
    xs, ys = sorted(set(x)), sorted(set(y))
    table = [[sum(1 for u, v in zip(x, y) if u == a and v == b) for b in ys] for a in xs]
    n = len(x)
    index = sum(comb(c, 2) for row in table for c in row)
    rows = sum(comb(sum(r), 2) for r in table)
    cols = sum(comb(sum(table[i][j] for i in range(len(xs))), 2) for j in range(len(ys)))
    expected = rows * cols / comb(n, 2)
    maximum = (rows + cols) / 2
    return (index - expected) / (maximum - expected)


def test_ari_against_contingency_reference_and_permutation():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 5, 5), generator=g)
    b = torch.randint(0, 3, (3, 5, 5), generator=g)
    got = label_agreement(a, b)
    for i in range(3):
        assert got["ari"][i] == pytest.approx(_ari_reference(a[i].flatten().tolist(), b[i].flatten().tolist()), abs=1e-12)
    perm = torch.tensor([2, 0, 3, 1])[a]
    same = label_agreement(a, perm)
    np.testing.assert_allclose(same["ari"], 1.0)
    np.testing.assert_allclose(same["nmi"], 1.0)


def test_different_grids_are_compared_on_the_finer_grid():
    coarse = torch.tensor([[[0, 1, 1], [2, 2, 0], [1, 0, 2]]])
    fine = coarse.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 6x6, same partition
    assert common_grid((3, 3), (6, 6)) == (6, 6)
    assert torch.equal(resize_label_grid(coarse, (6, 6)), fine)
    assert label_agreement(coarse, fine)["ari"][0] == pytest.approx(1.0)
    shifted = fine.roll(1, dims=2)
    assert label_agreement(coarse, shifted)["ari"][0] < 0.9
    with pytest.raises(ValueError, match="labels_b"):
        label_agreement(coarse, fine.repeat(2, 1, 1))


def test_noise_floor_from_two_seeds_uses_the_core_explainer():
    model = tiny_timm(img_size=48, reg_tokens=4)
    x = torch.randn(3, 3, 48, 48)
    lay = vit_layout(model)
    r0 = nave_grid_labels(model, x, lay, n_clusters=4, random_state=0)
    r1 = nave_grid_labels(model, x, lay, n_clusters=4, random_state=1)
    direct = [LayerClusterExplainer(model, layers=[-1]).explain(x, n_clusters=4, random_state=s).grid_labels for s in (0, 1)]
    assert torch.equal(r0.grid_labels, direct[0]) and torch.equal(r1.grid_labels, direct[1])
    floor = label_agreement(r0.grid_labels, r1.grid_labels)["ari"]
    want = [_ari_reference(direct[0][i].flatten().tolist(), direct[1][i].flatten().tolist()) for i in range(3)]
    np.testing.assert_allclose(floor, want, atol=1e-12)
    # the same seed reproduces itself
    again = nave_grid_labels(model, x, lay, n_clusters=4, random_state=0)
    np.testing.assert_allclose(label_agreement(r0.grid_labels, again.grid_labels)["ari"], 1.0)


def test_hand_model_nave_labels():
    res = nave_grid_labels(hand_vit(), torch.randn(2, 3, 32, 32), HAND_LAYOUT, n_clusters=3, random_state=0)
    assert res.grid_labels.shape == (2, 4, 4) and res.segments.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="layer"):
        nave_grid_labels(hand_vit(), torch.randn(1, 3, 32, 32), HAND_LAYOUT, layer=5)


def test_outlier_cluster_share_by_hand():
    labels = torch.tensor([[[0, 0, 1], [1, 2, 2], [2, 2, 3]]])
    mask = torch.tensor([[[True, True, False], [True, False, False], [False, True, True]]])
    # cluster 0: 2/2 outliers, 1: 1/2 (not > 0.5), 2: 1/4, 3: 1/1 -> 2 of 4 clusters
    assert outlier_cluster_share(labels, mask).tolist() == [0.5]
    assert outlier_cluster_share(labels, mask, min_fraction=0.0).tolist() == [1.0]
    assert outlier_cluster_share(labels, mask.flatten(1)).tolist() == [0.5]
    with pytest.raises(ValueError, match="outlier_mask"):
        outlier_cluster_share(labels, mask[:, :2])
    with pytest.raises(ValueError, match="min_fraction"):
        outlier_cluster_share(labels, mask, min_fraction=1.0)
