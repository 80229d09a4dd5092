"""LayerClusterExplainer: known answers, Captum conventions, safety and errors."""

import copy

import pytest
import torch
import torchvision
from captum.attr import FeatureAblation
from captum.attr._utils.attribution import LayerAttribution
from sklearn.metrics import adjusted_rand_score
from torch import nn

from captum_nave import LayerClusterExplainer, NaveResult
from synthetic import shapes_dataset


class DirectionNet(nn.Module):
    """Its 'feat' layer is the input itself; 'pooled' is a 2x average pool of it."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.pooled = nn.AvgPool2d(2)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        f = self.feat(x)
        p = self.pooled(f)
        return self.head(p.mean((2, 3)))


def direction_image():
    """Three regions of distinct areas with one-hot channel directions and wild magnitudes."""
    H, W = 8, 12
    truth = torch.zeros(H, W, dtype=torch.long)
    truth[:, 7:] = 1  # 40 px
    truth[:3, :4] = 2  # 12 px; region 0 keeps 44 px
    x = torch.zeros(1, 3, H, W)
    for k in range(3):
        x[0, k][truth == k] = 1.0
    # magnitudes vary 100x within every region: normalisation must remove them
    mag = torch.where(torch.arange(W) % 2 == 0, 0.1, 10.0).expand(H, W)
    return x * mag, truth


def test_known_clusters_give_exact_segment_map():
    x, truth = direction_image()
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    # (PCA-argmax is checked against scikit-learn in test_clustering: with |projection|
    # it cannot separate clusters that lie on opposite sides of one component.)
    for clusterer in ("kmeans", "ward"):
        seg = ex.attribute(x, n_clusters=3, clusterer=clusterer, random_state=0)
        # ids are ordered by decreasing area: 0 (44 px), 1 (40 px), 2 (12 px)
        assert torch.equal(seg[0, 0], truth), clusterer


def test_known_clusters_at_input_resolution_through_nearest_resize():
    x, truth = direction_image()
    x = x.repeat_interleave(4, 2).repeat_interleave(4, 3)  # 32 x 48 input
    big_truth = truth.repeat_interleave(4, 0).repeat_interleave(4, 1)
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    res = ex.explain(x, n_clusters=3, resolution=(8, 12), random_state=0)
    # grid 8x12 from a bicubic *downsample* of the 32x48 layer, then nearest resize up
    assert res.grid == (8, 12)
    assert torch.equal(res.segments[0, 0], big_truth)


def test_layer_weighting_one_over_one_plus_channels():
    """Each layer's block of the feature is its unit vector times 1/(1+C): a wide layer with
    huge activations does not dominate. Layer A (2 channels) splits left/right, layer B (50
    channels, values 1000) splits top/bottom: the blocks are exactly the hand-computed ones,
    and A's split, worth (1/3)^2 per channel against B's (1/51)^2, is the one k-means finds."""
    H, W = 6, 6
    a = torch.zeros(1, 2, H, W)
    a[0, 0, :, :3] = 1
    a[0, 1, :, 3:] = 1  # layer A: left / right
    b = torch.zeros(1, 50, H, W)
    b[0, :25, :3, :] = 1000
    b[0, 25:, 3:, :] = 1000  # layer B: top / bottom
    from captum_nave.clustering.kmeans import implicit_kmeans
    from captum_nave.features import ImplicitFeatures

    f = ImplicitFeatures([a, b], (H, W), dtype=torch.float64)
    X = f.materialize().reshape(H, W, 52)
    expected = torch.zeros(H, W, 52, dtype=torch.float64)
    expected[:, :3, 0] = 1 / 3
    expected[:, 3:, 1] = 1 / 3
    expected[:3, :, 2:27] = 1 / (5 * 51)  # 25 equal channels: unit vector entries 1/5
    expected[3:, :, 27:] = 1 / (5 * 51)
    assert torch.allclose(X, expected, rtol=1e-12, atol=0)
    left_right = float((X[0, 0] - X[0, 5]).pow(2).sum())
    assert left_right == pytest.approx(2 / 9 + 0, rel=1e-12)  # same row: B agrees
    assert float((X[0, 0] - X[5, 0]).pow(2).sum()) == pytest.approx(2 / 51**2, rel=1e-12)
    labels = implicit_kmeans(f, 2, random_state=0, n_init=4).labels[0]
    assert torch.equal(labels[:, :3].unique(), labels[:, 0].unique()) and labels[:, :3].unique().numel() == 1
    assert labels[0, 0] != labels[0, 5] and torch.equal(labels[:, 3:], labels[:, 3:4].expand(H, 3))


def test_result_object_and_centroids():
    x, truth = direction_image()
    ex = LayerClusterExplainer(DirectionNet(), ["feat", "pooled"])
    res = ex.explain(x, n_clusters=3, random_state=0)
    assert isinstance(res, NaveResult)
    assert res.layer_shapes == [(3, 8, 12), (3, 4, 6)] and res.grid == (8, 12)
    assert res.centroids.shape == (1, 3, 6) and res.n_clusters.tolist() == [3]
    assert res.config["layers"] == ["feat", "pooled"] and res.config["clusterer"] == "kmeans"
    assert set(res.timings) == {"forward", "features", "clustering", "total"}
    # centroids are the means of the segment's features, inertia their residual
    from captum_nave.features import ImplicitFeatures
    from captum_nave.activations import capture_activations

    acts = capture_activations(ex.forward_func, ex.layers, x)
    X = ImplicitFeatures(acts, (8, 12)).materialize()
    lab = res.grid_labels[0].reshape(-1)
    for k in range(3):
        assert torch.allclose(res.centroids[0, k], X[lab == k].mean(0), atol=1e-6)
    inertia = sum(((X[lab == k] - X[lab == k].mean(0)) ** 2).sum() for k in range(3))
    assert torch.allclose(res.inertia[0], inertia, rtol=1e-4, atol=1e-7)


def test_captum_conventions_and_feature_ablation():
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    ex = LayerClusterExplainer(model, ["layer3", "layer4"])
    assert isinstance(ex, LayerAttribution)
    assert ex.has_convergence_delta() is False and ex.multiplies_by_inputs is False
    x = torch.randn(2, 3, 64, 64)
    seg = ex.attribute(x, n_clusters=4, random_state=0)
    assert seg.dtype == torch.int64 and seg.shape == (2, 1, 64, 64)
    assert int(seg.min()) >= 0 and int(seg.max()) <= 3
    scores = FeatureAblation(model).attribute(x, target=1, feature_mask=seg)
    # score of a segment == logit drop when that segment is set to the baseline 0
    with torch.no_grad():
        full = model(x)[:, 1]
        for i in range(2):
            for s in seg[i].unique():
                xa = x[i : i + 1].clone()
                xa[:, :, seg[i, 0] == s] = 0
                expected = full[i] - model(xa)[0, 1]
                got = scores[i][:, seg[i, 0] == s]
                assert torch.allclose(got, expected.expand_as(got), atol=1e-4)
    # tuple in, tuple out
    out = ex.attribute((x,), n_clusters=4, random_state=0)
    assert isinstance(out, tuple) and torch.equal(out[0], seg)


def test_additional_forward_args_and_layer_input():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x, scale):
            return self.act(self.conv(x * scale)).mean((2, 3))

    m = Scaled()
    x = torch.randn(2, 3, 16, 16)
    ex = LayerClusterExplainer(m, ["act"])
    a = ex.attribute(x, n_clusters=3, random_state=0, additional_forward_args=(2.0,))
    b = LayerClusterExplainer(m, ["conv"]).attribute(
        x, n_clusters=3, random_state=0, additional_forward_args=2.0
    )
    c = ex.attribute(x, n_clusters=3, random_state=0, additional_forward_args=(2.0,), attribute_to_layer_input=True)
    # the input of 'act' is the output of 'conv'
    assert torch.equal(b, c)
    # the extra argument reaches the model: the features are those of relu(conv(2 x)) ...
    from reference import reference_features

    with torch.no_grad():
        want = reference_features([m.act(m.conv(2.0 * x))], (16, 16))
    got = ex.features(x, additional_forward_args=(2.0,), dtype=torch.float64).materialize()
    assert torch.allclose(got, want.reshape(-1, 8), rtol=1e-6, atol=1e-9)
    # ... and the segments those of a model that multiplies by 2 itself
    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = m

        def forward(self, x):
            return self.inner(x, 2.0)

    doubled = LayerClusterExplainer(Doubled(), ["inner.act"]).attribute(x, n_clusters=3, random_state=0)
    assert torch.equal(a, doubled)
    # a scale that changes the ReLU pattern (-1) changes the segments: the argument is used
    assert not torch.equal(a, ex.attribute(x, n_clusters=3, random_state=0, additional_forward_args=(-1.0,)))


def test_shared_clustering_gives_consistent_ids_across_images():
    x, truth = direction_image()
    # second image: same directions, regions swapped left/right
    x2 = torch.flip(x, dims=[3])
    batch = torch.cat([x, x2])
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    seg = ex.attribute(batch, n_clusters=3, shared=True, random_state=0)[:, 0]
    # the same direction gets the same id in both images
    assert torch.equal(seg[1], torch.flip(seg[0], dims=[1]))
    for k in range(3):
        ids0 = seg[0][truth == k].unique()
        ids1 = seg[1][torch.flip(truth, dims=[1]) == k].unique()
        assert ids0.numel() == 1 and torch.equal(ids0, ids1)


def test_determinism_with_random_state():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 64, 64)
    ex = LayerClusterExplainer(model, ["layer2", "layer3"])
    for clusterer in ("kmeans", "pca", "auto"):
        a = ex.attribute(x, n_clusters=5, random_state=3, clusterer=clusterer)
        b = ex.attribute(x, n_clusters=5, random_state=3, clusterer=clusterer)
        assert torch.equal(a, b), clusterer
        # an image's segments do not depend on the rest of the batch or its position
        alone = ex.attribute(x[2:3], n_clusters=5, random_state=3, clusterer=clusterer)
        moved = ex.attribute(x[[2, 0]], n_clusters=5, random_state=3, clusterer=clusterer)
        assert adjusted_rand_score(alone.flatten(), a[2].flatten()) > 0.999, clusterer
        assert adjusted_rand_score(alone.flatten(), moved[0].flatten()) > 0.999, clusterer


def _snapshot(model):
    return (
        copy.deepcopy(model.state_dict()),
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    )


def _same(a, b):
    sa, ta, ga, ha = a
    sb, tb, gb, hb = b
    return ta == tb and ga == gb and ha == hb and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_untouched_and_hooks_removed_after_success_and_failure():
    model = torchvision.models.resnet18(weights=None)
    model.train()  # BatchNorm would update running stats in a forward pass
    model.layer1.requires_grad_(False)
    before = _snapshot(model)
    ex = LayerClusterExplainer(model, ["layer2", "layer3"])
    with pytest.warns(UserWarning, match="training mode"):
        ex.attribute(torch.randn(2, 3, 64, 64), n_clusters=3, random_state=0)
    assert _same(before, _snapshot(model))
    # failure after the forward pass (too many clusters)
    with pytest.raises(ValueError, match="n_clusters"), pytest.warns(UserWarning):
        ex.attribute(torch.randn(2, 3, 64, 64), n_clusters=1000)
    assert _same(before, _snapshot(model))

    # failure inside the forward pass
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model.fc = Boom()
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), pytest.warns(UserWarning):
        LayerClusterExplainer(model, ["layer4", "fc"]).attribute(torch.randn(1, 3, 64, 64), n_clusters=2)
    assert _same(before, _snapshot(model))
    # no gradients were computed
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_raise_clear_errors():
    model = torchvision.models.resnet18(weights=None).eval()
    ex = LayerClusterExplainer(model, ["layer3"])
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"n_clusters: expected an int >= 2 .*got 1"):
        ex.attribute(x, n_clusters=1)
    with pytest.raises(ValueError, match=r"n_clusters: must be at most the number of grid pixels \(4x4 = 16\), got 17"):
        ex.attribute(x, n_clusters=17)
    with pytest.raises(ValueError, match=r"inputs: expected a 4-D tensor \(N, C, H, W\), got shape \(3, 64, 64\)"):
        ex.attribute(x[0], n_clusters=3)
    with pytest.raises(ValueError, match="inputs: expected a non-empty batch, got N = 0"):
        ex.attribute(x[:0], n_clusters=3)
    with pytest.raises(ValueError, match="resolution: expected 'layer', 'input' or a pair"):
        ex.attribute(x, n_clusters=3, resolution="full")
    with pytest.raises(ValueError, match="clusterer: expected one of"):
        ex.attribute(x, n_clusters=3, clusterer="dbscan")
    with pytest.raises(TypeError, match="clusterer: expected a name or an object with fit_predict"):
        ex.attribute(x, n_clusters=3, clusterer=object())
    with pytest.raises(ValueError, match=r"layers: .*fc.*not spatial"):
        LayerClusterExplainer(model, ["fc"]).attribute(x, n_clusters=3)
    with pytest.raises(ValueError, match="layers: no layer named 'layer9'"):
        LayerClusterExplainer(model, ["layer9"])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"inputs: expected finite values, got 1 NaN and 0 infinite \(first at image 0, channel 0, row 0, column 0\)"):
        ex.attribute(bad, n_clusters=3)
    meta_model = torchvision.models.resnet18(weights=None).to("meta")
    with pytest.raises(ValueError, match=r"inputs: expected a tensor on the model's device meta, got a tensor on cpu"):
        LayerClusterExplainer(meta_model, ["layer3"]).attribute(x, n_clusters=3)
    with pytest.raises(ValueError, match="num_prefix_tokens: expected an int >= 0 or None, got -1"):
        LayerClusterExplainer(model, ["layer3"], num_prefix_tokens=-1)
    with pytest.raises(TypeError, match="random_state"):
        ex.attribute(x, n_clusters=3, random_state="seed")


def _best_iou(seg, masks):
    ious = []
    for s, m in zip(seg[:, 0], masks):
        best = 0.0
        for k in s.unique():
            a = s == k
            best = max(best, ((a & m).sum() / (a | m).sum()).item())
        ious.append(best)
    return sum(ious) / len(ious)


def test_trained_cnn_segments_the_shape_and_random_init_does_not(shape_nets):
    trained, random_init = shape_nets
    x, masks, _, _ = shapes_dataset(40, 48, seed=123)  # held-out images
    layers = ["stage1", "stage2"]
    iou_trained = _best_iou(LayerClusterExplainer(trained, layers).attribute(x, n_clusters=3, random_state=0), masks)
    iou_random = _best_iou(LayerClusterExplainer(random_init, layers).attribute(x, n_clusters=3, random_state=0), masks)
    assert iou_trained >= 0.7, (iou_trained, iou_random)
    assert iou_trained >= iou_random + 0.15, (iou_trained, iou_random)


def test_trained_model_exactness_against_reference(shape_nets):
    """Implicit k-means equals the materialised float64 reference on a trained model too."""
    from captum_nave.activations import capture_activations
    from captum_nave.clustering.kmeans import implicit_kmeans
    from captum_nave.features import ImplicitFeatures
    from reference import reference_features, reference_lloyd

    trained, _ = shape_nets
    x, _, _, _ = shapes_dataset(2, 48, seed=7)
    acts = capture_activations(trained, [trained.stem, trained.stage2], x[:, :, :, :40])  # non-square
    grid = (48, 40)
    X = reference_features(acts, grid)
    init = X[:, torch.randperm(X.shape[1], generator=torch.Generator().manual_seed(0))[:4]]
    got = implicit_kmeans(ImplicitFeatures(acts, grid), 4, init=init.float(), tol=0.0)
    for i in range(2):
        ref = reference_lloyd(X[i], init[i])
        assert adjusted_rand_score(ref, got.labels[i].reshape(-1)) >= 0.999
