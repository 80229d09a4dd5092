"""The decisive adapter test: the same network in three libraries gives the same explanations.

A timm ViT, a Hugging Face model and the torch-hub DINOv2 stand-in get identical weights
(the state dicts are mapped here, by hand, name by name); they compute the same function
with differently named modules, token orders built differently (timm concatenates
registers before adding positions, Hugging Face and DINOv2 insert them after), fused
or separate q / k / v projections and different output types. Through the adapters,
every method must then give the same answer: logits, NAVE segments, Grad-CAM, IG, LRP
relevance and every register measure. All in float64, so that differences can only
come from the order of floating-point operations (~1e-15 relative).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from captum_nave import LayerClusterExplainer  # noqa: E402
from captum_nave.adapters import get_adapter  # noqa: E402
from captum_nave.attribution import attribute  # noqa: E402
from captum_nave.attribution.lrp import COMPOSITES, lrp_attribute  # noqa: E402
from captum_nave.registers import collect_token_statistics, compare_registers  # noqa: E402
from hub_dinov2 import dinov2_standin  # noqa: E402

D, DEPTH, HEADS, PATCH, SIZE = 32, 2, 2, 8, 32
TOL = dict(rtol=1e-10, atol=1e-12)


def _pick(sd: dict, *names: str) -> torch.Tensor:
    """The first of ``names`` present in the state dict (transformers 4.x and 5.x differ)."""
    for n in names:
        if n in sd:
            return sd[n]
    raise KeyError(f"none of {names} in the state dict")


def _hf_block(sd: dict, prefix: str) -> dict:
    """Parameters of one Hugging Face block, by role."""
    p = prefix
    role = {
        "q": (f"{p}.attention.q_proj", f"{p}.attention.attention.query"),
        "k": (f"{p}.attention.k_proj", f"{p}.attention.attention.key"),
        "v": (f"{p}.attention.v_proj", f"{p}.attention.attention.value"),
        "o": (f"{p}.attention.o_proj", f"{p}.attention.output.dense"),
        "n1": (f"{p}.layernorm_before", f"{p}.norm1"),
        "n2": (f"{p}.layernorm_after", f"{p}.norm2"),
        "fc1": (f"{p}.mlp.fc1", f"{p}.intermediate.dense"),
        "fc2": (f"{p}.mlp.fc2", f"{p}.output.dense"),
    }
    out = {}
    for key, names in role.items():
        for part in ("weight", "bias"):
            out[f"{key}.{part}"] = _pick(sd, *(f"{n}.{part}" for n in names))
    for ls in ("layer_scale1", "layer_scale2"):
        if f"{p}.{ls}.lambda1" in sd:
            out[ls] = sd[f"{p}.{ls}.lambda1"]
    return out


def _copy_block(new: dict, t: str, b: dict) -> None:
    """timm / torch-hub block ``t`` (fused qkv, ``ls1`` / ``ls2``) from HF roles ``b``."""
    for part in ("weight", "bias"):
        new[f"{t}.norm1.{part}"] = b[f"n1.{part}"]
        new[f"{t}.norm2.{part}"] = b[f"n2.{part}"]
        new[f"{t}.attn.qkv.{part}"] = torch.cat([b[f"q.{part}"], b[f"k.{part}"], b[f"v.{part}"]])
        new[f"{t}.attn.proj.{part}"] = b[f"o.{part}"]
        new[f"{t}.mlp.fc1.{part}"] = b[f"fc1.{part}"]
        new[f"{t}.mlp.fc2.{part}"] = b[f"fc2.{part}"]
    if "layer_scale1" in b:
        new[f"{t}.ls1.gamma"] = b["layer_scale1"]
        new[f"{t}.ls2.gamma"] = b["layer_scale2"]


def _block_container(sd: dict, root: str) -> str:
    for c in (f"{root}encoder.layer", f"{root}layers", f"{root}encoder.layers"):
        if any(k.startswith(c + ".0.") for k in sd):
            return c
    raise KeyError("no blocks")


def _timm_from_hf(hf: nn.Module, tm: nn.Module, root: str, n_reg: int) -> None:
    """Copy a Hugging Face ViT / DINOv2 into a timm VisionTransformer (positions to [CLS, regs, patches])."""
    sd = hf.state_dict()
    emb = f"{root}embeddings"
    new = {}
    new["cls_token"] = sd[f"{emb}.cls_token"]
    pos = sd[f"{emb}.position_embeddings"]
    new["pos_embed"] = torch.cat([pos[:, :1], pos.new_zeros(1, n_reg, D), pos[:, 1:]], dim=1)
    if n_reg:
        new["reg_token"] = sd[f"{emb}.register_tokens"]
    new["patch_embed.proj.weight"] = sd[f"{emb}.patch_embeddings.projection.weight"]
    new["patch_embed.proj.bias"] = sd[f"{emb}.patch_embeddings.projection.bias"]
    blocks = _block_container(sd, root)
    for i in range(DEPTH):
        _copy_block(new, f"blocks.{i}", _hf_block(sd, f"{blocks}.{i}"))
    new["norm.weight"] = sd[f"{root}layernorm.weight"]
    new["norm.bias"] = sd[f"{root}layernorm.bias"]
    if "classifier.weight" in sd:
        new["head.weight"], new["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
    tm.load_state_dict(new, strict=True)


def _hub_from_hf(hf: nn.Module, hub: nn.Module, n_reg: int) -> None:
    """Copy a Hugging Face DINOv2 (with registers) into the torch-hub stand-in."""
    sd = hf.state_dict()
    new = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
        "mask_token": hub.mask_token.detach(),
    }
    if n_reg:
        new["register_tokens"] = sd["embeddings.register_tokens"]
    names = [n for n, _ in get_adapter(hub).blocks()]  # chunked: blocks.0.0, blocks.1.1, ...
    for i, t in enumerate(names):
        _copy_block(new, t, _hf_block(sd, f"encoder.layer.{i}"))
    hub.load_state_dict(new, strict=True)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial biases, norms, layer scales and positions (HF initialises many to 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mask_token" in name:
                continue
            if p.dim() == 1 and ("norm" in name or "lambda1" in name):
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif p.dim() == 1 or "token" in name or "position" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _timm_vit(n_reg: int, num_classes: int, **kw) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=SIZE, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.0,
        reg_tokens=n_reg, no_embed_class=False, num_classes=num_classes, global_pool="token", **kw,
    )


@pytest.fixture(scope="module")
def dinov2_trio():
    """(timm, HF, hub) DINOv2-style ViTs without and with 4 registers, identical weights."""
    import transformers as T

    out = {}
    for n_reg in (0, 4):
        torch.manual_seed(10 + n_reg)
        cfg = dict(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, mlp_ratio=2,
                   image_size=SIZE, patch_size=PATCH, layerscale_value=1.0)
        if n_reg:
            hf = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(num_register_tokens=n_reg, **cfg))
        else:
            hf = T.Dinov2Model(T.Dinov2Config(**cfg))
        hf = _randomise(hf.double().eval(), seed=n_reg)
        tm = _timm_vit(n_reg, 0, init_values=1.0).double().eval()
        _timm_from_hf(hf, tm, "", n_reg)
        hub = dinov2_standin(img_size=SIZE, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                             mlp_ratio=2.0, num_register_tokens=n_reg, block_chunks=2).double()
        _hub_from_hf(hf, hub, n_reg)
        out[n_reg] = {"timm": tm, "hf": hf, "hub": hub}
    return out


@pytest.fixture(scope="module")
def classifier_pair():
    """timm ViT classifier and Hugging Face ViTForImageClassification, identical weights."""
    import transformers as T

    torch.manual_seed(3)
    hf = T.ViTForImageClassification(T.ViTConfig(
        hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=2 * D,
        image_size=SIZE, patch_size=PATCH, num_labels=5, layer_norm_eps=1e-6,
    ))
    hf = _randomise(hf.double().eval(), seed=7)
    tm = _timm_vit(0, 5).double().eval()
    _timm_from_hf(hf, tm, "vit.", 0)
    return tm, hf


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return get_adapter(model).logits(model(x))


# ----------------------------------------------------------------------------- outputs
def test_copied_weights_compute_the_same_function(dinov2_trio, classifier_pair):
    x = _x()
    for n_reg, trio in dinov2_trio.items():
        ref = _scores(trio["hf"], x)  # pooler_output: the final-norm CLS token
        assert ref.shape == (3, D)
        torch.testing.assert_close(_scores(trio["timm"], x), ref, **TOL)
        torch.testing.assert_close(_scores(trio["hub"], x), ref, **TOL)
    tm, hf = classifier_pair
    torch.testing.assert_close(tm(x), hf(x).logits, **TOL)


# ----------------------------------------------------------------------------- NAVE
def test_same_nave_segments(dinov2_trio, classifier_pair):
    x = _x()
    for trio in list(dinov2_trio.values()) + [dict(zip(("timm", "hf"), classifier_pair))]:
        results = {k: LayerClusterExplainer(m, [-1]).explain(x, n_clusters=4, random_state=0) for k, m in trio.items()}
        ref = results.pop("hf")
        assert len(torch.unique(ref.segments)) == 4
        for k, r in results.items():
            assert r.grid == ref.grid == (4, 4)
            assert torch.equal(r.segments, ref.segments), k
            torch.testing.assert_close(r.inertia, ref.inertia, rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- registers
def test_same_register_measures(dinov2_trio):
    x = _x(4)
    stats = {k: collect_token_statistics(m, x) for k, m in dinov2_trio[4].items()}
    ref = stats.pop("hf")
    for k, st in stats.items():
        assert st.layout.num_prefix_tokens == ref.layout.num_prefix_tokens == 5
        torch.testing.assert_close(st.norms, ref.norms, **TOL)
        torch.testing.assert_close(st.attention, ref.attention, **TOL)
        for b, d in ref.decompositions.items():
            for part in ("skip", "patches", "registers", "cls", "attn_out", "residual"):
                torch.testing.assert_close(getattr(st.decompositions[b], part), getattr(d, part), **TOL)
    comparisons = {
        k: compare_registers(dinov2_trio[0][k], dinov2_trio[4][k], x, n_clusters=3, n_boot=50)
        for k in ("timm", "hf", "hub")
    }
    ref = comparisons.pop("hf")
    assert ref.per_image["max_register_ratio"][1].min() > 0
    for k, res in comparisons.items():
        assert res.per_image.keys() == ref.per_image.keys()
        for m, (a, b) in ref.per_image.items():
            np.testing.assert_allclose(res.per_image[m][0], a, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{k} {m}")
            np.testing.assert_allclose(res.per_image[m][1], b, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{k} {m}")
        for j in range(2):
            assert torch.equal(res.nave[j].segments, ref.nave[j].segments)
        assert res.to_markdown().split("\n", 1)[1] == ref.to_markdown().split("\n", 1)[1]


# ----------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("method", ["gradcam", "ig", "lrp"])
def test_same_attributions(dinov2_trio, classifier_pair, method):
    x = _x(2)
    target = torch.tensor([1, 3])
    # Grad-CAM without the ReLU: the signed map, never all zero whatever the weights
    opts = {"gradcam": dict(relu_attributions=False), "ig": dict(n_steps=4), "lrp": dict(epsilon=1e-6)}[method]
    pairs = [dinov2_trio[4], dinov2_trio[0], dict(zip(("timm", "hf"), classifier_pair))]
    for trio in pairs:
        res = {k: attribute(method, m, x, target, **opts) for k, m in trio.items()}
        ref = res.pop("hf")
        assert ref.maps.abs().sum() > 0
        for k, r in res.items():
            torch.testing.assert_close(r.maps, ref.maps, rtol=1e-8, atol=1e-10 * ref.maps.abs().max().item())
            if ref.delta is not None:
                torch.testing.assert_close(r.delta, ref.delta, rtol=1e-6, atol=1e-10)


def _without_additive_terms(model: nn.Module) -> nn.Module:
    """A copy with every bias, prefix token and position embedding zero (LRP then conserves)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or leaf in (
                "cls_token", "reg_token", "register_tokens", "pos_embed", "position_embeddings",
            ):
                p.zero_()
    return out


#: every composite but AttnLRP, whose softmax rule does not conserve (Achtibat et al. 2024)
CONSERVING_ON_VITS = sorted(set(COMPOSITES) - {"attnlrp"})


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_every_lrp_composite_is_the_same_in_timm_hf_and_hub(dinov2_trio, classifier_pair, composite):
    """Each named composite on HF Dinov2 / Dinov2WithRegisters / ViTForImageClassification and
    the torch-hub stand-in, built by their adapters, equals the same composite on the timm
    model with the same weights, and (biases zero) conserves the relevance."""
    x = _x(2)
    target = torch.tensor([1, 3])
    # float64 and a tiny stabiliser: what remains of the conservation error is the
    # stabiliser itself (~1e-9 per layer, relative) and rounding (~1e-15)
    opts = dict(composite=composite, epsilon=1e-9, stabilizer=1e-9,
                input_bounds=(float(x.min()), float(x.max())))
    groups = {"dinov2": dinov2_trio[0], "dinov2-registers": dinov2_trio[4],
              "vit-classifier": dict(zip(("timm", "hf"), classifier_pair))}
    for group, trio in groups.items():
        rel, delta, logit = {}, {}, {}
        for k, m in trio.items():
            m0 = _without_additive_terms(m)
            rel[k], delta[k] = lrp_attribute(m0, x, target, return_convergence_delta=True, **opts)
            logit[k] = _scores(m0, x).gather(1, target[:, None])[:, 0]
        ref = rel.pop("hf")
        assert (ref != 0).double().mean() > 0.5, group  # a dense map, not a trivial one
        for k, r in rel.items():
            # the same function evaluated in a different order: rounding only
            torch.testing.assert_close(r, ref, rtol=1e-8, atol=1e-10 * ref.abs().max().item(), msg=f"{group} {k}")
        if composite in CONSERVING_ON_VITS:
            for k, d in delta.items():
                err = (d / logit[k]).abs().max().item()
                assert err < 1e-5, f"{group} {k} {composite}: relative conservation error {err:.2e}"
        if composite not in ("epsilon", "cp-lrp"):  # cp-lrp is the epsilon composite on a ViT
            eps = lrp_attribute(_without_additive_terms(trio["hf"]), x, target,
                                **{**opts, "composite": "epsilon"})
            assert (eps - ref).abs().max() > 1e-3 * ref.abs().max(), f"{group}: {composite} equals epsilon"
