"""Canonical working copies of models for LRP.

:func:`canonize` deep-copies a model and rewrites the copy so that every
operation that mixes values is a leaf module that can carry an LRP rule (see
:mod:`captum_nave.attribution._lrp_modules`; the rules are chosen by
:mod:`._lrp_composites`); :func:`audit_graph` runs one forward pass and proves
that the copy has no operation outside those modules that would silently
corrupt the relevance (e.g. a residual ``x + f(x)`` written in ``forward`` code).
Every module of the copy remembers the name and type of the module of the
original model it came from (:func:`module_origins`), so that rules can be
chosen by the user's module names.

The user's model is never touched: all of this happens on the copy.
"""

from __future__ import annotations

import copy
import re
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from captum.attr._utils.custom_modules import Addition_Module

from captum_nave.attribution._lrp_modules import (
    Add,
    AddConstant,
    AttentionMix,
    AttentionScores,
    DetachedLayerNorm,
    TokenMean,
)

__all__ = ["audit_graph", "canonize", "check_supported", "fuse_conv_bn", "module_origins"]

# --------------------------------------------------------------------------- #
# Module families (exact types; subclasses may change forward semantics).
# --------------------------------------------------------------------------- #

#: Leaves that are linear maps of their (relevance-receiving) inputs: epsilon-type rules.
LINEAR_LEAVES: tuple[type, ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    Addition_Module,
    Add,
    AddConstant,
    DetachedLayerNorm,
    AttentionMix,
    TokenMean,
)
#: Elementwise activations: identity rule ``Pass`` (relevance passes unchanged).
IDENTITY_ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Hardtanh,
)
#: Further activations and eval-mode no-ops: ``Pass`` as well.
CAPTUM_NONLINEAR: tuple[type, ...] = (nn.ReLU, nn.Tanh, nn.Dropout)
#: Attention probabilities ``softmax(q k^T)``: a constant (CP-LRP) or the AttnLRP rule.
ATTENTION_SCORES: tuple[type, ...] = (AttentionScores,)
#: Leaves whose backward is a pure re-indexing: no hooks at all.
PASS_THROUGH: tuple[type, ...] = (nn.Identity, nn.Flatten)

#: Autograd nodes allowed between rule-carrying modules: they only move values.
_STRUCTURAL_NODES = frozenset(
    {
        "AliasBackward",
        "CatBackward",
        "CloneBackward",
        "ConstantPadNdBackward",
        "ExpandBackward",
        "NarrowBackward",
        "PermuteBackward",
        "ReshapeAliasBackward",
        "SelectBackward",
        "SliceBackward",
        "SplitBackward",
        "SplitWithSizesBackward",
        "SqueezeBackward",
        "StackBackward",
        "TBackward",
        "ToCopyBackward",
        "TransposeBackward",
        "UnbindBackward",
        "UnsafeViewBackward",
        "UnsqueezeBackward",
        "ViewBackward",
    }
)


def _timm_types() -> dict[str, type]:
    """timm classes the canonicaliser knows, looked up lazily (timm is a dependency)."""
    from timm.layers import Conv2dSame, LayerScale, Mlp, PatchEmbed
    from timm.layers.norm_act import BatchNormAct2d
    from timm.models._efficientnet_blocks import (
        ConvBnAct,
        DepthwiseSeparableConv,
        InvertedResidual,
    )
    from timm.models.efficientnet import EfficientNet
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    try:
        from timm.layers import DropPath
    except ImportError:  # pragma: no cover - very old timm
        DropPath = nn.Identity  # type: ignore[misc,assignment]
    return {
        "Conv2dSame": Conv2dSame,
        "LayerScale": LayerScale,
        "Mlp": Mlp,
        "PatchEmbed": PatchEmbed,
        "BatchNormAct2d": BatchNormAct2d,
        "ConvBnAct": ConvBnAct,
        "DepthwiseSeparableConv": DepthwiseSeparableConv,
        "InvertedResidual": InvertedResidual,
        "EfficientNet": EfficientNet,
        "Attention": Attention,
        "Block": Block,
        "VisionTransformer": VisionTransformer,
        "DropPath": DropPath,
    }


def _torchvision_types() -> dict[str, type]:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    return {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck, "ResNet": ResNet}


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, where: str = "") -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the convolution before it.

    Parameters
    ----------
    conv : nn.Conv2d
        Convolution whose output feeds ``bn`` directly (``nn.Conv2d`` or timm's
        ``Conv2dSame``).
    bn : nn.BatchNorm2d
        BatchNorm with running statistics (timm ``BatchNormAct2d`` works too;
        its activation is handled by the caller).
    where : str
        Name used in error messages.

    Returns
    -------
    nn.Conv2d
        New convolution of the same class with bias, computing ``bn(conv(x))``
        in eval mode.  The arithmetic is done in float64 and cast back to the
        weight dtype; ``conv`` itself is not changed.
    """
    conv_types = _conv_types()
    if type(conv) not in conv_types:
        raise TypeError(
            "LRP canonicalisation: expected a convolution ("
            + ", ".join(t.__name__ for t in conv_types)
            + f") before the BatchNorm at '{where}', got {type(conv).__name__}"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise TypeError(
            f"LRP canonicalisation: BatchNorm at '{where}' has no running statistics "
            "(track_running_stats=False); it cannot be treated as a linear layer"
        )
    w = conv.weight.detach().double()
    b = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    )
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    # Same class and hyper-parameters (padding, "SAME" padding of timm, groups, ...);
    # only the weight changes and a bias is added.
    fused = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    fused.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    fused.bias = nn.Parameter((b * scale + shift).to(dtype), requires_grad=False)
    return fused


def _conv_types() -> tuple[type, ...]:
    """Convolutions the canonicaliser fuses and gives the epsilon rule."""
    return (nn.Conv2d, _timm_types()["Conv2dSame"])


def _fresh_activation(act: Optional[nn.Module]) -> nn.Module:
    """A non-inplace, unshared copy of an activation module (Identity for None)."""
    if act is None or type(act) is nn.Identity:
        return nn.Identity()
    new = copy.deepcopy(act)
    if hasattr(new, "inplace"):
        new.inplace = False
    return new


def _bn_act(bn: nn.Module) -> tuple[nn.BatchNorm2d, nn.Module]:
    """Split a (timm) BatchNorm(+act) module into the BN part and its activation."""
    act = getattr(bn, "act", None)
    return bn, _fresh_activation(act)  # type: ignore[return-value]


class ResidualBlock(nn.Module):
    """Canonical residual block: ``post_act(add(body(x), shortcut(x)))``.

    Parameters
    ----------
    body : nn.Sequential
        Main branch made of fused convolutions and fresh activations.
    shortcut : nn.Module or None
        Projection of the identity branch (fused 1x1 conv) or None.
    post_act : nn.Module or None
        Activation after the addition (ResNet) or None (inverted residuals).
    """

    def __init__(
        self, body: nn.Sequential, shortcut: Optional[nn.Module], post_act: Optional[nn.Module]
    ) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.add = Add()
        self.post_act = post_act

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.add(self.body(x), identity)
        return out if self.post_act is None else self.post_act(out)


def _torchvision_block(block: nn.Module, name: str) -> ResidualBlock:
    """BasicBlock / Bottleneck -> ResidualBlock with fused BN and unshared ReLUs."""
    pairs = [("conv1", "bn1"), ("conv2", "bn2")]
    if hasattr(block, "conv3"):
        pairs.append(("conv3", "bn3"))
    layers: list[nn.Module] = []
    for i, (c, b) in enumerate(pairs):
        layers.append(fuse_conv_bn(getattr(block, c), getattr(block, b), f"{name}.{b}"))
        if i < len(pairs) - 1:
            layers.append(nn.ReLU())
    shortcut = None
    if block.downsample is not None:
        ds = block.downsample
        if not (
            isinstance(ds, nn.Sequential)
            and len(ds) == 2
            and type(ds[0]) in _conv_types()
            and isinstance(ds[1], nn.BatchNorm2d)
        ):
            raise TypeError(
                f"LRP canonicalisation: unsupported downsample at '{name}.downsample' "
                f"({ds!r}); expected Sequential(Conv2d, BatchNorm2d)"
            )
        shortcut = fuse_conv_bn(ds[0], ds[1], f"{name}.downsample")
    return ResidualBlock(nn.Sequential(*layers), shortcut, nn.ReLU())


def _check_identity(module: nn.Module, attr: str, name: str) -> None:
    sub = getattr(module, attr, None)
    if sub is not None and type(sub) is not nn.Identity:
        raise TypeError(
            f"LRP canonicalisation: '{name}.{attr}' is {type(sub).__name__}; this block "
            f"type is supported only without {attr} (e.g. no squeeze-excite / anti-aliasing)"
        )


def _timm_efficientnet_block(block: nn.Module, name: str, kind: str) -> nn.Module:
    """timm DepthwiseSeparableConv / InvertedResidual / ConvBnAct -> canonical form."""
    if getattr(block, "conv_s2d", None) is not None:
        raise TypeError(
            f"LRP canonicalisation: '{name}' uses space-to-depth (conv_s2d); not supported"
        )
    for attr in ("aa", "se"):
        _check_identity(block, attr, name)
    if kind == "DepthwiseSeparableConv":
        pairs = [("conv_dw", "bn1"), ("conv_pw", "bn2")]
    elif kind == "InvertedResidual":
        pairs = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]
    else:  # ConvBnAct
        pairs = [("conv", "bn1")]
    layers: list[nn.Module] = []
    for c, b in pairs:
        bn, act = _bn_act(getattr(block, b))
        layers.append(fuse_conv_bn(getattr(block, c), bn, f"{name}.{b}"))
        if type(act) is not nn.Identity:
            layers.append(act)
    body = nn.Sequential(*layers)
    if getattr(block, "has_skip", False):
        return ResidualBlock(body, None, None)
    return body


class _LRPAttention(nn.Module):
    """timm ``Attention`` computed explicitly: scores and their application to the values."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads = int(attn.num_heads)
        self.head_dim = int(attn.head_dim)
        self.qkv = attn.qkv
        norms = []
        for key in ("q_norm", "k_norm"):
            norm = getattr(attn, key)
            if type(norm) is nn.Identity:
                norms.append(None)
            elif isinstance(norm, nn.LayerNorm):
                norms.append(norm)
            else:
                raise TypeError(
                    f"LRP: attention {key} of type {type(norm).__name__} is not supported "
                    "(Identity or LayerNorm)"
                )
        self.scores = AttentionScores(float(attn.scale), norms[0], norms[1])
        self.mix = AttentionMix()
        self.norm = attn.norm
        self.proj = attn.proj

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = self.mix(v, attn=self.scores(q, k))
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(self.norm(out))


class _LRPViTBlock(nn.Module):
    """timm ViT ``Block`` with explicit residual additions."""

    def __init__(self, blk: nn.Module) -> None:
        super().__init__()
        self.norm1 = blk.norm1
        self.attn = _LRPAttention(blk.attn)
        self.ls1 = blk.ls1
        self.add1 = Add()
        self.norm2 = blk.norm2
        self.mlp = blk.mlp
        self.ls2 = blk.ls2
        self.add2 = Add()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.add1(x, self.ls1(self.attn(self.norm1(x))))
        return self.add2(x, self.ls2(self.mlp(self.norm2(x))))


class _LRPVisionTransformer(nn.Module):
    """timm ``VisionTransformer`` (class token / registers / abs. pos. embed.)."""

    def __init__(self, vit: nn.Module, name: str) -> None:
        super().__init__()
        t = _timm_types()
        where = name or "<model>"
        if getattr(vit, "attn_pool", None) is not None:
            raise TypeError(f"LRP: ViT '{where}' uses attention pooling (attn_pool); not supported")
        if vit.global_pool not in ("token", "avg"):
            raise TypeError(
                f"LRP: ViT '{where}' has global_pool={vit.global_pool!r}; supported: 'token', 'avg'"
            )
        if getattr(vit, "dynamic_img_size", False):
            raise TypeError(f"LRP: ViT '{where}' uses dynamic_img_size=True; not supported")
        if type(vit.patch_embed) is not t["PatchEmbed"]:
            raise TypeError(
                f"LRP: '{where}.patch_embed' is {type(vit.patch_embed).__name__}; "
                "only timm PatchEmbed is supported"
            )
        blocks = []
        for i, blk in enumerate(vit.blocks):
            bname = f"{where}.blocks.{i}"
            if type(blk) is not t["Block"]:
                raise TypeError(
                    f"LRP: '{bname}' is {type(blk).__name__}; only timm vision_transformer.Block "
                    "is supported"
                )
            if type(blk.attn) is not t["Attention"] or getattr(blk.attn, "gate", None) is not None:
                raise TypeError(
                    f"LRP: '{bname}.attn' is {type(blk.attn).__name__} (or gated); only plain "
                    "timm Attention is supported"
                )
            if type(blk.mlp) is not t["Mlp"]:
                raise TypeError(
                    f"LRP: '{bname}.mlp' is {type(blk.mlp).__name__}; only timm Mlp is supported"
                )
            blocks.append(_LRPViTBlock(blk))
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = getattr(vit, "reg_token", None)
        self.no_embed_class = bool(getattr(vit, "no_embed_class", False))
        self.pos = None if vit.pos_embed is None else AddConstant(vit.pos_embed)
        self.norm_pre = vit.norm_pre
        self.blocks = nn.Sequential(*blocks)
        self.norm = vit.norm
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.global_pool = vit.global_pool
        start = 0 if getattr(vit, "pool_include_prefix", False) else self.num_prefix_tokens
        self.token_mean = TokenMean(start) if vit.global_pool == "avg" else None
        self.fc_norm = vit.fc_norm
        self.head_drop = vit.head_drop
        self.head = vit.head

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.patch_embed(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        prefix = [
            t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None
        ]
        if self.no_embed_class:
            if self.pos is not None:
                x = self.pos(x)
            x = torch.cat(prefix + [x], dim=1) if prefix else x
        else:
            x = torch.cat(prefix + [x], dim=1) if prefix else x
            if self.pos is not None:
                x = self.pos(x)
        x = self.norm_pre(x)
        x = self.blocks(x)
        x = self.norm(x)
        x = x[:, 0] if self.token_mean is None else self.token_mean(x)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return self.head(x)


# --------------------------------------------------------------------------- #
# Canonicalisation
# --------------------------------------------------------------------------- #


def _rewrite_block(module: nn.Module, name: str) -> Optional[nn.Module]:
    """Return the canonical replacement of a known composite module, or None."""
    tv = _torchvision_types()
    tm = _timm_types()
    kind = type(module)
    if kind in (tv["BasicBlock"], tv["Bottleneck"]):
        return _torchvision_block(module, name)
    for key in ("DepthwiseSeparableConv", "InvertedResidual", "ConvBnAct"):
        if kind is tm[key]:
            return _timm_efficientnet_block(module, name, key)
    if kind is tm["VisionTransformer"]:
        return _LRPVisionTransformer(module, name)
    if kind is tm["BatchNormAct2d"]:
        # A BatchNormAct2d not preceded by a fusable conv: BN (epsilon rule) + act.
        bn = nn.BatchNorm2d(module.num_features, eps=module.eps, affine=module.affine)
        bn.load_state_dict(
            {k: v for k, v in module.state_dict().items() if not k.startswith(("act.", "drop."))}
        )
        bn = bn.to(module.weight.device if module.weight is not None else "cpu")
        return nn.Sequential(bn, _fresh_activation(getattr(module, "act", None)))
    if kind is tm["DropPath"]:
        return nn.Identity()  # eval mode: no-op
    if isinstance(module, nn.LayerNorm):
        return DetachedLayerNorm.from_layer_norm(module)
    if kind in IDENTITY_ACTIVATIONS + (nn.ReLU,) and getattr(module, "inplace", False):
        return _fresh_activation(module)
    if kind is tm["LayerScale"] and getattr(module, "inplace", False):
        module.inplace = False
    return None


def _fuse_stems(model: nn.Module) -> None:
    """Fuse the conv+BN pairs that live directly on known top-level models."""
    tv = _torchvision_types()
    tm = _timm_types()
    for name, module in list(model.named_modules()):
        if type(module) is tv["ResNet"]:
            module.conv1 = fuse_conv_bn(module.conv1, module.bn1, f"{name}.bn1")
            module.bn1 = nn.Identity()
            module.relu = nn.ReLU()
        elif type(module) is tm["EfficientNet"]:
            for conv_attr, bn_attr in (("conv_stem", "bn1"), ("conv_head", "bn2")):
                conv, bnm = getattr(module, conv_attr), getattr(module, bn_attr)
                if type(conv) in _conv_types() and isinstance(bnm, nn.BatchNorm2d):
                    bn, act = _bn_act(bnm)
                    setattr(module, conv_attr, fuse_conv_bn(conv, bn, f"{name}.{bn_attr}"))
                    setattr(module, bn_attr, act)


def _fuse_sequentials(model: nn.Module) -> None:
    """Fuse a Conv2d directly followed by a BatchNorm2d inside nn.Sequential (VGG-BN)."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Sequential):
            continue
        keys = list(module._modules.keys())
        for a, b in zip(keys[:-1], keys[1:]):
            conv, bnm = module._modules[a], module._modules[b]
            if type(conv) in _conv_types() and type(bnm) is nn.BatchNorm2d:
                module._modules[a] = fuse_conv_bn(conv, bnm, f"{name}.{b}")
                module._modules[b] = nn.Identity()


#: attribute names of the copy's modules holding the original name and type
_ORIGIN = "_lrp_origin"
_ORIGIN_TYPE = "_lrp_origin_type"


def _adopt_origin(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give a replacement module the origin of the module it replaces (if it has none)."""
    for attr in (_ORIGIN, _ORIGIN_TYPE):
        if attr not in vars(new) and attr in vars(old):
            setattr(new, attr, getattr(old, attr))
    return new


def _rewrite(module: nn.Module, prefix: str) -> None:
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        new = _rewrite_block(child, name)
        if new is not None:
            module._modules[child_name] = _adopt_origin(new, child)
            child = new
        _rewrite(child, name)


def _tag_origins(work: nn.Module) -> None:
    for name, m in work.named_modules():
        setattr(m, _ORIGIN, name)
        setattr(m, _ORIGIN_TYPE, type(m))


def module_origins(model: nn.Module) -> dict[nn.Module, tuple[str, str, type]]:
    """Map every module of a canonical copy to ``(copy name, original name, original type)``.

    Modules carried over from the user's model (also when copied, e.g. a
    convolution with BatchNorm folded in) keep their original name and type; a
    module created by the canonicalisation (a residual ``Add``, an unshared
    ReLU, the explicit attention) is named by its position below the nearest
    module that has an origin, e.g. ``layer1.0.add`` in a torchvision ResNet or
    ``blocks.3.attn.mix`` in a timm ViT, and its type is its own.
    """
    out: dict[nn.Module, tuple[str, str, type]] = {}

    def walk(m: nn.Module, copy_name: str, parent_origin: Optional[str], attr: str) -> None:
        if m in out:
            return
        origin = vars(m).get(_ORIGIN)
        if origin is None:
            origin = attr if not parent_origin else f"{parent_origin}.{attr}" if attr else parent_origin
        out[m] = (copy_name, origin, vars(m).get(_ORIGIN_TYPE, type(m)))
        for child_name, child in m.named_children():
            walk(child, f"{copy_name}.{child_name}" if copy_name else child_name, origin, child_name)

    walk(model, "", None, "")
    return out


def _clear_hooks(model: nn.Module) -> None:
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
        ):
            d = getattr(m, attr, None)
            if d is not None:
                d.clear()
        m._is_full_backward_hook = None


def canonize(model: nn.Module) -> nn.Module:
    """Make an LRP-ready working copy of ``model``.

    The copy (``copy.deepcopy``) is put in eval mode, its parameters stop
    requiring gradients, hooks copied from the original are dropped, and:

    * torchvision ``BasicBlock``/``Bottleneck`` and timm ``DepthwiseSeparableConv``/
      ``InvertedResidual``/``ConvBnAct`` become :class:`ResidualBlock` s with an
      explicit :class:`~captum_nave.attribution._lrp_modules.Add`, BatchNorm fused
      into the preceding convolution, and one non-inplace activation per use;
    * conv+BN pairs on the stem/head of torchvision ``ResNet`` and timm
      ``EfficientNet`` and inside ``nn.Sequential`` containers are fused;
    * timm ``VisionTransformer`` is re-expressed with explicit attention
      (:class:`AttentionScores` and :class:`AttentionMix`), explicit residual additions, the positional embedding
      as a bias-like :class:`AddConstant` and average pooling as :class:`TokenMean`;
    * every ``LayerNorm`` becomes a :class:`DetachedLayerNorm`; in-place
      activations become non-inplace ones.

    Parameters
    ----------
    model : nn.Module
        The model; it is not modified.

    Returns
    -------
    nn.Module
        The canonical copy; ``copy(x)`` equals ``model.eval()(x)`` up to float
        rounding of the BatchNorm fusion.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"model could not be deep-copied for LRP ({type(exc).__name__}: {exc}); "
            "LRP works on a copy so that the original is never modified"
        ) from exc
    _clear_hooks(work)
    _tag_origins(work)
    work.eval()
    _fuse_stems(work)
    root_new = _rewrite_block(work, "")
    if root_new is not None:
        work = _adopt_origin(root_new, work)
    _rewrite(work, "")
    _fuse_sequentials(work)
    work.eval()
    for p in work.parameters():
        p.requires_grad_(False)
    return work


# --------------------------------------------------------------------------- #
# Leaf families and the audit
# --------------------------------------------------------------------------- #


def _linear_leaf_types() -> tuple[type, ...]:
    """Linear leaf types (epsilon-type rules), timm's included."""
    t = _timm_types()
    return LINEAR_LEAVES + (t["Conv2dSame"], t["LayerScale"])


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if len(m._modules) == 0]


def check_supported(model: nn.Module) -> None:
    """Raise ``TypeError`` naming the first leaf module without an LRP rule."""
    linear = _linear_leaf_types()
    known = linear + IDENTITY_ACTIVATIONS + CAPTUM_NONLINEAR + ATTENTION_SCORES + PASS_THROUGH
    for name, m in _leaf_modules(model):
        if type(m) in known:
            continue
        raise TypeError(
            f"LRP: module '{name or '<model>'}' of type {type(m).__module__}."
            f"{type(m).__qualname__} has no LRP rule. Supported leaf types: "
            + ", ".join(sorted({t.__name__ for t in known}))
            + "; composite blocks supported: torchvision BasicBlock/Bottleneck/ResNet/VGG, "
            "timm EfficientNet blocks without SE, timm VisionTransformer"
        )


def _node_kind(node: object) -> str:
    return re.sub(r"\d+$", "", type(node).__name__)


def audit_graph(model: nn.Module, inputs: Tensor, order: Optional[list[str]] = None) -> Tensor:
    """Run one forward pass and check the copy is fully covered by LRP rules.

    Every autograd operation between the input and the output must either lie
    inside a leaf module that can carry a rule, or only move values (reshape,
    permute, slice, concatenate, ...).  Leaf modules may be called several times
    and tensors may feed several modules: the relevance of a tensor is the sum of
    what its consumers send back, as for a gradient.

    Parameters
    ----------
    model : nn.Module
        Canonical copy (parameters not requiring gradients).
    inputs : Tensor of shape (N, C, H, W)
    order : list of str, optional
        If given, the names of the leaf modules (other than pure re-indexing
        ones) are appended in the order of their first call.

    Returns
    -------
    Tensor of shape (N, K)
        The model output (detached).

    Raises
    ------
    TypeError
        Naming the unsupported module or operation.
    """
    check_supported(model)
    # grad_fn id -> (module name, [(input grad_fn, output_nr)], grad_fn)
    boundaries: dict[int, tuple[str, list, object]] = {}
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
            if isinstance(out, Tensor) and out.grad_fn is not None:
                if not any(out is a for a in tensors):
                    ins = [(a.grad_fn, a.output_nr) for a in tensors]
                    boundaries[id(out.grad_fn)] = (name, ins, out.grad_fn)

        return hook

    try:
        for name, m in _leaf_modules(model):
            if type(m) in PASS_THROUGH:
                continue
            handles.append(m.register_forward_hook(make_hook(name or "<model>"), with_kwargs=True))
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"LRP: the model must return a single Tensor of logits, got {type(out).__name__}"
            )
        if order is not None:
            order.extend(calls)
        stack: list[tuple[object, str]] = []
        if out.grad_fn is not None:
            stack.append((out.grad_fn, "<output>"))
        seen: set[int] = set()
        visited: list[object] = []  # keeps node wrappers alive so ids stay unique
        while stack:
            node, consumer = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            visited.append(node)
            if id(node) in boundaries:
                mname, ins, _ = boundaries[id(node)]
                edges, consumer = ins, mname
            else:
                kind = _node_kind(node)
                if kind == "AccumulateGrad":
                    continue
                if kind not in _STRUCTURAL_NODES:
                    raise TypeError(
                        f"LRP: operation {kind} in the model's forward code (feeding "
                        f"'{consumer}') is outside any module with an LRP rule, so relevance "
                        "would not be conserved. Express it as a module (e.g. "
                        "captum_nave.attribution.lrp.Add for residual additions) or use a "
                        "supported architecture"
                    )
                edges = list(node.next_functions)  # type: ignore[attr-defined]
            for nxt, _ in edges:
                if nxt is not None:
                    stack.append((nxt, consumer))
        del visited
        return out.detach()
    finally:
        for h in handles:
            h.remove()
