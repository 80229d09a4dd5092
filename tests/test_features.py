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


# --------------------------------------------------------------------------- operators as taps
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("n_in,n_out", [(14, 224), (7, 300), (9, 4), (5, 5), (300, 17), (3, 7)])
@pytest.mark.parametrize("dense", [True, False])
def test_interp1d_apply_and_adjoint_match_torch(mode, n_in, n_out, dense):
    from captum_nave.interpolation import Interp1d

    op = Interp1d(n_in, n_out, mode=mode, dtype=torch.float64)
    if not dense:
        op.dense = None  # the taps path, used for large grids
    x = torch.randn(2, 3, n_in, 6, dtype=torch.float64)
    ref = F.interpolate(x, size=(n_out, 6), mode=mode, align_corners=False)
    assert torch.allclose(op.apply(x, -2), ref, atol=1e-12)
    assert torch.allclose(op.apply(x.transpose(-1, -2), -1), ref.transpose(-1, -2), atol=1e-12)
    lo, hi = n_out // 3, n_out // 3 + max(1, n_out // 2)
    assert torch.allclose(op.apply(x, -2, (lo, hi)), ref[:, :, lo:hi], atol=1e-12)
    # adjoint: <R x, y> = <x, R^T y>, also for a range of output rows
    y = torch.randn(2, 3, hi - lo, 6, dtype=torch.float64)
    lhs = (ref[:, :, lo:hi] * y).sum()
    rhs = (x * op.adjoint(y, -2, (lo, hi))).sum()
    assert torch.allclose(lhs, rhs, atol=1e-10)
    yt = y.transpose(-1, -2)
    assert torch.allclose((x.transpose(-1, -2) * op.adjoint(yt, -1, (lo, hi))).sum(), lhs, atol=1e-10)
    assert op.index.shape[1] <= (1 if n_in == n_out else 4 if mode == "bicubic" else 2)


def _features_and_reference(acts, grid):
    return ImplicitFeatures(acts, grid, dtype=torch.float64), reference_features(acts, grid)


@pytest.mark.parametrize("grid", [(12, 20), (48, 80), (17, 9)])
@pytest.mark.parametrize("taps_only", [False, True])
def test_tiled_and_single_pixel_operations_equal_reference(resnet_acts, grid, taps_only, monkeypatch):
    """Tiles of rows, single pixels, and the taps path of large grids give the reference's values."""
    import captum_nave.interpolation as interp_mod
    import captum_nave.layer_features as layer_mod

    if taps_only:
        monkeypatch.setattr(interp_mod, "DENSE_LIMIT", 0)
    monkeypatch.setattr(layer_mod, "CHUNK_ELEMENTS", 2 * 5 * grid[1] * 3)  # tiles of ~3 rows
    feats, X = _features_and_reference(resnet_acts, grid)
    N, P, D = X.shape
    assert torch.allclose(feats.materialize().reshape(N, P, D), X, atol=1e-12)
    assert torch.allclose(feats.sq_norms().reshape(N, P), (X**2).sum(-1), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    for V in (torch.randn(1, 5, D, generator=g, dtype=torch.float64), torch.randn(N, 5, D, generator=g, dtype=torch.float64)):
        ref = torch.einsum("npd,nkd->npk", X, V.expand(N, -1, -1))  # (N, P, 5)
        off = torch.randn(V.shape[0], 5, generator=g, dtype=torch.float64)
        lo, hi = grid[0] // 3, grid[0] // 3 + 2
        part = feats.dot(V, (lo, hi), offsets=off).permute(0, 2, 3, 1)  # (N, 2, W, 5)
        want = (ref - off[:, None, :]).reshape(N, *grid, 5)[:, lo:hi]
        assert torch.allclose(part, want, atol=1e-10)
        # single pixels: all of them (the low-resolution contraction pays) and a few (explicit rows)
        for n_px in (N * P, 4):
            idx = torch.randperm(N * P, generator=g)[:n_px].sort().values
            n, p = idx // P, idx % P
            got = feats.dot_at(V, n, p // grid[1], p % grid[1])
            assert torch.allclose(got, ref[n, p], atol=1e-10)
    labels = torch.randint(0, 4, (N, *grid), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 4).double().reshape(N, P, 4)
    for per_image in (True, False):
        sums, counts = feats.label_sums(labels, 4, per_image=per_image)
        ref_sums = torch.einsum("npk,npd->nkd", onehot, X)
        assert torch.allclose(sums, ref_sums if per_image else ref_sums.sum(0), atol=1e-10)
        # sparse: weighted sums of a few pixels (and of all of them: the adjoint path)
        for n_px in (5, N * P):
            idx = torch.randperm(N * P, generator=g)[:n_px]
            n, p = idx // P, idx % P
            w = torch.randn(n_px, generator=g, dtype=torch.float64)
            lab = labels.reshape(N, P)[n, p]
            s, c = feats.label_sums_at(n, p // grid[1], p % grid[1], lab, w, 4, per_image=per_image)
            ref_s = torch.zeros(N, 4, D, dtype=torch.float64).index_put_((n, lab), w[:, None] * X[n, p], accumulate=True)
            ref_c = torch.zeros(N, 4, dtype=torch.float64).index_put_((n, lab), w, accumulate=True)
            assert torch.allclose(s, ref_s if per_image else ref_s.sum(0), atol=1e-10)
            assert torch.allclose(c, ref_c if per_image else ref_c.sum(0), atol=1e-12)


def test_concat_and_from_layers_equal_the_features_of_the_whole_batch():
    """Parts of a batch (as the distributed fit gathers them) rebuild the batch's features
    exactly: same explicit matrix and squared norms as the features of the whole batch."""
    g = torch.Generator().manual_seed(0)
    acts = [torch.rand(5, 3, 4, 6, generator=g, dtype=torch.float64),
            torch.rand(5, 7, 2, 3, generator=g, dtype=torch.float64)]
    acts[0][1, :, 0, 0] = 0  # a zero-norm pixel: scale 0, squared norm 0
    whole = ImplicitFeatures(acts, (8, 12))
    parts = [ImplicitFeatures([a[:2] for a in acts], (8, 12)), ImplicitFeatures([a[2:] for a in acts], (8, 12))]
    both = ImplicitFeatures.concat(parts)
    assert torch.equal(both.materialize(), whole.materialize())
    assert torch.equal(both.sq_norms(), whole.sq_norms())
    with pytest.raises(ValueError, match="parts: expected features with the same grid"):
        ImplicitFeatures.concat([parts[0], ImplicitFeatures([a[2:] for a in acts], (8, 11))])
