"""Clustering grids beyond what a code path can handle are refused up front, before the
forward pass or the features, with the parameter, the size and the limit named."""

import os

import pytest
import torch
from torch import nn

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave import explainer as explainer_mod
from captum_nave import clustering as clustering_mod
from captum_nave.clustering import KMEANS_MAX_PIXELS, check_grid_memory, check_grid_size
from captum_nave.features import MATERIALIZE_LIMIT_BYTES


class Counting(nn.Module):
    """A tiny CNN that counts its forward passes."""

    def __init__(self, channels: int = 4, upsample: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.up = nn.Upsample(scale_factor=upsample) if upsample > 1 else nn.Identity()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.up(self.conv(x)).mean((2, 3))


@pytest.fixture
def no_features(monkeypatch):
    """Fail the test if the implicit features are ever built."""

    def refuse(*args, **kwargs):
        raise AssertionError("the features were built before the grid was checked")

    monkeypatch.setattr(explainer_mod, "ImplicitFeatures", refuse)


def test_the_kmeans_limit_is_torch_multinomial_s():
    """k-means++ draws candidates with torch.multinomial, which takes at most 2**24 categories."""
    assert KMEANS_MAX_PIXELS == 2**24
    torch.multinomial(torch.ones(KMEANS_MAX_PIXELS), 1)
    with pytest.raises(RuntimeError, match=r"2\^24"):
        torch.multinomial(torch.ones(KMEANS_MAX_PIXELS + 1), 1)


@pytest.mark.parametrize(
    "kwargs, x_shape, match",
    [
        ({"resolution": (20000, 20000)}, (1, 3, 16, 16),
         r"resolution=\(20000, 20000\): a clustering grid of 20000x20000 = 400000000 pixels is more than k-means can "
         r"seed \(at most 16777216 = 2\*\*24 pixels per clustering, the limit of torch.multinomial\)"),
        ({"resolution": (4097, 4096), "clusterer": "auto"}, (1, 3, 16, 16),
         r"resolution=\(4097, 4096\): a clustering grid of 4097x4096 = 16781312 pixels is more than k-means"),
        ({"resolution": (2048, 3000), "shared": True}, (3, 3, 16, 16),
         r"resolution=\(2048, 3000\): a clustering grid of 3 images x 2048x3000 = 18432000 pixels \(shared=True\) "
         r"is more than k-means can seed .*; choose a coarser resolution, .*, or shared=False"),
        ({"resolution": "input"}, (1, 3, 4097, 4097),
         r"resolution='input': a clustering grid of 4097x4097 = 16785409 pixels is more than k-means"),
    ],
)
def test_grids_over_the_kmeans_limit_are_refused_before_the_forward_pass(kwargs, x_shape, match, no_features):
    model = Counting()
    x = torch.zeros(1, 3, 1, 1).expand(*x_shape)  # no memory for the big input
    with pytest.raises(ValueError, match=match):
        LayerClusterExplainer(model, ["conv"]).attribute(x, n_clusters=3, **kwargs)
    assert model.calls == 0


def test_a_layer_grid_over_the_limit_is_refused_before_the_features(no_features):
    """With resolution='layer' the grid is known after the forward pass: refused before
    the features (the expensive part) are built."""
    model = Counting(channels=1, upsample=64)
    x = torch.rand(1, 3, 64, 65)  # the upsampled layer is 4096 x 4160 = 17039360 pixels
    with pytest.raises(ValueError, match=r"resolution='layer': a clustering grid of 4096x4160 = 17039360 pixels"):
        LayerClusterExplainer(model, ["up"]).attribute(x, n_clusters=3)
    assert model.calls == 1


def test_implicit_clusterers_have_no_pixel_limit_and_grids_at_the_limit_pass():
    check_grid_size("kmeans", (4096, 4096), 1, shared=False)
    check_grid_size("kmeans", (2048, 4096), 2, shared=True)
    for implicit in ("ward", "pca"):
        check_grid_size(implicit, (20000, 20000), 1, shared=False, n_features=3000)
    with pytest.raises(ValueError, match="more than k-means can seed"):
        check_grid_size("kmeans", (4097, 4096), 1, shared=False)


def test_an_estimator_whose_explicit_matrix_would_exceed_the_limit_is_refused(no_features):
    from sklearn.cluster import KMeans

    model = Counting(channels=300)
    x = torch.rand(1, 3, 16, 16)
    # 2000 * 2000 pixels x 300 features x 4 bytes = 4.8 GB > 4 GiB
    with pytest.raises(ValueError, match=(
        r"clusterer: KMeans runs on the explicit feature matrix, which for a grid of 2000x2000 = 4000000 pixels "
        r"x 300 features takes 4.8 GB, more than the 4.3 GB limit \(captum_nave.features.MATERIALIZE_LIMIT_BYTES\); "
        r"choose a coarser resolution or an implicit clusterer \('kmeans', 'ward', 'pca'\)"
    )):
        LayerClusterExplainer(model, ["conv"]).attribute(x, n_clusters=3, resolution=(2000, 2000), clusterer=KMeans(3))
    assert 2000 * 2000 * 300 * 4 > MATERIALIZE_LIMIT_BYTES >= 2000 * 2000 * 250 * 4


def test_concept_clusters_seeding_batch_is_checked_before_the_forward_pass(no_features):
    model = Counting()
    cc = ConceptClusters(LayerClusterExplainer(model, ["conv"]), 3, resolution=(2048, 2048))
    x = torch.rand(5, 3, 16, 16)  # 5 x 2048 x 2048 = 20971520 pixels seeded together
    with pytest.raises(ValueError, match=(
        r"resolution=\(2048, 2048\): a clustering grid of 5 images x 2048x2048 = 20971520 pixels \(the first batch, "
        r"seeded together\) is more than k-means can seed .*; choose a coarser resolution, .*, or a smaller first batch"
    )):
        cc.fit(x)
    assert model.calls == 0


def test_cli_refuses_a_resolution_over_the_limit_before_loading_the_model(tiny_image, tmp_path, capsys, monkeypatch):
    from captum_nave import models as models_mod
    from captum_nave.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --resolution was checked")

    monkeypatch.setattr(models_mod, "load_model", no_model)
    rc = main(["explain", str(tiny_image), "--resolution", "5000x5000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "captum-nave: error: --resolution 5000x5000: a clustering grid of 5000x5000 = 25000000 pixels is more than "
        "k-means can seed (at most 16777216 = 2**24 pixels per clustering, the limit of torch.multinomial); choose a "
        "coarser resolution, e.g. 'layer' or HxW with H * W <= 16777216"
    ]
    # other clusterers have no such limit: the check does not stop them (here the model load does)
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["explain", str(tiny_image), "--resolution", "5000x5000", "--clusterer", "pca", "--out", str(tmp_path / "o")])


@pytest.mark.slow
def test_kmeans_seeding_fails_just_over_the_limit_and_works_at_it():
    """The limit is the real one of the seeding code (update KMEANS_MAX_PIXELS when it changes)."""
    from captum_nave.clustering.kmeans import implicit_kmeans
    from captum_nave.features import ImplicitFeatures

    act = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    at = ImplicitFeatures([act], (4096, 4096))
    assert implicit_kmeans(at, 2, max_iter=1, random_state=0).labels.shape == (1, 4096, 4096)
    del at
    over = ImplicitFeatures([act], (4097, 4096))
    with pytest.raises(RuntimeError, match=r"2\^24"):
        implicit_kmeans(over, 2, max_iter=1, random_state=0)


def test_a_grid_whose_per_pixel_state_cannot_fit_is_refused_before_the_forward_pass(monkeypatch, no_features):
    """Any clusterer: labels, relabelling index, per-layer scales and norms of every grid
    pixel, and the int64 segment map, must fit in the memory available now."""
    monkeypatch.setattr(clustering_mod, "_available_bytes", lambda device: 10**8)  # 100 MB free
    model = Counting()
    # (16 + (1 layer + 1) * 4) = 24 bytes per grid pixel: 2 x 1500 x 1500 x 24 = 108 MB (+ 66 kB of segments)
    ex = LayerClusterExplainer(model, ["conv"])
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match=(
        r"resolution=\(1500, 1500\): a clustering grid of 2 x 1500x1500 pixels needs at least 0.1 GB for its "
        r"per-pixel state \(labels, per-layer scales, norms, the segment map\), more than the 0.1 GB available on cpu"
    )):
        ex.attribute(x, 3, resolution=(1500, 1500), clusterer="pca")
    assert model.calls == 0
    check_grid_memory((1000, 1500), 2, n_layers=1, input_hw=(64, 64))  # 72.07 MB: fits
    with pytest.raises(ValueError, match="needs at least 0.1 GB"):
        check_grid_memory((1000, 1500), 2, n_layers=2, itemsize=8, input_hw=(64, 64))  # 40 bytes: 120 MB
    monkeypatch.setattr(clustering_mod, "_available_bytes", lambda device: None)  # unknown: no refusal
    check_grid_memory((100000, 100000), 8, n_layers=4)


def test_available_memory_is_read_from_the_system():
    free = clustering_mod._available_bytes("cpu")
    assert free is None or 0 < free <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert clustering_mod._available_bytes("meta") is None
