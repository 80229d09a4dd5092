"""Implicit Algorithm-1 features equal the materialised float64 reference."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from captum_nave.activations import capture_activations, resolve_layers
from captum_nave.features import ImplicitFeatures, interpolation_matrix

from reference import reference_features


@pytest.mark.parametrize("n_in,n_out", [(3, 7), (7, 13), (14, 224), (5, 5), (9, 4)])
def test_interpolation_matrix_matches_torch(n_in, n_out):
    x = torch.randn(2, 3, n_in, 6, dtype=torch.float64)
    R = interpolation_matrix(n_in, n_out, dtype=torch.float64)
    ref = F.interpolate(x, size=(n_out, 6), mode="bicubic", align_corners=False)
    got = x if R is None else torch.einsum("oi,ncij->ncoj", R, x)
    assert torch.allclose(got, ref, atol=1e-12)


@pytest.fixture(scope="module")
def resnet_acts():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 48, 80)  # non-square
    layers = resolve_layers(model, ["layer1", "layer2", "layer3", "layer4"])
    return capture_activations(model, layers, x)


@pytest.mark.parametrize("grid", [(12, 20), (48, 80), (17, 9)])
def test_implicit_operations_equal_materialised_reference(resnet_acts, grid):
    acts = resnet_acts
    # make some pixels exactly zero in one layer to exercise the zero-norm guard
    acts = [a.clone() for a in acts]
    acts[0][:, :, :2, :3] = 0
    feats = ImplicitFeatures(acts, grid, dtype=torch.float64)
    X = reference_features(acts, grid)  # (N, HW, D)
    N, P, D = X.shape
    assert feats.dim == D
    assert torch.allclose(feats.materialize().reshape(N, P, D), X, atol=1e-12)
    assert torch.allclose(feats.sq_norms().reshape(N, P), (X**2).sum(-1), atol=1e-12)
    V = torch.randn(5, D, dtype=torch.float64)
    dots = feats.dot(V).permute(0, 2, 3, 1).reshape(N, P, 5)
    assert torch.allclose(dots, X @ V.t(), atol=1e-10)
    Vn = torch.randn(N, 5, D, dtype=torch.float64)  # per-image vectors
    dots = feats.dot(Vn).permute(0, 2, 3, 1).reshape(N, P, 5)
    assert torch.allclose(dots, torch.einsum("npd,nkd->npk", X, Vn), atol=1e-10)
    Wt = torch.randn(N, 4, *grid, dtype=torch.float64)
    ws = feats.weighted_sum(Wt)
    ref = torch.einsum("nkp,npd->nkd", Wt.reshape(N, 4, P), X)
    assert torch.allclose(ws, ref, atol=1e-10)
    assert torch.allclose(feats.weighted_sum(Wt, per_image=False), ref.sum(0), atol=1e-10)
    idx = torch.tensor([0, 1, 1, 0])
    ys = torch.tensor([0, grid[0] - 1, 3, 1])
    xs = torch.tensor([0, grid[1] - 1, 2, 2])
    rows = feats.rows(idx, ys, xs)
    assert torch.allclose(rows, X[idx, ys * grid[1] + xs], atol=1e-12)


def test_zero_norm_pixels_give_zero_features_not_nan():
    a = torch.zeros(1, 4, 5, 5)
    a[0, :, 2:, 2:] = torch.rand(4, 3, 3) + 0.1
    feats = ImplicitFeatures([a], (5, 5))
    X = feats.materialize()
    assert torch.isfinite(X).all()
    assert torch.all(X.reshape(5, 5, 4)[0, 0] == 0)
    # non-zero pixels have norm exactly 1 / (1 + C)
    norms = X.norm(dim=1).reshape(5, 5)
    assert torch.allclose(norms[3:, 3:], torch.full((2, 2), 1 / 5))


def test_no_full_resolution_channel_tensor_is_allocated(resnet_acts, monkeypatch):
    """Largest tensor built by the implicit path stays far below H*W*sum(C)."""
    grid = (48, 80)
    feats = ImplicitFeatures(resnet_acts, grid)
    full = resnet_acts[0].shape[0] * grid[0] * grid[1] * feats.dim
    biggest = {"n": 0}
    orig_matmul, orig_einsum = torch.matmul, torch.einsum

    def track(t):
        if isinstance(t, torch.Tensor):
            biggest["n"] = max(biggest["n"], t.numel())
        return t

    monkeypatch.setattr(torch, "matmul", lambda *a, **k: track(orig_matmul(*a, **k)))
    monkeypatch.setattr(torch, "einsum", lambda *a, **k: track(orig_einsum(*a, **k)))
    from captum_nave.clustering.kmeans import implicit_kmeans

    implicit_kmeans(feats, 5, random_state=0, max_iter=5)
    feats2 = ImplicitFeatures(resnet_acts, grid)  # construction (norms) tracked too
    assert feats2.dim == feats.dim
    assert 0 < biggest["n"] < full / 20


def test_label_sums_equal_one_hot_weighted_sums(resnet_acts):
    grid = (13, 21)
    feats = ImplicitFeatures(resnet_acts, grid, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, *grid))
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).double()
    for per_image in (True, False):
        sums, counts = feats.label_sums(labels, 4, per_image=per_image)
        assert torch.allclose(sums, feats.weighted_sum(onehot, per_image=per_image), atol=1e-12)
        ref_counts = onehot.sum((2, 3)) if per_image else onehot.sum((0, 2, 3))
        assert torch.equal(counts, ref_counts)
