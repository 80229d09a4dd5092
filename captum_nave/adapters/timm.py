"""Adapters for timm models: Vision Transformers (plain, registers, no CLS, EVA) and CNNs.

timm is a dependency of the library, so its classes are imported directly (lazily, in
the functions that need them, to keep ``import captum_nave`` light).

ViTs (``VisionTransformer`` and subclasses, ``Eva`` and any timm model with
``num_prefix_tokens`` and ``blocks``): sequence ``[CLS?, registers..., others...,
patches...]`` (timm concatenates CLS, then registers; a distillation token counts as
"other"); ``patch_embed.patch_size``; attention ``attn.qkv`` (or ``attn.q_proj`` ...
for EVA without fused qkv), ``attn.proj``, ``attn.q_norm`` / ``attn.k_norm``, layer
scale ``ls1``. Only the standard ``timm.layers.Attention`` is a plain
``softmax(q k^T * scale)``; other timm attention classes add rotary embeddings (EVA),
relative position terms (BEiT) and the like, so their probabilities are read on the
non-fused path (``fused_attn = False``, input of ``attn_drop``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import nn

from .base import (
    BlockParts,
    ClassifierHead,
    EagerSwitch,
    LRPKit,
    MlpParts,
    ModelAdapter,
    Pool,
    TransformerParts,
    discover_attention_paths,
    optional_submodule,
)
from .generic import GenericAdapter, cnn_default_layers, patch_size_pair, timm_style_tokens
from .layout import ViTLayout

__all__ = ["TimmViTAdapter", "TimmCNNAdapter"]


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _is_timm_vit(model: nn.Module) -> bool:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, (VisionTransformer, Eva)):
        return True
    npt = getattr(model, "num_prefix_tokens", None)
    return (
        _is_timm(model)
        and isinstance(npt, int)
        and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))
        and getattr(model, "patch_embed", None) is not None
    )


def _timm_normalization(model: nn.Module) -> Optional[tuple]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if "mean" in cfg and "std" in cfg:
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return None


def _timm_common_lrp(module: nn.Module, kit: LRPKit) -> Optional[nn.Module]:
    """timm leaves every family shares: BatchNormAct2d, DropPath, in-place LayerScale."""
    from timm.layers import DropPath, LayerScale
    from timm.layers.norm_act import BatchNormAct2d

    kind = type(module)
    if kind is BatchNormAct2d:
        # a BatchNormAct2d not preceded by a fusable conv: BN (a linear map in eval) + act
        bn = nn.BatchNorm2d(module.num_features, eps=module.eps, affine=module.affine)
        bn.load_state_dict(
            {k: v for k, v in module.state_dict().items() if not k.startswith(("act.", "drop."))}
        )
        bn = bn.to(module.weight.device if module.weight is not None else "cpu")
        return nn.Sequential(bn, kit.activation(getattr(module, "act", None)))
    if kind is DropPath:
        return nn.Identity()  # eval mode: no-op
    if kind is LayerScale and getattr(module, "inplace", False):
        module.inplace = False
        return module
    return None


# --------------------------------------------------------------------------- ViT
class TimmViTAdapter(ModelAdapter):
    """timm Vision Transformers (see the module docstring)."""

    family = "timm-vit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        return _is_timm_vit(model)

    def _read_layout(self) -> Optional[ViTLayout]:
        m = self.model
        cls_index, registers = timm_style_tokens(m)
        paths: Dict[str, Any] = dict(attn="attn", qkv="attn.qkv", proj="attn.proj")
        first = m.blocks[0] if len(m.blocks) else None
        if first is not None and optional_submodule(first, "attn.qkv") is None:
            paths = discover_attention_paths(first) or paths
        return ViTLayout(
            num_prefix_tokens=int(m.num_prefix_tokens),
            cls_index=cls_index,
            register_indices=registers,
            patch_size=patch_size_pair(getattr(getattr(m, "patch_embed", None), "patch_size", None)),
            blocks="blocks",
            q_norm="attn.q_norm",
            k_norm="attn.k_norm",
            layer_scale="ls1",
            source=self.family,
            **paths,
        )

    def normalization(self) -> Optional[tuple]:
        """timm's ``pretrained_cfg`` mean and std."""
        return _timm_normalization(self.model)

    def input_size(self) -> Optional[tuple]:  # noqa: D102
        embed = getattr(self.model, "patch_embed", None)
        if getattr(embed, "strict_img_size", False) and not getattr(self.model, "dynamic_img_size", False):
            size = patch_size_pair(getattr(embed, "img_size", None))
            return size
        return None

    def allow_any_input_size(self) -> bool:
        """timm builds ViTs for one size unless ``dynamic_img_size=True``; switch a built
        ``VisionTransformer`` to that mode (position embeddings are then interpolated per
        input, as DINO does)."""
        model = self.model
        embed = getattr(model, "patch_embed", None)
        if embed is None or not hasattr(model, "dynamic_img_size") or model.dynamic_img_size:
            return False
        if not hasattr(embed, "strict_img_size") or not hasattr(embed, "output_fmt"):
            return False
        from timm.layers import Format

        model.dynamic_img_size = True
        embed.strict_img_size = False
        embed.flatten = False
        embed.output_fmt = Format.NHWC
        return True

    def _attention_semantics(self, attn: nn.Module) -> Dict[str, Any]:
        from timm.layers import Attention

        extra = getattr(attn, "norm", None)
        inner = extra if isinstance(extra, nn.Module) and not isinstance(extra, nn.Identity) else None
        drop = getattr(attn, "attn_drop", None)
        eager = (
            EagerSwitch(attn, "fused_attn", False, drop)
            if hasattr(attn, "fused_attn") and isinstance(drop, nn.Module)
            else None
        )
        return dict(
            exact=type(attn) is Attention,
            eager=eager,
            inner_norm=inner,
            gated=getattr(attn, "gate", None) is not None,
        )

    def classifier_head(self) -> Optional[ClassifierHead]:  # noqa: D102
        m = self.model
        pool = getattr(m, "global_pool", "token")
        npfx = int(m.num_prefix_tokens)
        if getattr(m, "attn_pool", None) is not None:
            pools: tuple = (Pool("map", module=m.attn_pool),)
        elif pool == "token":
            pools = (Pool("token", index=0),)
        elif pool == "avg":
            pools = (Pool("avg", start=0 if getattr(m, "pool_include_prefix", False) else npfx),)
        else:
            return None
        post = [mod for mod in (getattr(m, "fc_norm", None), getattr(m, "head_drop", None), getattr(m, "head", None))
                if isinstance(mod, nn.Module) and not isinstance(mod, nn.Identity)]
        norm = getattr(m, "norm", None)
        return ClassifierHead(
            final_norm=None if norm is None or isinstance(norm, nn.Identity) else norm,
            pools=pools,
            post=tuple(post),
        )

    # ------------------------------------------------------------------ LRP
    def transformer_parts(self) -> TransformerParts:  # noqa: D102
        from timm.layers import LayerScale, Mlp, PatchEmbed
        from timm.models.vision_transformer import Attention, Block, VisionTransformer

        vit = self.model
        name = type(vit).__name__
        if type(vit) is not VisionTransformer:
            raise TypeError(f"LRP: timm {name} is not supported (only timm VisionTransformer)")
        if getattr(vit, "attn_pool", None) is not None:
            raise TypeError(f"LRP: ViT {name} uses attention pooling (attn_pool); not supported")
        if vit.global_pool not in ("token", "avg"):
            raise TypeError(f"LRP: ViT {name} has global_pool={vit.global_pool!r}; supported: 'token', 'avg'")
        if type(vit.patch_embed) is not PatchEmbed:
            raise TypeError(
                f"LRP: patch_embed is {type(vit.patch_embed).__name__}; only timm PatchEmbed is supported"
            )
        blocks: List[BlockParts] = []
        for i, blk in enumerate(vit.blocks):
            where = f"blocks.{i}"
            if type(blk) is not Block:
                raise TypeError(
                    f"LRP: '{where}' is {type(blk).__name__}; only timm vision_transformer.Block is supported"
                )
            if type(blk.attn) is not Attention or getattr(blk.attn, "gate", None) is not None:
                raise TypeError(
                    f"LRP: '{where}.attn' is {type(blk.attn).__name__} (or gated); only plain timm "
                    "Attention is supported"
                )
            if type(blk.mlp) is not Mlp:
                raise TypeError(f"LRP: '{where}.mlp' is {type(blk.mlp).__name__}; only timm Mlp is supported")
            mlp = blk.mlp
            blocks.append(
                BlockParts(
                    norm1=blk.norm1,
                    attention=self.attention(i),
                    norm2=blk.norm2,
                    mlp=MlpParts(mlp.fc1, mlp.act, mlp.fc2, optional_submodule(mlp, "norm")),
                    ls1=blk.ls1.gamma if isinstance(blk.ls1, LayerScale) else None,
                    ls2=blk.ls2.gamma if isinstance(blk.ls2, LayerScale) else None,
                )
            )
        pe = vit.patch_embed
        layout = "NLD" if getattr(pe, "flatten", True) else str(getattr(pe, "output_fmt", "NCHW")).split(".")[-1]
        head = self.classifier_head()
        assert head is not None  # token / avg pooling checked above
        return TransformerParts(
            patch=pe,
            patch_layout=layout,
            tokens=lambda x: vit._pos_embed(vit.patch_embed(x)),
            num_prefix=int(vit.num_prefix_tokens),
            pre_norm=optional_submodule(vit, "norm_pre"),
            blocks=blocks,
            head=head,
        )

    @classmethod
    def lrp_rewrite(cls, module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:  # noqa: D102
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(module, VisionTransformer) or (cls.matches(module) and module is not None):
            if type(module) is not VisionTransformer:
                raise TypeError(
                    f"LRP: timm {type(module).__name__} at '{name or '<model>'}' is not supported "
                    "(only timm VisionTransformer; rotary / relative-position attention is not a "
                    "plain softmax(q k^T) of the projections)"
                )
            return kit.transformer(cls(module).transformer_parts(), name)
        return None


# --------------------------------------------------------------------------- CNNs
class TimmCNNAdapter(GenericAdapter):
    """timm CNNs: EfficientNet / MobileNet (``conv_stem`` + ``blocks``), ResNet, ConvNeXt, ..."""

    family = "timm-cnn"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        return _is_timm(model) and not _is_timm_vit(model)

    def _read_layout(self) -> Optional[ViTLayout]:
        return None

    def normalization(self) -> Optional[tuple]:
        """timm's ``pretrained_cfg`` mean and std."""
        return _timm_normalization(self.model)

    def _stem_blocks(self) -> Optional[nn.Sequential]:
        children = dict(self.model.named_children())
        blocks = children.get("blocks")
        if "conv_stem" in children and isinstance(blocks, nn.Sequential) and len(blocks) > 0:
            return blocks
        return None

    def default_layers(self) -> List[str]:
        """EfficientNet / MobileNet: the stage outputs ``blocks.{n-3}``, ``blocks.{n-2}``.

        For EfficientNet-Lite0 ``blocks.4`` (112 channels, stride 16) and ``blocks.5``
        (192 channels, stride 32); the last stage (1x1 kernels only) adds little.
        ResNet-like: ``layer3``, ``layer4``; staged models: the last two stages.
        """
        blocks = self._stem_blocks()
        if blocks is not None and len(blocks) >= 3:
            n = len(blocks)
            return [f"blocks.{n - 3}", f"blocks.{n - 2}"]
        return cnn_default_layers(self.model)

    def default_gradcam_layer(self) -> Optional[str]:
        """ResNet ``layer4``; EfficientNet / MobileNetV2 ``bn2`` (after ``conv_head``);
        MobileNetV3 (head after pooling) ``blocks.{n-1}``; staged models ``stages.{n-1}``."""
        children = dict(self.model.named_children())
        if "layer4" in children:
            return "layer4"
        if "conv_head" in children and isinstance(children.get("bn2"), nn.Module):
            return "bn2"
        blocks = self._stem_blocks()
        if blocks is not None:
            return f"blocks.{len(blocks) - 1}"
        return super().default_gradcam_layer()

    @classmethod
    def lrp_rewrite(cls, module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:
        """EfficientNet blocks as residual blocks with fused BatchNorm; stem / head fused."""
        from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, InvertedResidual
        from timm.models.efficientnet import EfficientNet

        kind = type(module)
        if kind in (DepthwiseSeparableConv, InvertedResidual, ConvBnAct):
            return _efficientnet_block(module, name, kind.__name__, kit)
        if kind is EfficientNet:
            for conv_attr, bn_attr in (("conv_stem", "bn1"), ("conv_head", "bn2")):
                conv, bnm = getattr(module, conv_attr), getattr(module, bn_attr)
                if isinstance(bnm, nn.BatchNorm2d):
                    fused = _try_fuse(conv, bnm, f"{name}.{bn_attr}" if name else bn_attr, kit)
                    if fused is not None:
                        setattr(module, conv_attr, fused)
                        setattr(module, bn_attr, kit.activation(getattr(bnm, "act", None)))
            return module
        return _timm_common_lrp(module, kit)


def _try_fuse(conv: nn.Module, bn: nn.Module, where: str, kit: LRPKit) -> Optional[nn.Module]:
    try:
        return kit.fuse(conv, bn, where)
    except TypeError:
        return None


def _efficientnet_block(block: nn.Module, name: str, kind: str, kit: LRPKit) -> nn.Module:
    """timm DepthwiseSeparableConv / InvertedResidual / ConvBnAct -> canonical form."""
    if getattr(block, "conv_s2d", None) is not None:
        raise TypeError(f"LRP canonicalisation: '{name}' uses space-to-depth (conv_s2d); not supported")
    for attr in ("aa", "se"):
        sub = getattr(block, attr, None)
        if sub is not None and type(sub) is not nn.Identity:
            raise TypeError(
                f"LRP canonicalisation: '{name}.{attr}' is {type(sub).__name__}; this block "
                f"type is supported only without {attr} (e.g. no squeeze-excite / anti-aliasing)"
            )
    if kind == "DepthwiseSeparableConv":
        pairs = [("conv_dw", "bn1"), ("conv_pw", "bn2")]
    elif kind == "InvertedResidual":
        pairs = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]
    else:  # ConvBnAct
        pairs = [("conv", "bn1")]
    layers: List[nn.Module] = []
    for c, b in pairs:
        bn = getattr(block, b)
        act = kit.activation(getattr(bn, "act", None))
        layers.append(kit.fuse(getattr(block, c), bn, f"{name}.{b}"))
        if type(act) is not nn.Identity:
            layers.append(act)
    if getattr(block, "has_skip", False):
        return kit.residual(layers, None, None)
    return nn.Sequential(*layers)
