"""Hugging Face vision transformers through every entry point (issue 10, table rows x classes).

Tiny random models built from config classes (no downloads), one per supported class:
ViT (backbone and classifier), DeiT with teacher (CLS + distillation token), DINOv2
(backbone and classifier), DINOv2 with registers, CLIP and SigLIP (no CLS) vision towers.
Every check compares with what the Hugging Face model itself computes (its hidden states,
its eager attention probabilities, its outputs), or with Captum / an independent float64
computation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from captum.attr import IntegratedGradients  # noqa: E402

from captum_nave import LayerClusterExplainer  # noqa: E402
from captum_nave.activations import capture_activations  # noqa: E402
from captum_nave.adapters import HFVisionAdapter, get_adapter  # noqa: E402
from captum_nave.attribution import attribute  # noqa: E402
from captum_nave.attribution.lrp import canonize, lrp_attribute  # noqa: E402
from captum_nave.registers import collect_token_statistics, compare_registers, outlier_report  # noqa: E402
from hf_models import CLASSES, LAYOUT, SIZE, build  # noqa: E402
from test_registers_norms import assert_planted_outliers_found  # noqa: E402

#: Where each class's scores are in its output (independent of the adapter).
OUTPUT_KEY = {
    "ViTModel": "pooler_output",
    "ViTForImageClassification": "logits",
    "DeiTForImageClassificationWithTeacher": "logits",
    "Dinov2Model": "pooler_output",
    "Dinov2ForImageClassification": "logits",
    "Dinov2WithRegistersModel": "pooler_output",
    "CLIPVisionModel": "pooler_output",
    "SiglipVisionModel": "pooler_output",
}
#: Classes whose output reads only prefix tokens (Grad-CAM then uses the pre-attention norm).
PREFIX_POOLED = {"ViTModel", "ViTForImageClassification", "DeiTForImageClassificationWithTeacher",
                 "Dinov2Model", "Dinov2WithRegistersModel", "CLIPVisionModel"}


def _x(n: int = 2, dtype: torch.dtype = torch.float32, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _scores(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    return getattr(model(x), OUTPUT_KEY[name])


def _state(model: nn.Module) -> dict:
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "attn": model.config._attn_implementation,
        "training": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    }


def _on_tokens(fn):
    """A forward hook applying ``fn`` to a block's output tokens (a tuple's first item in transformers 4.x)."""

    def hook(module, args, out):
        if isinstance(out, tuple):
            return (fn(out[0]),) + tuple(out[1:])
        return fn(out)

    return hook


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["attn"] == before["attn"] and after["training"] == before["training"]
    assert after["hooks"] == before["hooks"] == 0
    for k, v in before["weights"].items():
        assert torch.equal(v, after["weights"][k]), k


# ----------------------------------------------------------------------------- the adapter
@pytest.mark.parametrize("name", CLASSES)
def test_adapter_layout_blocks_output_and_head(name):
    model = build(name)
    adapter = get_adapter(model)
    assert isinstance(adapter, HFVisionAdapter)
    lay = adapter.layout
    assert (lay.num_prefix_tokens, lay.cls_index, lay.register_indices) == LAYOUT[name]
    assert lay.patch_size == (8, 8) and adapter.grid((SIZE, SIZE)) == (4, 4)
    x = _x()
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    # the blocks are the modules whose outputs Hugging Face reports as hidden states
    seen = []
    hooks = [blk.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
             for _, blk in adapter.blocks()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(out.hidden_states) - 1 == 2
    for i, t in enumerate(seen):
        assert torch.equal(t, out.hidden_states[i + 1])
    # scores: the adapter unwraps the ModelOutput to the right field
    assert torch.equal(adapter.logits(out), getattr(out, OUTPUT_KEY[name]))
    # the classifier head (final norm, pooling, classifier) reproduces the scores from the
    # last block's tokens: what the class-embedding lens will use
    head = adapter.classifier_head()
    with torch.no_grad():
        torch.testing.assert_close(head(seen[-1]), adapter.logits(out), rtol=1e-5, atol=1e-6)
        if name in PREFIX_POOLED and len(head.pools) == 1:
            rows = head.token_logits(seen[-1])  # the CLS row projected alone is the model's output
            torch.testing.assert_close(rows[:, 0], adapter.logits(out), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- rows 1 and 2
@pytest.mark.parametrize("name", CLASSES)
def test_named_and_integer_layers_give_the_patch_grid_of_the_hidden_states(name):
    model = build(name)
    last = get_adapter(model).blocks()[-1][0]
    by_name = LayerClusterExplainer(model, [last])
    by_index = LayerClusterExplainer(model, [-1])
    assert by_index.layers[0] is by_name.layers[0] is model.get_submodule(last)
    npfx = LAYOUT[name][0]
    assert by_index.num_prefix_tokens == npfx and by_index.patch_size == (8, 8)
    x = _x()
    act = capture_activations(model, by_index.layers, x, num_prefix=npfx, patch_size=(8, 8))[0]
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states[-1]
    # patch tokens in raster order, prefix tokens dropped
    expected = hidden[:, npfx:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(act, expected, rtol=0, atol=0)
    a = by_name.explain(x, n_clusters=3, random_state=0)
    b = by_index.explain(x, n_clusters=3, random_state=0)
    assert a.grid == (4, 4) and a.layer_shapes == [(32, 4, 4)]
    assert torch.equal(a.segments, b.segments) and a.segments.shape == (2, 1, SIZE, SIZE)


@pytest.mark.parametrize("name", [c for c in CLASSES if LAYOUT[c][0] > 0])
def test_planted_prefix_tokens_leave_nave_segments_unchanged(name):
    model = build(name)
    ex = LayerClusterExplainer(model, [-1])
    npfx = LAYOUT[name][0]
    x = _x(seed=2)
    before = ex.attribute(x, n_clusters=3, random_state=0)
    block = ex.layers[0]
    direction = torch.randn(32, generator=torch.Generator().manual_seed(9))

    def planter(positions):
        def plant(t):
            t = t.clone()
            t[:, positions] = 1e4 * direction
            return t
        return _on_tokens(plant)

    h = block.register_forward_hook(planter(list(range(npfx))))
    try:
        after = ex.attribute(x, n_clusters=3, random_state=0)
    finally:
        h.remove()
    assert torch.equal(before, after)
    # the same planting in the patch tokens of the first two grid rows does reach NAVE: those
    # eight cells get one label (the check above can fail)
    h = block.register_forward_hook(planter([npfx + i for i in range(8)]))
    try:
        labels = ex.explain(x, n_clusters=3, random_state=0).grid_labels
    finally:
        h.remove()
    assert all(len(set(g[:2].flatten().tolist())) == 1 for g in labels)
    assert not torch.equal(labels, LayerClusterExplainer(model, [-1]).explain(x, n_clusters=3, random_state=0).grid_labels)


# ----------------------------------------------------------------------------- row 3
@pytest.mark.parametrize("name", CLASSES)
def test_register_measures_read_attention_in_sdpa_and_eager_mode(name):
    x = _x(dtype=torch.float64)
    rows, hidden = {}, {}
    weights = build(name).state_dict()
    for impl in ("sdpa", "eager"):
        model = build(name, attn_implementation=impl).double()
        model.load_state_dict(weights)  # transformers 4.x draws other weights per implementation
        before = _state(model)
        st = collect_token_statistics(model, x, decompose_layers=(-1,))
        _assert_same_state(model, before)  # attention implementation left as it was
        assert st.method == "qkv"
        # only rows are kept: (N, blocks, heads, T), never (T, T) matrices
        t = SIZE * SIZE // 64 + LAYOUT[name][0]
        assert st.attention.shape == (2, 2, 2, t)
        rows[impl] = st
        with torch.no_grad():
            hidden[impl] = model(x, output_hidden_states=True).hidden_states
    with torch.no_grad():
        out = model(x, output_attentions=True)  # the eager model's own probabilities
    cls = LAYOUT[name][1]
    npfx = LAYOUT[name][0]
    if cls is not None:
        ref = torch.stack([a[:, :, cls, :] for a in out.attentions], dim=1)
    else:  # no CLS: the mean attention row of the patch queries
        ref = torch.stack([a[:, :, npfx:, :].mean(dim=2) for a in out.attentions], dim=1)
    for impl in ("sdpa", "eager"):
        # recomputed in float64; ViT, DeiT, CLIP and SigLIP take their own softmax in float32
        # (unit roundoff 6e-8), hence a relative tolerance of a few float32 ulps
        torch.testing.assert_close(rows[impl].attention, ref, rtol=1e-6, atol=1e-12)
        norms = torch.stack([h.norm(dim=-1) for h in hidden[impl]], dim=1)
        torch.testing.assert_close(rows[impl].norms, norms, rtol=1e-12, atol=0)
    st = rows["sdpa"]
    if cls is not None:  # the CLS decomposition sums to the model's own attention output
        d = st.decompositions[1]
        torch.testing.assert_close(d.attn_out, st.attn_out_model[1], rtol=0, atol=1e-10)
    else:
        assert st.decompositions == {}


@pytest.mark.parametrize("name", CLASSES)
def test_compare_registers_with_a_register_model(name):
    a = build(name)
    b = build("Dinov2WithRegistersModel", seed=1, attn_implementation="eager")
    before = (_state(a), _state(b))
    res = compare_registers(a, b, _x(n=3), names=("a", "b"), n_clusters=3, n_boot=50)
    _assert_same_state(a, before[0])
    _assert_same_state(b, before[1])
    # the measures that exist for both are finite; register masses are zero without registers
    for m in ("outlier_fraction", "attn_entropy", "mass_patches", "nave_seed_ari"):
        assert np.isfinite(res.per_image[m][0]).all() and np.isfinite(res.per_image[m][1]).all(), m
    if not LAYOUT[name][2]:
        np.testing.assert_allclose(res.per_image["mass_registers"][0], 0.0)
    assert (res.per_image["mass_registers"][1] > 0).all()
    if LAYOUT[name][1] is not None:
        pi = res.per_image
        other = 1 - pi["mass_patches"][0] - pi["mass_cls"][0] - pi["mass_registers"][0]
        # only DeiT's distillation token takes attention beyond CLS, registers and patches
        assert (other >= -1e-6).all() and ((other > 1e-3) == (name.startswith("DeiT"))).all()


def test_planted_high_norm_token_in_a_register_model_is_found_exactly():
    """As ``test_registers_norms.test_planted_patch_outliers_are_found_exactly`` for timm."""
    model = build("Dinov2WithRegistersModel", num_hidden_layers=4, image_size=48)
    npfx = 5
    planted = (3, 17, 30)  # patch indices on the 6x6 grid
    block = 2

    def plant(t):
        t = t.clone()
        t[:, [npfx + p for p in planted]] *= 20.0
        return t

    h = model.encoder.layer[block].register_forward_hook(_on_tokens(plant))
    try:
        st = collect_token_statistics(model, _x(n=4, size=48), attention_layers=None)
    finally:
        h.remove()
    assert_planted_outliers_found(st, planted, block)  # the same assertions as for timm
    # and a planted high-norm *register* (r2, sequence position 3) is reported as one
    h = model.encoder.layer[1].register_forward_hook(_on_tokens(lambda t: t.index_fill(1, torch.tensor([3]), 50.0)))
    try:
        st = collect_token_statistics(model, _x(n=3, size=48), attention_layers=None)
    finally:
        h.remove()
    rep = outlier_report(st.block_norms, st.layout)
    assert rep.register_high[:, 1].tolist() == [[False, False, True, False]] * 3
    assert not rep.mask[:, 1].any()


# ----------------------------------------------------------------------------- row 4
def _reference_gradcam(model, name, x, target, module):
    """Float64 Grad-CAM on a token layer, the output unwrapped by hand."""
    store = {}

    def hook(mod, args, out):
        t = out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return tuples
        t.retain_grad()
        store["t"] = t

    h = module.register_forward_hook(hook)
    try:
        scores = _scores(model, name, x)
    finally:
        h.remove()
    scores.gather(1, target[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)
    npfx = LAYOUT[name][0]
    act, grd = store["t"][:, npfx:], store["t"].grad[:, npfx:]
    alpha = grd.mean(dim=1)  # mean over the 4x4 patch grid
    return torch.einsum("nc,nlc->nl", alpha, act).clamp(min=0).reshape(-1, 1, 4, 4).detach()


@pytest.mark.parametrize("name", CLASSES)
def test_gradcam_and_ig_unwrap_the_model_output(name):
    model = build(name).double()
    before = _state(model)
    x = _x(dtype=torch.float64)
    target = torch.tensor([1, 3])
    res = attribute("gradcam", model, x, target)
    layer = res.options["layer"]
    last = get_adapter(model).blocks()[-1][0]
    if name in PREFIX_POOLED:  # the patch tokens that still reach the prefix token
        assert layer.startswith(last + ".") and isinstance(model.get_submodule(layer), nn.LayerNorm)
    else:  # DINOv2 classifier (CLS + patch mean), SigLIP (attention pooling): the last block
        assert layer == last
    ref = _reference_gradcam(model, name, x, target, model.get_submodule(layer))
    torch.testing.assert_close(res.raw, ref, rtol=1e-10, atol=1e-13)
    assert (res.raw > 0).sum() >= 4
    assert torch.equal(attribute("gradcam", model, x, "auto").target, _scores(model, name, x).argmax(1))
    ig = attribute("ig", model, x, target, n_steps=4)
    ref_ig, delta = IntegratedGradients(lambda t: _scores(model, name, t)).attribute(
        x, target=target, n_steps=4, return_convergence_delta=True
    )
    torch.testing.assert_close(ig.raw, ref_ig, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(ig.delta, delta.to(ig.delta.dtype), rtol=1e-8, atol=1e-12)
    _assert_same_state(model, before)


# ----------------------------------------------------------------------------- row 5
def _zero_additive_terms(model: nn.Module) -> nn.Module:
    """Zero biases, prefix tokens and position embeddings; non-trivial norm and layer scales."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("bias") or leaf in ("cls_token", "distillation_token", "register_tokens", "mask_token",
                                           "position_embeddings", "class_embedding", "probe"):
                p.zero_()
            elif "position_embedding" in name:
                p.zero_()
            elif p.dim() == 1:  # LayerNorm weights, layer scales
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return model


@pytest.mark.parametrize("name", CLASSES)
def test_lrp_conserves_relevance_with_zero_biases(name):
    model = _zero_additive_terms(build(name)).double()
    x = _x(dtype=torch.float64)
    scores = _scores(model, name, x).detach()
    target = scores.abs().argmax(dim=1)  # the most decisive output: a meaningful denominator
    with torch.no_grad():  # the LRP copy computes what the model computes
        torch.testing.assert_close(canonize(model)(x), scores, rtol=1e-12, atol=1e-12)
    before = _state(model)
    rel, delta = lrp_attribute(model, x, target, epsilon=1e-9, return_convergence_delta=True)
    _assert_same_state(model, before)
    chosen = scores.gather(1, target[:, None])[:, 0]
    # float64: rounding is ~1e-13; what remains is the epsilon stabiliser (~1e-6 at 1e-9)
    err = (delta.abs() / chosen.abs()).max().item()
    assert err < 1e-3, f"{name}: relative conservation error {err}"
    assert (rel != 0).float().mean() > 0.5  # relevance spread over the image, both signs
    assert (rel > 0).any() and (rel < 0).any()


def test_lrp_conservation_check_can_fail():
    """With biases and position embeddings, they absorb relevance: the zero-bias check is not vacuous."""
    model = build("Dinov2WithRegistersModel").double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    x = _x(dtype=torch.float64)
    scores = _scores(model, "Dinov2WithRegistersModel", x).detach()
    target = scores.abs().argmax(dim=1)
    _, delta = lrp_attribute(model, x, target, epsilon=1e-9, return_convergence_delta=True)
    assert (delta.abs() / scores.gather(1, target[:, None])[:, 0].abs()).min() > 1e-2


def test_lrp_rejects_unsupported_hf_variants():
    from captum_nave.attribution.lrp import lrp_attribute as lrp

    swiglu = build("Dinov2Model", use_swiglu_ffn=True)
    with pytest.raises(TypeError, match="SwiGLU"):
        lrp(swiglu, _x(), 0)
    odd = build("ViTModel", hidden_act="gelu_10")
    with pytest.raises(TypeError, match="gelu_10"):
        lrp(odd, _x(), 0)


# ----------------------------------------------------------------------------- figures and reports
def test_report_with_a_hugging_face_model(tmp_path):
    from captum_nave.report.builder import collect_report

    model = build("Dinov2ForImageClassification")
    x01 = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    info = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    data = collect_report(x01, {"dinov2": (model, info)}, methods=("nave", "gradcam", "ig", "lrp"),
                          n_clusters=3, seeds=(0, 1), importance=False,
                          method_options={"ig": {"n_steps": 4}})
    run = data.runs[0]
    x = (x01 - 0.5) / 0.5
    with torch.no_grad():
        assert torch.equal(run.targets, model(x).logits.argmax(1))
    assert run.weights_unchanged and not run.errors
    for m in ("gradcam", "ig", "lrp"):
        maps = run.attributions[m].maps
        assert maps.shape == (2, 1, SIZE, SIZE) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    # the same Grad-CAM as a direct call on the model
    direct = attribute("gradcam", model, x, run.targets)
    torch.testing.assert_close(run.attributions["gradcam"].maps, direct.maps)


def test_model_left_as_it_was_when_a_call_fails_mid_forward():
    model = build("Dinov2WithRegistersModel", attn_implementation="sdpa")
    before = _state(model)
    x = _x()

    class Boom(Exception):
        pass

    def boom(module, args, out):
        raise Boom

    h = model.encoder.layer[1].mlp.register_forward_hook(boom)
    try:
        for call in (
            lambda: collect_token_statistics(model, x),
            lambda: attribute("gradcam", model, x, 0),
            lambda: attribute("ig", model, x, 0, n_steps=2),
            lambda: LayerClusterExplainer(model, [-1]).attribute(x, n_clusters=2),
        ):
            with pytest.raises(Boom):
                call()
    finally:
        h.remove()
    _assert_same_state(model, before)  # weights, mode, attention implementation, no hooks left


# ----------------------------------------------------------------------------- lens
#: Classes whose head reads one token or the token mean through one classifier.
LENS_READY = {"ViTForImageClassification"}


@pytest.mark.parametrize("name", CLASSES)
def test_class_lens_reads_the_head_from_the_adapter(name):
    """The class-embedding lens projects through the head the adapter describes: the last
    block's CLS projection is the model's own output; other heads are refused by name."""
    from captum_nave.lens import class_lens, lens_spec
    from captum_nave.lens.summary import lens_available

    model = build(name).double()
    x = _x(2, torch.float64)
    assert lens_available(model) == (name in LENS_READY)
    if name not in LENS_READY:
        expected = {
            "SiglipVisionModel": "attention-pooling",
            "Dinov2ForImageClassification": "concatenates",
            "DeiTForImageClassificationWithTeacher": "concatenates",
        }.get(name, "no classifier head")
        with pytest.raises(ValueError, match=expected):
            lens_spec(model)
        return
    lens = class_lens(model, x, target=2)
    with torch.no_grad():
        logits = _scores(model, name, x)
    cls = lens.spec.layout.cls_index
    assert lens.grid == (SIZE // model.config.patch_size,) * 2 and lens.n_layers == model.config.num_hidden_layers
    # float64: the hooks read the tensors the model itself uses, so only rounding differs
    torch.testing.assert_close(lens.logit[-1][:, cls].double(), logits[:, 2].float().double(), rtol=1e-6, atol=1e-6)
    assert torch.equal(lens.top[-1][:, cls], logits.argmax(1))
    assert all(not m._forward_hooks for m in model.modules())
