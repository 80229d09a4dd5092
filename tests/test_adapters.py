"""The adapter registry: lookup by type, the registration hook, overrides, hand-written layouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision
from torch import nn

from captum_nave import LayerClusterExplainer
from captum_nave.adapters import (
    GenericAdapter,
    ModelAdapter,
    TimmCNNAdapter,
    TimmViTAdapter,
    TorchvisionCNNAdapter,
    TorchvisionViTAdapter,
    get_adapter,
    logits_function,
    register_adapter,
    unregister_adapter,
    unwrap_output,
)
from captum_nave.attribution import attribute
from captum_nave.models import default_layers
from test_registers_models import HAND_LAYOUT, hand_vit


def _timm_vit(**kw):
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=5, **kw).eval()


def test_families_are_found_by_type():
    cases = [
        (_timm_vit(), TimmViTAdapter, "timm-vit"),
        (timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=1), TimmViTAdapter, "timm-vit"),
        (timm.create_model("efficientnet_lite0", pretrained=False), TimmCNNAdapter, "timm-cnn"),
        (timm.create_model("resnet18", pretrained=False), TimmCNNAdapter, "timm-cnn"),
        (torchvision.models.resnet18(weights=None), TorchvisionCNNAdapter, "torchvision-cnn"),
        (torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                              hidden_dim=16, mlp_dim=32), TorchvisionViTAdapter, "torchvision-vit"),
        (nn.Sequential(nn.Conv2d(3, 4, 3)), GenericAdapter, "generic"),
    ]
    for model, cls, family in cases:
        a = get_adapter(model)
        assert type(a) is cls and a.family == family, type(model).__name__
    eva = cases[1][0]
    acc = get_adapter(eva).attention(0)
    assert not acc.exact and acc.eager is not None  # rotary: read probabilities on the eager path


def test_default_layers_per_family():
    assert default_layers(timm.create_model("efficientnet_lite0", pretrained=False)) == ["blocks.4", "blocks.5"]
    assert default_layers(torchvision.models.resnet18(weights=None)) == ["layer3", "layer4"]
    eff = torchvision.models.efficientnet_b0(weights=None)
    assert default_layers(eff) == [f"features.{len(eff.features) - 4}", f"features.{len(eff.features) - 3}"]
    assert default_layers(torchvision.models.convnext_tiny(weights=None)) == ["features.5", "features.7"]
    assert default_layers(_timm_vit(reg_tokens=2)) == ["blocks.1"]
    assert default_layers(nn.Sequential(nn.Linear(2, 2))) == []


def test_logits_are_unwrapped_from_model_outputs():
    t = torch.randn(2, 3)
    assert unwrap_output(t) is t
    assert unwrap_output(SimpleNamespace(logits=t)) is t
    assert unwrap_output({"logits": t, "other": 1}) is t
    assert unwrap_output((t, None)) is t
    with pytest.raises(TypeError, match="model: the forward pass returned str"):
        unwrap_output("nope")

    class Wrapped(nn.Module):  # a model returning an object with .logits (as Hugging Face does)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return SimpleNamespace(logits=self.fc(self.conv(x).mean(dim=(2, 3))))

    m = Wrapped().eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(logits_function(m)(x), m(x).logits)
    res = attribute("gradcam", m, x, "auto", layer="conv")
    assert torch.equal(res.target, m(x).logits.argmax(1))


def test_register_adapter_adds_a_family_first():
    class Odd(nn.Module):
        """Tokens [R, CLS, patches]; blocks in 'stack'; attention 'mix' with a fused 'to_qkv'."""

        def __init__(self):
            super().__init__()
            self.inner = hand_vit()

        def forward(self, x):
            return self.inner(x)

    class OddAdapter(ModelAdapter):
        family = "odd"

        @classmethod
        def matches(cls, model):
            return isinstance(model, Odd)

        def _read_layout(self):
            return HAND_LAYOUT.with_overrides(blocks="inner.layers", source="odd")

        def default_layers(self):
            return ["inner.layers.1"]

    model = Odd().eval()
    assert get_adapter(model).layout is None or get_adapter(model).family == "generic"
    register_adapter(OddAdapter)
    try:
        a = get_adapter(model)
        assert isinstance(a, OddAdapter)
        assert default_layers(model) == ["inner.layers.1"]
        ex = LayerClusterExplainer(model, [-1])
        assert ex.layers[0] is model.inner.layers[-1] and ex.num_prefix_tokens == 3
        assert a.attention(0).qkv is model.inner.layers[0].mix.to_qkv
    finally:
        unregister_adapter(OddAdapter)
    assert not isinstance(get_adapter(model), OddAdapter)
    with pytest.raises(TypeError, match="adapter_cls"):
        register_adapter(dict)  # type: ignore[arg-type]


def test_hand_written_layout_is_an_adapter():
    model = hand_vit()
    a = ModelAdapter(model, HAND_LAYOUT)
    assert [n for n, _ in a.blocks()] == ["layers.0", "layers.1", "layers.2"]
    acc = a.attention(-1)
    assert acc.index == 2 and acc.qkv is model.layers[2].mix.to_qkv and acc.proj is model.layers[2].mix.out
    assert acc.layer_scale is model.layers[2].scale1 and acc.num_heads == 2 and acc.scale is None
    assert a.grid((32, 48)) == (4, 6)
    with pytest.raises(ValueError, match="index: expected a block index"):
        a.attention(3)
    with pytest.raises(TypeError, match="layout: expected a ViTLayout"):
        ModelAdapter(model, "layers")  # type: ignore[arg-type]


def test_overrides_replace_what_is_read():
    vit = _timm_vit(reg_tokens=2)
    a = get_adapter(vit, num_prefix_tokens=3, patch_size=8)
    assert a.num_prefix_tokens == 3 and a.layout.register_indices == (1, 2)
    assert get_adapter(vit).with_overrides(cls_index=None).layout.cls_index is None
    with pytest.raises(TypeError, match="unknown layout field"):
        get_adapter(vit, prefix=3)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="num_prefix_tokens="):
        get_adapter(cnn, patch_size=8)
    assert get_adapter(cnn, num_prefix_tokens=1, patch_size=8).num_prefix_tokens == 1


def test_timm_head_reproduces_logits_and_token_lens():
    for kw in (dict(reg_tokens=2), dict(class_token=False, global_pool="avg", reg_tokens=2)):
        vit = _timm_vit(**kw)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            tokens = vit.forward_features(x)  # final norm applied: undo by hooking the last block
            seen = []
            h = vit.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o))
            logits = vit(x)
            h.remove()
            head = get_adapter(vit).classifier_head()
            torch.testing.assert_close(head(seen[0]), logits)
            if kw.get("class_token", True):  # the CLS row of the token lens is the model's output
                torch.testing.assert_close(head.token_logits(seen[0])[:, 0], logits)
        assert tokens.shape[1] == 16 + vit.num_prefix_tokens
