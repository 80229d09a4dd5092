"""Clustering grids beyond the memory available are refused up front, before the forward
pass or the features, with the parameter, the memory needed and the memory available named;
there is no limit on the number of pixels (the 2**24 of torch.multinomial is gone)."""

import pytest
import torch
from torch import nn

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave import explainer as explainer_mod
from captum_nave import clustering as clustering_mod
from captum_nave import _memory
from captum_nave.clustering import BUILTIN_CLUSTERERS, check_grid_memory, check_grid_size
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


GB = 10**9


@pytest.fixture
def ten_gb(monkeypatch):
    """10 GB available, whatever the machine has."""
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 10 * GB)


@pytest.mark.parametrize(
    "kwargs, x_shape, match",
    [
        # 400000000 pixels x 60 bytes = 24.0 GB (+ 16 x 16 x 8 bytes of segments)
        ({"resolution": (20000, 20000)}, (1, 3, 16, 16),
         r"resolution=\(20000, 20000\): a clustering grid of 20000x20000 = 400000000 pixels needs about 24.0 GB of "
         r"working memory \(60 bytes per grid pixel: labels, per-layer scales, norms, k-means\+\+ weights, "
         r"segments\), more than the 10.0 GB available on cpu; use resolution='layer', a coarser grid, fewer "
         r"images per call or a smaller image"),
        ({"resolution": (20000, 20000), "clusterer": "pca"}, (1, 3, 16, 16),
         r"resolution=\(20000, 20000\): a clustering grid of 20000x20000 = 400000000 pixels needs about 24.0 GB"),
        # 3 x 8000 x 8000 = 192000000 pixels x 60 bytes = 11.5 GB
        ({"resolution": (8000, 8000), "shared": True}, (3, 3, 16, 16),
         r"resolution=\(8000, 8000\): a clustering grid of 3 images x 8000x8000 = 192000000 pixels needs about "
         r"11.5 GB"),
        ({"resolution": "input"}, (1, 3, 20000, 20000),
         r"resolution='input': a clustering grid of 20000x20000 = 400000000 pixels needs about 24.0 GB"),
    ],
)
def test_grids_too_large_for_the_memory_are_refused_before_the_forward_pass(kwargs, x_shape, match, no_features,
                                                                             ten_gb):
    model = Counting()
    x = torch.zeros(1, 3, 1, 1).expand(*x_shape)  # no memory for the big input
    with pytest.raises(ValueError, match=match) as err:
        LayerClusterExplainer(model, ["conv"]).attribute(x, n_clusters=3, **kwargs)
    assert isinstance(err.value, MemoryError)
    assert model.calls == 0


def test_the_memory_check_is_exact_at_its_boundary(monkeypatch, ten_gb):
    """60 bytes per grid pixel for one float32 layer, 72 for two, 88 for two float64
    ones; the int64 segment map of the input is added when the grid is not the input's."""
    assert _memory.grid_bytes_per_pixel(1) == 60
    assert _memory.grid_bytes_per_pixel(2) == 64 and _memory.grid_bytes_per_pixel(2, 8) == 80
    need = 2 * 1000 * 1500 * 60 + 2 * 64 * 64 * 8
    assert check_grid_memory((1000, 1500), 2, n_layers=1, input_hw=(64, 64), limit=need) == need
    with pytest.raises(ValueError, match=r"2 images x 1000x1500 = 3000000 pixels needs about 0.2 GB .* 0.2 GB"):
        check_grid_memory((1000, 1500), 2, n_layers=1, input_hw=(64, 64), limit=need - 1)
    # at input resolution the segment map is one of the grid maps
    assert check_grid_memory((64, 64), 1, n_layers=1, input_hw=(64, 64), limit=64 * 64 * 60) == 64 * 64 * 60
    # unknown available memory: no refusal
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: None)
    check_grid_memory((100000, 100000), 8, n_layers=4)


def test_a_layer_grid_too_large_is_refused_before_the_features(no_features, monkeypatch):
    """With resolution='layer' the grid is known after the forward pass: refused before
    the features (the expensive part) are built."""
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: GB)
    model = Counting(channels=1, upsample=64)
    x = torch.rand(1, 3, 64, 65)  # the upsampled layer is 4096 x 4160 = 17039360 pixels x 60 bytes = 1.02 GB
    with pytest.raises(ValueError, match=(
        r"resolution='layer': a clustering grid of 4096x4160 = 17039360 pixels needs about 1.0 GB .* more than "
        r"the 1.0 GB available"
    )):
        LayerClusterExplainer(model, ["up"]).attribute(x, n_clusters=3)
    assert model.calls == 1


def test_implicit_clusterers_have_no_pixel_limit():
    """No 2**24-pixel limit (k-means++ draws by a cumulative sum, not torch.multinomial):
    only an estimator's explicit matrix has a size limit; the rest is the memory check."""
    for implicit in BUILTIN_CLUSTERERS:
        check_grid_size(implicit, (20000, 20000), 4, shared=True, n_features=3000)
    assert not hasattr(clustering_mod, "KMEANS_MAX_PIXELS")


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


def test_concept_clusters_seeding_batch_is_checked_before_the_forward_pass(no_features, monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: GB)
    model = Counting()
    cc = ConceptClusters(LayerClusterExplainer(model, ["conv"]), 3, resolution=(2048, 2048))
    x = torch.rand(5, 3, 16, 16)  # 5 x 2048 x 2048 = 20971520 pixels seeded together, x 60 bytes = 1.26 GB
    with pytest.raises(ValueError, match=(
        r"resolution=\(2048, 2048\) \(the first batch, seeded together\): a clustering grid of 5 images x "
        r"2048x2048 = 20971520 pixels needs about 1.3 GB"
    )):
        cc.fit(x)
    assert model.calls == 0
    ConceptClusters(LayerClusterExplainer(model, ["conv"]), 3, resolution=(2048, 2048))._check_first_batch(x[:3])


def test_cli_refuses_a_resolution_too_large_before_loading_the_model(tiny_image, tmp_path, capsys, monkeypatch):
    from captum_nave import models as models_mod
    from captum_nave.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --resolution was checked")

    monkeypatch.setattr(models_mod, "load_model", no_model)
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: GB)
    rc = main(["explain", str(tiny_image), "--resolution", "5000x5000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "captum-nave: error: --resolution 5000x5000: a clustering grid of 5000x5000 = 25000000 pixels needs about "
        "1.5 GB of working memory (60 bytes per grid pixel: labels, per-layer scales, norms, k-means++ weights, "
        "segments), more than the 1.0 GB available on cpu; use resolution='layer', a coarser grid, fewer images per "
        "call or a smaller image"
    ]
    # a grid that fits goes on (here to the model load), whatever its number of pixels
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 2 * GB)
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["explain", str(tiny_image), "--resolution", "5000x5000", "--out", str(tmp_path / "o")])


@pytest.mark.slow
def test_kmeans_works_just_over_2_to_the_24_pixels():
    """torch.multinomial refuses more than 2**24 categories; k-means++ draws by a cumulative
    sum instead, so a 4097x4096 grid (16781312 pixels) is seeded and clustered: the labels
    are the nearest of the final centres on the explicit float64 features."""
    from captum_nave.clustering.kmeans import implicit_kmeans
    from captum_nave.features import ImplicitFeatures

    with pytest.raises(RuntimeError, match=r"2\^24"):  # the limit there was
        torch.multinomial(torch.ones(2**24 + 1), 1)
    act = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    over = ImplicitFeatures([act], (4097, 4096), dtype=torch.float64)
    assert over.n_pixels == 2**24 + 4096
    km = implicit_kmeans(over, 3, max_iter=2, random_state=0)
    X = over.materialize()  # (P, 2)
    d = (X.pow(2).sum(1, keepdim=True) - 2 * X @ km.centers[0].T + km.centers[0].pow(2).sum(1)).clamp_min(0)
    mind = d.min(1).values
    own = d.gather(1, km.labels.reshape(-1, 1))[:, 0]
    assert torch.allclose(own, mind, rtol=0, atol=1e-12)  # the nearest centre (ties within rounding)
    assert km.labels.unique().numel() == 3
    assert float(km.inertia[0]) == pytest.approx(float(mind.sum()), rel=1e-9)


def test_available_memory_is_read_from_the_system():
    import os

    free = _memory.available_bytes("cpu")
    assert free is None or 0 < free <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert _memory.available_bytes("meta") is None
