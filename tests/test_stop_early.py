"""The forward pass stops after the deepest layer that is read, and leaves the model as it was.

Every model here has the modules after the deepest selected layer replaced by
``Boom``, which raises if it runs: the explanation only succeeds when those layers
never run. The models are in training mode with BatchNorm where possible, so a
forward pass that ran (or a state not restored after the stop) would show in the
buffers, the modes or the hooks.
"""

import warnings

import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.activations import StopForward, capture_activations, run_until_stopped
from captum_nave.registers.capture import collect_token_statistics


class Boom(nn.Module):
    """A module that must never run."""

    def forward(self, *args, **kwargs):
        raise AssertionError("a layer after the deepest selected one ran")


def snapshot(model: nn.Module):
    return (
        [(m, m.training) for m in model.modules()],
        [(p, p.requires_grad) for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def assert_unchanged(model: nn.Module, snap) -> None:
    modes, grads, state = snap
    assert all(m.training == t for m, t in modes)
    assert all(p.requires_grad == r for p, r in grads)
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def resnet_cut_after_layer3():
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    model.layer4 = Boom()
    model.fc = Boom()
    return model.train()  # BatchNorm would update its statistics if not restored


def vit_cut_after_block1():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=4,
                              embed_dim=48, num_heads=2, num_classes=3)
    model.blocks[2] = Boom()
    model.blocks[3] = Boom()
    model.norm = Boom()
    model.head = Boom()
    return model.eval()


def hf_vit_cut_after_layer1():
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = transformers.ViTForImageClassification(cfg).eval()
    layers = model.vit.layers
    layers[2] = Boom()
    layers[3] = Boom()
    model.vit.layernorm = Boom()
    model.classifier = Boom()
    return model


@pytest.mark.parametrize(
    "build,layers",
    [
        (resnet_cut_after_layer3, ["layer2", "layer3"]),
        (vit_cut_after_block1, [0, 1]),
        (hf_vit_cut_after_layer1, ["vit.layers.1"]),
    ],
    ids=["torchvision-resnet", "timm-vit", "hf-vit"],
)
def test_layers_after_the_deepest_selected_one_never_run(build, layers):
    model = build()
    snap = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the model is in training mode")
        seg = LayerClusterExplainer(model, layers).attribute(x, n_clusters=3, random_state=0)
    assert seg.shape == (2, 1, 32, 32) and int(seg.max()) == 2
    assert_unchanged(model, snap)


def test_capture_equals_full_forward_activations_and_stops_with_plain_functions():
    """The stop changes nothing in the captured values; it also works through a function."""
    full = torchvision.models.resnet18(weights=None).eval()
    got = {}
    hooks = [getattr(full, n).register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, o)) for n in ("layer2", "layer3")]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full(x)
    for h in hooks:
        h.remove()
    full.layer4 = Boom()
    acts = capture_activations(lambda inp: full(inp).softmax(-1), [full.layer3, full.layer2], x)
    assert torch.equal(acts[0], got["layer3"]) and torch.equal(acts[1], got["layer2"])


def test_layer_input_capture_stops_before_the_layer_runs():
    model = torchvision.models.resnet18(weights=None).eval()
    model.layer3 = Boom()  # its input is read: it must not run itself
    snap = snapshot(model)
    seg = LayerClusterExplainer(model, ["layer3"]).attribute(
        torch.randn(1, 3, 32, 32), n_clusters=2, attribute_to_layer_input=True, random_state=0
    )
    assert seg.shape == (1, 1, 32, 32)
    assert_unchanged(model, snap)


def test_state_restored_when_the_model_fails_after_the_stop_point_is_missed():
    """A layer that never runs: no stop, the forward pass ends in the model's own error."""
    model = resnet_cut_after_layer3()
    snap = snapshot(model)
    ex = LayerClusterExplainer(model, ["layer1"])
    ex.layers = [nn.Conv2d(3, 3, 1)]  # not part of the forward pass: the signal never comes
    with pytest.raises(AssertionError, match="deepest selected"), pytest.warns(UserWarning, match="training mode"):
        ex.attribute(torch.randn(1, 3, 32, 32), n_clusters=2)
    assert_unchanged(model, snap)


def test_run_until_stopped_reports_whether_it_stopped():
    def stops(x):
        raise StopForward

    def fails(x):
        raise ValueError("the model's own error")

    assert run_until_stopped(stops, 1) is True
    assert run_until_stopped(lambda x: x, 1) is False
    with pytest.raises(ValueError, match="own error"):
        run_until_stopped(fails, 1)


def test_concept_clusters_fit_and_predict_stop_early():
    model = resnet_cut_after_layer3().eval()
    snap = snapshot(model)
    concepts = ConceptClusters(LayerClusterExplainer(model, ["layer2", "layer3"]), n_clusters=3, random_state=0)
    x = torch.randn(4, 3, 32, 32)
    concepts.fit([x[:2], x[2:]])
    assert concepts.predict(x).shape == (4, 1, 32, 32)
    assert_unchanged(model, snap)


def test_register_measures_stop_after_the_last_block():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2,
                              embed_dim=48, num_heads=2, num_classes=3, reg_tokens=2).eval()
    model.norm = Boom()
    model.fc_norm = Boom()
    model.head = Boom()
    model.eval()
    snap = snapshot(model)
    st = collect_token_statistics(model, torch.randn(2, 3, 32, 32), attention_layers="all")
    assert st.norms.shape[:2] == (2, 3)  # input of block 0 and the output of both blocks
    assert_unchanged(model, snap)
