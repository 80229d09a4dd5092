"""Adapter for Hugging Face ``transformers`` vision transformers.

Supported (``transformers >= 4.48, < 6``; tested with the version pip installs): ViT
(``ViTModel``, ``ViTForImageClassification``), DeiT (``DeiTModel``,
``DeiTForImageClassification``, ``DeiTForImageClassificationWithTeacher``: CLS and
distillation tokens), DINOv2 (``Dinov2Model``, ``Dinov2ForImageClassification``),
DINOv2 with registers (``Dinov2WithRegistersModel`` / ``...ForImageClassification``),
the CLIP vision tower (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``) and the
SigLIP vision tower (``SiglipVisionModel``: no CLS token, attention-pooling head).

transformers is never imported by this module: a model can only be a Hugging Face
model if transformers is already loaded (``sys.modules``), so the library works without
it. Module paths differ between transformers versions (4.x ``attention.attention.query``
and ``attention.output.dense``, ``encoder.layer``; 5.x ``attention.q_proj`` ...
``o_proj``, ViT blocks in ``layers``); they are found by name in the model at hand
(:func:`~captum_nave.adapters.base.discover_attention_paths`), never assumed.

Outputs: ``logits`` of a classifier (DeiT with teacher: the mean of its two heads, as the
model returns), ``image_embeds`` of CLIP with projection, otherwise the ``pooler_output``
(the pooled CLS feature, or SigLIP's attention-pooled feature): a target is then a
feature index of the embedding.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import (
    BlockParts,
    ClassifierHead,
    LRPKit,
    MapParts,
    MlpParts,
    ModelAdapter,
    Pool,
    TransformerParts,
    discover_attention_paths,
    optional_submodule,
)
from .generic import patch_size_pair
from .layout import ViTLayout

__all__ = ["HFVisionAdapter", "SUPPORTED_MODEL_TYPES", "hf_activation"]

#: ``config.model_type`` values of the supported vision transformers.
SUPPORTED_MODEL_TYPES = (
    "vit",
    "deit",
    "dinov2",
    "dinov2_with_registers",
    "clip_vision_model",
    "siglip_vision_model",
)


def _transformers() -> Any:
    return sys.modules.get("transformers")


def hf_activation(name: Any) -> nn.Module:
    """A standard module computing the Hugging Face activation ``config.hidden_act``.

    ``"gelu"`` -> ``nn.GELU()``; ``"gelu_pytorch_tanh"`` / ``"gelu_new"`` ->
    ``nn.GELU(approximate="tanh")``; ``"quick_gelu"`` -> ``QuickGELU`` (``x * sigmoid(1.702 x)``);
    ``"relu"``, ``"silu"`` / ``"swish"``, ``"tanh"`` -> the torch modules.

    Raises
    ------
    TypeError
        For other activations (named in the message).
    """
    from .modules import QuickGELU

    key = str(name).lower() if isinstance(name, str) else None
    table = {
        "gelu": lambda: nn.GELU(),
        "gelu_python": lambda: nn.GELU(),
        "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
        "gelu_python_tanh": lambda: nn.GELU(approximate="tanh"),
        "gelu_new": lambda: nn.GELU(approximate="tanh"),
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "tanh": nn.Tanh,
    }
    if key not in table:
        raise TypeError(
            f"LRP: Hugging Face activation {name!r} is not supported; supported: {', '.join(sorted(table))}"
        )
    return table[key]()


class HFVisionAdapter(ModelAdapter):
    """Hugging Face vision transformers (see the module docstring)."""

    family = "hf"
    output_keys = ("logits", "image_embeds", "pooler_output")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        tf = _transformers()
        if tf is None or not isinstance(model, tf.PreTrainedModel):
            return False
        return getattr(model.config, "model_type", None) in SUPPORTED_MODEL_TYPES

    # ------------------------------------------------------------------ structure
    @property
    def config(self) -> Any:
        """The model's config (``PretrainedConfig``)."""
        return self.model.config

    @property
    def family_name(self) -> str:
        """``config.model_type`` (``"dinov2_with_registers"``, ``"clip_vision_model"``, ...)."""
        return str(self.config.model_type)

    def _backbone(self) -> Tuple[str, nn.Module]:
        """Dotted path and module of the part that holds ``embeddings`` and the blocks."""
        for name, mod in self.model.named_modules():
            if isinstance(getattr(mod, "embeddings", None), nn.Module) and self._blocks_path(mod):
                return name, mod
        raise ValueError(f"model: no embeddings and blocks found in {type(self.model).__name__}")

    @staticmethod
    def _blocks_path(backbone: nn.Module) -> Optional[str]:
        for path in ("encoder.layer", "encoder.layers", "layers", "layer"):
            mod = optional_submodule(backbone, path)
            if isinstance(mod, nn.ModuleList) and len(mod) > 0:
                return path
        return None

    def _prefix(self) -> str:
        name, _ = self._backbone()
        return f"{name}." if name else ""

    def _read_layout(self) -> Optional[ViTLayout]:
        cfg = self.config
        kind = self.family_name
        name, backbone = self._backbone()
        path = self._blocks_path(backbone)
        blocks_path = f"{name}.{path}" if name else str(path)
        first = self.model.get_submodule(blocks_path)[0]
        paths = discover_attention_paths(first)
        if paths is None:
            raise ValueError(
                f"model: cannot find the q/k/v projections of {type(first).__name__} "
                f"(transformers {getattr(_transformers(), '__version__', '?')}); describe the model "
                "with captum_nave.adapters.ViTLayout"
            )
        n_reg = int(getattr(cfg, "num_register_tokens", 0) or 0) if kind == "dinov2_with_registers" else 0
        if kind == "siglip_vision_model":
            npfx, cls_index = 0, None
        elif kind == "deit":
            npfx, cls_index = 2, 0  # CLS, then the distillation token ("other")
        else:
            npfx, cls_index = 1 + n_reg, 0
        ls = "layer_scale1" if optional_submodule(first, "layer_scale1") is not None else None
        return ViTLayout(
            num_prefix_tokens=npfx,
            cls_index=cls_index,
            register_indices=tuple(range(1, 1 + n_reg)),
            patch_size=patch_size_pair(cfg.patch_size),
            blocks=blocks_path,
            q_norm=None,
            k_norm=None,
            layer_scale=ls,
            num_heads=int(cfg.num_attention_heads),
            source=f"hf-{kind}",
            **paths,
        )

    def input_size(self) -> Optional[Tuple[int, int]]:
        """ViT, DeiT, CLIP and SigLIP take ``config.image_size`` (their position embeddings
        are interpolated only on request); DINOv2 interpolates for any size."""
        if self.family_name.startswith("dinov2"):
            return None
        return patch_size_pair(getattr(self.config, "image_size", None))

    def _attention_semantics(self, attn: nn.Module) -> Dict[str, Any]:
        # softmax(q k^T * scaling) in every attention implementation (eager, sdpa, flash)
        return dict(exact=True, eager=None, inner_norm=None, gated=False)

    def _pre_attention_norm(self, block: nn.Module) -> Optional[str]:
        return _first_attr(block, ("norm1", "layernorm_before", "layer_norm1"))

    # ------------------------------------------------------------------ head
    def classifier_head(self) -> Optional[ClassifierHead]:  # noqa: D102
        tf = _transformers()
        m = self.model
        _, backbone = self._backbone()
        lay = self.layout
        assert lay is not None
        kind = self.family_name
        seq_norm = optional_submodule(backbone, "layernorm")
        if kind == "clip_vision_model":
            post: List[nn.Module] = [backbone.post_layernorm]
            proj = optional_submodule(m, "visual_projection")
            if proj is not None:
                post.append(proj)
            return ClassifierHead(final_norm=None, pools=(Pool("token", index=0),), post=tuple(post))
        if kind == "siglip_vision_model":
            head = optional_submodule(backbone, "head")
            if head is None:
                return None
            mlp = head.mlp
            parts = MapParts(
                probe=head.probe,
                attention=head.attention,
                norm=head.layernorm,
                mlp=MlpParts(mlp.fc1, hf_activation(self.config.hidden_act), mlp.fc2),
            )
            return ClassifierHead(final_norm=backbone.post_layernorm, pools=(Pool("map", map=parts, module=head),))
        if isinstance(m, tf.DeiTForImageClassificationWithTeacher):
            return ClassifierHead(
                final_norm=seq_norm,
                pools=(Pool("token", index=0), Pool("token", index=1)),
                post=(_mean_of_heads(m.cls_classifier, m.distillation_classifier),),
            )
        classifier = optional_submodule(m, "classifier")
        if classifier is not None:
            if kind.startswith("dinov2"):
                # DINOv2 classifiers read [CLS, mean of the patch tokens]
                pools = (Pool("token", index=0), Pool("avg", start=lay.num_prefix_tokens))
            else:
                pools = (Pool("token", index=0),)
            return ClassifierHead(final_norm=seq_norm, pools=pools, post=(classifier,))
        pooler = optional_submodule(backbone, "pooler")
        if pooler is not None:  # ViTModel / DeiTModel: dense + activation on the CLS token
            return ClassifierHead(
                final_norm=seq_norm, pools=(Pool("token", index=0),), post=(pooler.dense, pooler.activation)
            )
        if kind.startswith("dinov2"):  # Dinov2Model: pooler_output = layernorm(tokens)[:, 0]
            return ClassifierHead(final_norm=seq_norm, pools=(Pool("token", index=0),))
        return None

    def default_gradcam_layer(self) -> Optional[str]:  # noqa: D102
        return super().default_gradcam_layer()

    # ------------------------------------------------------------------ LRP
    def transformer_parts(self) -> TransformerParts:  # noqa: D102
        _, backbone = self._backbone()
        emb = backbone.embeddings
        lay = self.layout
        assert lay is not None
        act_name = self.config.hidden_act
        if getattr(self.config, "use_swiglu_ffn", False):
            raise TypeError("LRP: DINOv2 with a SwiGLU feed-forward (use_swiglu_ffn=True) is not supported")
        blocks: List[BlockParts] = []
        for i, (bname, blk) in enumerate(self.blocks()):
            norm1 = self._pre_attention_norm(blk)
            norm2 = _first_attr(blk, ("norm2", "layernorm_after", "layer_norm2"))
            if norm1 is None or norm2 is None:
                raise TypeError(f"LRP: cannot find the two LayerNorms of {bname} ({type(blk).__name__})")
            mlp = _hf_mlp(blk, act_name, bname)
            ls1 = optional_submodule(blk, "layer_scale1")
            ls2 = optional_submodule(blk, "layer_scale2")
            blocks.append(
                BlockParts(
                    norm1=getattr(blk, norm1),
                    attention=self.attention(i),
                    norm2=getattr(blk, norm2),
                    mlp=mlp,
                    ls1=None if ls1 is None else _layer_scale_vector(ls1),
                    ls2=None if ls2 is None else _layer_scale_vector(ls2),
                )
            )
        patch = optional_submodule(emb, "patch_embeddings")
        patch_layout = "NLD"
        if patch is None:
            patch = emb.patch_embedding  # CLIP / SigLIP: a bare Conv2d
            patch_layout = "NCHW"
        head = self.classifier_head()
        if head is None:
            raise TypeError(f"LRP: {type(self.model).__name__} has no output head to explain")
        return TransformerParts(
            patch=patch,
            patch_layout=patch_layout,
            tokens=lambda x: emb(x),
            num_prefix=lay.num_prefix_tokens,
            pre_norm=optional_submodule(backbone, "pre_layrnorm"),
            blocks=blocks,
            head=head,
        )

    @classmethod
    def lrp_rewrite(cls, module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:  # noqa: D102
        if cls.matches(module):
            return kit.transformer(cls(module).transformer_parts(), name)
        return None


# --------------------------------------------------------------------------- helpers
def _first_attr(module: nn.Module, names: Tuple[str, ...]) -> Optional[str]:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    return None


def _layer_scale_vector(module: nn.Module) -> Tensor:
    for name in ("lambda1", "gamma", "scale"):
        v = getattr(module, name, None)
        if isinstance(v, Tensor):
            return v
    raise TypeError(f"LRP: cannot read the scale vector of {type(module).__name__}")


def _hf_mlp(block: nn.Module, act_name: Any, where: str) -> MlpParts:
    mlp = getattr(block, "mlp", None)
    if mlp is not None and isinstance(getattr(mlp, "fc1", None), nn.Linear):
        return MlpParts(mlp.fc1, hf_activation(act_name), mlp.fc2)
    inter = optional_submodule(block, "intermediate.dense")  # transformers 4.x ViT / DeiT
    out = optional_submodule(block, "output.dense")
    if isinstance(inter, nn.Linear) and isinstance(out, nn.Linear):
        return MlpParts(inter, hf_activation(act_name), out)
    raise TypeError(f"LRP: cannot find the feed-forward layers of {where} ({type(block).__name__})")


def _mean_of_heads(a: nn.Linear, b: nn.Linear) -> nn.Linear:
    """One Linear on ``cat([x_a, x_b])`` computing ``(a(x_a) + b(x_b)) / 2`` (DeiT with teacher)."""
    lin = nn.Linear(a.in_features + b.in_features, a.out_features, bias=a.bias is not None or b.bias is not None)
    lin = lin.to(device=a.weight.device, dtype=a.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.cat([a.weight, b.weight], dim=1) * 0.5)
        if lin.bias is not None:
            zero = torch.zeros_like(a.weight[:, 0])
            ba = a.bias if a.bias is not None else zero
            bb = b.bias if b.bias is not None else zero
            lin.bias.copy_((ba + bb) * 0.5)
    lin.requires_grad_(False)
    return lin
