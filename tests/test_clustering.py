"""Clusterers on implicit features against independent references."""

import numpy as np
import pytest
import torch
import torchvision
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from captum_nave.activations import capture_activations, resolve_layers
from captum_nave.clustering import cluster
from captum_nave.clustering.auto_k import select_k_by_inertia_drop
from captum_nave.clustering.hierarchical import weighted_ward
from captum_nave.clustering.kmeans import implicit_kmeans
from captum_nave.clustering.pca import implicit_pca
from captum_nave.features import ImplicitFeatures

from reference import reference_features, reference_lloyd


@pytest.fixture(scope="module")
def acts():
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 32, 48)
    return capture_activations(model, resolve_layers(model, ["layer1", "layer3", "layer4"]), x)


@pytest.mark.parametrize("grid", [(8, 12), (32, 48)])
@pytest.mark.parametrize("shared", [False, True])
def test_kmeans_equals_reference_lloyd_from_same_init(acts, grid, shared):
    feats = ImplicitFeatures(acts, grid, dtype=torch.float64)
    X = reference_features(acts, grid)  # (N, P, D)
    N, P, D = X.shape
    K = 5
    g = torch.Generator().manual_seed(3)
    if shared:
        Xs = X.reshape(N * P, D)
        init = Xs[torch.randperm(N * P, generator=g)[:K]]
        ref = reference_lloyd(Xs, init).reshape(N, *grid)
        got = implicit_kmeans(feats, K, shared=True, init=init, tol=0.0)
        assert torch.equal(got.labels, ref)
    else:
        init = torch.stack([X[i, torch.randperm(P, generator=g)[:K]] for i in range(N)])
        got = implicit_kmeans(feats, K, init=init, tol=0.0)
        for i in range(N):
            ref = reference_lloyd(X[i], init[i]).reshape(grid)
            assert torch.equal(got.labels[i], ref)


def test_kmeans_float32_default_matches_float64_reference(acts):
    grid = (32, 48)
    feats = ImplicitFeatures(acts, grid)  # float32
    X = reference_features(acts, grid)
    g = torch.Generator().manual_seed(0)
    init = torch.stack([X[i, torch.randperm(X.shape[1], generator=g)[:4]] for i in range(X.shape[0])])
    got = implicit_kmeans(feats, 4, init=init.float(), tol=0.0)
    for i in range(X.shape[0]):
        ref = reference_lloyd(X[i], init[i]).numpy()
        assert adjusted_rand_score(ref, got.labels[i].reshape(-1).numpy()) >= 0.999


def test_kmeans_inertia_and_seed_determinism(acts):
    feats = ImplicitFeatures(acts, (8, 12), dtype=torch.float64)
    a = implicit_kmeans(feats, 4, random_state=7, n_init=2)
    b = implicit_kmeans(feats, 4, random_state=7, n_init=2)
    assert torch.equal(a.labels, b.labels)
    X = reference_features(acts, (8, 12))
    for i in range(X.shape[0]):
        lab = a.labels[i].reshape(-1)
        C = torch.stack([X[i][lab == k].mean(0) for k in range(4)])
        inertia = ((X[i] - C[lab]) ** 2).sum()
        assert torch.allclose(a.inertia[i], inertia, rtol=1e-8)
        # k-means++ gives a sensible local optimum: no worse than sklearn's by much
        from sklearn.cluster import KMeans

        sk = KMeans(4, n_init=2, random_state=0).fit(X[i].numpy())
        assert inertia.item() <= sk.inertia_ * 1.15


def test_pca_components_match_sklearn(acts):
    grid = (8, 12)
    feats = ImplicitFeatures(acts, grid, dtype=torch.float64)
    X = reference_features(acts, grid)
    comps, mean = implicit_pca(feats, 4, random_state=0)
    for i in range(X.shape[0]):
        sk = PCA(4, svd_solver="full").fit(X[i].numpy())
        assert np.allclose(mean[i].numpy(), sk.mean_, atol=1e-10)
        # same subspace and same directions up to sign
        cos = np.abs((comps[i].numpy() * sk.components_).sum(1))
        assert np.all(cos > 0.999), cos
    out = cluster(feats, 4, "pca", random_state=0)
    for i in range(X.shape[0]):
        proj = PCA(4, svd_solver="full").fit_transform(X[i].numpy())
        ref = np.abs(proj).argmax(1)
        assert (out.labels[i].reshape(-1).numpy() == ref).mean() > 0.99


def test_ward_direct_equals_sklearn(acts):
    grid = (8, 12)
    feats = ImplicitFeatures(acts, grid, dtype=torch.float64)
    X = reference_features(acts, grid)
    out = cluster(feats, 5, "ward")
    for i in range(X.shape[0]):
        ref = AgglomerativeClustering(5, linkage="ward").fit_predict(X[i].numpy())
        assert adjusted_rand_score(ref, out.labels[i].reshape(-1).numpy()) == 1.0


def test_weighted_ward_with_unit_weights_equals_sklearn():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(m, 0.3, size=(20, 3)) for m in (0, 2, 5, 9)])
    ours = weighted_ward(pts, np.ones(len(pts)), 4)
    ref = AgglomerativeClustering(4, linkage="ward").fit_predict(pts)
    assert adjusted_rand_score(ref, ours) == 1.0
    # duplicated points == one point of weight 2
    dup = np.concatenate([pts, pts[:5]])
    w = np.ones(len(pts))
    w[:5] = 2
    a = weighted_ward(pts, w, 4)
    b = weighted_ward(dup, np.ones(len(dup)), 4)[: len(pts)]
    assert adjusted_rand_score(a, b) == 1.0


def test_ward_prototype_path_on_large_grid(acts):
    """Ward on k-means prototypes keeps Ward's objective close to exact Ward's."""
    grid = (32, 48)  # 1536 pixels per image
    feats = ImplicitFeatures(acts, grid, dtype=torch.float64)
    X = reference_features(acts, grid)
    out_direct = cluster(feats, 4, "ward")
    from captum_nave.clustering.hierarchical import ward

    proto = ward(feats, 4, max_direct=1000, n_prototypes=200, random_state=0)

    def wcss(x, lab):
        return sum(((x[lab == k] - x[lab == k].mean(0)) ** 2).sum() for k in lab.unique())

    for i in range(feats.n_images):
        exact = wcss(X[i], out_direct.labels[i].reshape(-1))
        approx = wcss(X[i], proto[i].reshape(-1))
        assert approx <= exact * 1.10, (approx, exact)
    # and on data with planted structure both recover it exactly
    a = torch.zeros(1, 6, 40, 60)
    for k in range(3):
        a[0, k, :, 20 * k : 20 * k + 20] = 1 + torch.rand(40, 20)
    planted = ImplicitFeatures([a], (40, 60))
    lab = ward(planted, 3, max_direct=1000, n_prototypes=50, random_state=0)[0]
    truth = torch.arange(60).div(20, rounding_mode="floor").expand(40, 60)
    assert adjusted_rand_score(truth.reshape(-1), lab.reshape(-1)) == 1.0


def test_auto_k_rule_picks_largest_relative_drop():
    inertias = torch.tensor([[100.0], [80.0], [30.0], [27.0], [25.0]])  # K = 3..7
    idx = select_k_by_inertia_drop([3, 4, 5, 6, 7], inertias)
    assert idx.tolist() == [2]  # drop 80 -> 30 is the largest relative drop, K = 5


def test_auto_k_finds_planted_number_of_regions():
    # one layer whose pixels point in 5 orthogonal directions, in 5 vertical bands
    a = torch.zeros(1, 8, 20, 25)
    for k in range(5):
        a[0, k, :, 5 * k : 5 * k + 5] = 1 + torch.rand(20, 5)
    a += 0.01 * torch.rand_like(a)
    feats = ImplicitFeatures([a], (20, 25))
    out = cluster(feats, 0, "auto", random_state=0, k_range=range(3, 9))
    assert out.n_clusters.tolist() == [5]


def test_sklearn_like_estimator_plugs_in(acts):
    from sklearn.cluster import KMeans

    feats = ImplicitFeatures(acts, (8, 12), dtype=torch.float64)
    out = cluster(feats, 3, KMeans(3, n_init=1, random_state=0))
    assert out.labels.shape == (3, 8, 12)
    X = reference_features(acts, (8, 12))
    ref = KMeans(3, n_init=1, random_state=0).fit_predict(X[0].numpy())
    assert adjusted_rand_score(ref, out.labels[0].reshape(-1).numpy()) == 1.0


# ----------------------------------------------------------------------------- default tol
@pytest.fixture(scope="module")
def photo_features(lite0):
    """Float64 Algorithm-1 features of the four sample photos (EfficientNet-Lite0 with its
    ImageNet weights, blocks 4 and 5, on a 40x40 grid), one ImplicitFeatures per photo,
    and their explicit matrices (1600, 304)."""
    from captum_nave import LayerClusterExplainer
    from captum_nave.models import normalize, resize_images, sample_images

    model, info = lite0
    ex = LayerClusterExplainer(model, info["default_layers"])
    out = []
    for img in sample_images().values():
        x = normalize(resize_images(img, 128), info)
        feats = ex.features(x, resolution=(40, 40), dtype=torch.float64)
        out.append((feats, feats.materialize().numpy()))
    return out


def _sklearn_kmeans(X, init, tol, max_iter=300):
    from sklearn.cluster import KMeans

    return KMeans(len(init), init=init, n_init=1, tol=tol, max_iter=max_iter, algorithm="lloyd").fit(X)


def test_default_tol_stops_when_scikit_learn_does(photo_features):
    """From the same start as scikit-learn's KMeans, with the same tol (the default 1e-4,
    which is scikit-learn's, and larger ones), k-means ends on the same iteration with the
    same labels on real photo features: the stopping rule is scikit-learn's (labels
    unchanged, or squared centre shift <= tol x the mean per-feature variance)."""
    from sklearn.cluster import KMeans
    from captum_nave import LayerClusterExplainer

    assert LayerClusterExplainer.attribute.__wrapped__.__kwdefaults__["tol"] == KMeans().tol == 1e-4
    by_tol = {1e-2: 0, 1e-1: 0}
    for feats, X in photo_features:
        init = X[np.random.default_rng(0).choice(len(X), 6, replace=False)]
        n_strict = _sklearn_kmeans(X, init, 0.0).n_iter_
        for tol in (1e-4, 1e-2, 1e-1):
            ref = _sklearn_kmeans(X, init, tol)
            got = implicit_kmeans(feats, 6, init=torch.from_numpy(init), tol=tol)
            assert got.n_iter == ref.n_iter_, tol
            assert np.array_equal(got.labels.reshape(-1).numpy(), ref.labels_), tol
            assert float(got.inertia[0]) == pytest.approx(ref.inertia_, rel=1e-9)
            if tol in by_tol:
                by_tol[tol] += ref.n_iter_ < n_strict
    # the tolerance decided: the runs stopped before the labels settled
    # (measured: at 1e-2 and 1e-1 on all four photos; at 1e-4 on none, at this grid)
    assert by_tol[1e-2] >= 3 and by_tol[1e-1] >= 3, by_tol


def test_empty_cluster_relocation_matches_scikit_learn(photo_features):
    """A start with one centre far from every pixel leaves that cluster empty after the
    first assignment: it is moved to the pixel farthest from its centre, and that pixel
    leaves its old cluster's mean, as in scikit-learn (centres after one iteration agree);
    the runs then agree iteration for iteration."""
    for feats, X in photo_features:
        init = X[np.random.default_rng(1).choice(len(X), 5, replace=False)].copy()
        init[2] = 10.0  # far from every feature vector (their norms are below 1)
        one = _sklearn_kmeans(X, init, 1e-4, max_iter=1)
        got = implicit_kmeans(feats, 5, init=torch.from_numpy(init), tol=1e-4, max_iter=1)
        np.testing.assert_allclose(got.centers[0].numpy(), one.cluster_centers_, rtol=1e-9, atol=1e-15)
        assert np.array_equal(got.labels.reshape(-1).numpy(), one.labels_)
        for tol in (1e-4, 0.0):
            ref = _sklearn_kmeans(X, init, tol)
            got = implicit_kmeans(feats, 5, init=torch.from_numpy(init), tol=tol)
            assert got.n_iter == ref.n_iter_
            assert np.array_equal(got.labels.reshape(-1).numpy(), ref.labels_)
            assert float(got.inertia[0]) == pytest.approx(ref.inertia_, rel=1e-9)
