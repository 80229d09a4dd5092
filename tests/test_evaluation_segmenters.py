"""Image preparation (normalise + pad), NAVE as a segmenter, and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from captum_nave.evaluation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorLocProtocol,
    GridSegmenter,
    NaveSegmenter,
    SlicSegmenter,
    grid_labels,
    padded_size,
    prepare_image,
)
from captum_nave.explainer import LayerClusterExplainer


def _rgb(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- preparation
def test_prepare_image_normalises_then_zero_pads_bottom_right():
    img = _rgb(21, 35)
    x = prepare_image(img, pad_multiple=16)
    assert x.shape == (1, 3, 32, 48) and x.dtype == torch.float32
    ref = (img.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, :21, :35].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    assert torch.all(x[0, :, 21:, :] == 0) and torch.all(x[0, :, :, 35:] == 0)
    assert prepare_image(img).shape == (1, 3, 21, 35)  # no padding by default
    assert padded_size(21, 35, (14, 16)) == (28, 48)


def test_prepare_image_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        prepare_image(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="image"):
        prepare_image(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="pad_multiple"):
        prepare_image(_rgb(4, 4), pad_multiple=0)


# --------------------------------------------------------------------------- NAVE
def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()
    )


def test_nave_segmenter_equals_the_explainer_on_the_prepared_image():
    model = _tiny_cnn().eval()
    img = _rgb(30, 41, seed=1)
    seg = NaveSegmenter(model, ["3"], n_clusters=3, random_state=7, pad_multiple=8)
    labels = seg(img)
    assert labels.shape == (32, 48) and labels.dtype == np.int64
    x = prepare_image(img, pad_multiple=8)
    want = LayerClusterExplainer(model, ["3"]).explain(x, n_clusters=3, random_state=7).segments
    np.testing.assert_array_equal(labels, want[0, 0].numpy())
    assert seg.config()["pad_multiple"] == [8, 8] and seg.config()["layers"] == ["3"]


def test_nave_segmenter_auto_k_equals_the_explainer_elbow_rule():
    model = _tiny_cnn().eval()
    img = _rgb(40, 40, seed=3)
    seg = NaveSegmenter(model, ["1", "3"], n_clusters="auto", random_state=2,
                        explain_kwargs={"k_range": (2, 3, 4, 5, 6)})
    labels = seg(img)
    x = prepare_image(img)
    res = LayerClusterExplainer(model, ["1", "3"]).explain(x, n_clusters="auto", random_state=2, k_range=(2, 3, 4, 5, 6))
    np.testing.assert_array_equal(labels, res.segments[0, 0].numpy())
    k = int(res.n_clusters[0])
    assert k != 5 and len(np.unique(labels)) == k  # the elbow's K, not the default 5
    assert seg.config()["n_clusters"] == "auto"


def test_nave_segmenter_pads_vits_to_the_patch_size_and_leaves_the_model_alone():
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=64, depth=2, embed_dim=64,
        num_heads=2, reg_tokens=4, num_classes=10, dynamic_img_size=True,
    )
    vit.train()  # the segmenter must not switch modes
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    seg = NaveSegmenter(vit, [-1], n_clusters=3)
    assert seg.pad_multiple == (16, 16)
    with pytest.warns(UserWarning, match="training mode"):
        labels = seg(_rgb(50, 70, seed=2))
    assert labels.shape == (64, 80)
    blocks = labels.reshape(4, 16, 5, 16)  # one label per 16x16 patch
    assert np.all(blocks == blocks[:, :1, :, :1])
    assert vit.training
    assert all(torch.equal(state[k], v) for k, v in vit.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in vit.modules())


def test_nave_segmenter_argument_errors():
    with pytest.raises(TypeError, match="model"):
        NaveSegmenter(lambda x: x, ["a"])
    with pytest.raises(ValueError, match="n_clusters"):
        NaveSegmenter(_tiny_cnn(), ["3"], n_clusters=1)
    with pytest.raises(ValueError, match="n_clusters: expected an int >= 2 or 'auto', got 'many'"):
        NaveSegmenter(_tiny_cnn(), ["3"], n_clusters="many")
    with pytest.raises(ValueError, match="layers"):
        NaveSegmenter(_tiny_cnn(), ["nope"])


# --------------------------------------------------------------------------- baselines
def test_grid_labels_partition():
    lab = grid_labels(6, 7, 3, 2)
    assert lab.shape == (6, 7)
    np.testing.assert_array_equal(lab[:, 0], [0, 0, 2, 2, 4, 4])
    np.testing.assert_array_equal(lab[0], [0, 0, 0, 0, 1, 1, 1])
    sizes = np.bincount(lab.ravel())
    assert len(sizes) == 6 and sizes.max() - sizes.min() <= 2
    with pytest.raises(ValueError, match="rows"):
        grid_labels(4, 4, 0, 2)


def test_slic_follows_a_colour_boundary_and_scores_its_box():
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:, :] = (20, 40, 200)
    img[:, 30:] = (230, 200, 20)
    labels = SlicSegmenter(n_segments=2)(img)
    assert labels.shape == (40, 60)
    assert len(np.unique(labels[:, :30])) == 1 and len(np.unique(labels[:, 30:])) == 1
    assert labels[0, 0] != labels[0, 59]
    sel = CorLocProtocol(min_area=4, border=0).evaluate(labels, [[30, 0, 60, 40]])
    assert sel["outer"].outer_box == (30.0, 0.0, 59.0, 39.0) and sel["outer"].correct


def test_baselines_pad_like_the_model_input():
    img = _rgb(20, 30)
    lab = SlicSegmenter(n_segments=3, pad_multiple=16)(img)
    assert lab.shape == (32, 32)
    pad_id = lab[25, 31]
    assert np.all(lab[20:, :] == pad_id) and np.all(lab[:, 30:] == pad_id)
    assert pad_id not in lab[:20, :30]
    assert GridSegmenter(2, 2, pad_multiple=7)(img).shape == (21, 35)
    with pytest.raises(ValueError, match="n_segments"):
        SlicSegmenter(n_segments=0)
