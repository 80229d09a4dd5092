"""Canonical working copies of models for LRP.

:func:`canonize` deep-copies a model and rewrites the copy so that every
operation that mixes values is a leaf module that can carry an LRP rule (see
:mod:`captum_nave.attribution._lrp_modules`; the rules are chosen by
:mod:`._lrp_composites`). Which modules of a model family form a residual block, a
transformer or a stem is known by the family's model adapter
(:meth:`captum_nave.adapters.ModelAdapter.lrp_rewrite`); this module provides the
building blocks they use (:class:`LRPKit`: BatchNorm fusion, residual blocks, the
transformer of :mod:`._lrp_transformer`) and the generic rewrites (LayerNorm, in-place
activations, conv + BN in ``nn.Sequential``). :func:`audit_graph` runs one forward pass
and proves that the copy has no operation outside those modules that would silently
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

from captum_nave.adapters import TransformerParts, adapter_classes
from captum_nave.adapters.modules import QuickGELU
from captum_nave.attribution._lrp_modules import (
    Add,
    AddConstant,
    AttentionMix,
    AttentionScores,
    DetachedLayerNorm,
    TokenMean,
)
from captum_nave.attribution._lrp_transformer import _ORIGIN_ATTRS, HOOK_DICTS, LRPTransformer
from captum_nave.attribution._lrp_transformer import fresh_activation as _fresh_activation

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
    QuickGELU,
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
    """timm leaf types that carry rules, looked up lazily (timm is a dependency)."""
    from timm.layers import Conv2dSame, LayerScale

    return {"Conv2dSame": Conv2dSame, "LayerScale": LayerScale}


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


class LRPKit:
    """The builders family adapters use in :meth:`~captum_nave.adapters.ModelAdapter.lrp_rewrite`."""

    def fuse(self, conv: nn.Module, bn: nn.Module, where: str) -> nn.Module:
        """Convolution with an eval-mode BatchNorm folded in (see :func:`fuse_conv_bn`)."""
        return fuse_conv_bn(conv, bn, where)  # type: ignore[arg-type]

    def activation(self, act: Optional[nn.Module]) -> nn.Module:
        """A fresh, non-inplace copy of an activation (Identity for None)."""
        return _fresh_activation(act)

    def residual(
        self, body: list, shortcut: Optional[nn.Module], post_act: Optional[nn.Module]
    ) -> nn.Module:
        """:class:`ResidualBlock` ``post_act(add(body(x), shortcut(x)))``."""
        return ResidualBlock(nn.Sequential(*body), shortcut, post_act)

    def transformer(self, parts: TransformerParts, where: str) -> nn.Module:
        """:class:`~captum_nave.attribution._lrp_transformer.LRPTransformer` of the parts."""
        return LRPTransformer(parts, where)


# --------------------------------------------------------------------------- #
# Canonicalisation
# --------------------------------------------------------------------------- #


def _rewrite_block(module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:
    """The canonical replacement of a module: family rewrites first, then generic ones."""
    for adapter_cls in adapter_classes():
        new = adapter_cls.lrp_rewrite(module, name, kit)
        if new is not None:
            return new
    if isinstance(module, nn.LayerNorm):
        return DetachedLayerNorm.from_layer_norm(module)
    if type(module) in IDENTITY_ACTIVATIONS + (nn.ReLU,) and getattr(module, "inplace", False):
        return _fresh_activation(module)
    return None


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
_ORIGIN, _ORIGIN_TYPE = _ORIGIN_ATTRS


def _adopt_origin(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give a replacement module the origin of the module it replaces (if it has none)."""
    for attr in (_ORIGIN, _ORIGIN_TYPE):
        if attr not in vars(new) and attr in vars(old):
            setattr(new, attr, getattr(old, attr))
    return new


def _rewrite(module: nn.Module, prefix: str, kit: LRPKit) -> None:
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        new = _rewrite_block(child, name, kit)
        if new is not None:
            module._modules[child_name] = _adopt_origin(new, child)
            child = new
        _rewrite(child, name, kit)


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
        for attr in HOOK_DICTS:
            d = getattr(m, attr, None)
            if d is not None:
                d.clear()
        m._is_full_backward_hook = None


def canonize(model: nn.Module) -> nn.Module:
    """Make an LRP-ready working copy of ``model``.

    The copy (``copy.deepcopy``) is put in eval mode, its parameters stop
    requiring gradients, hooks copied from the original are dropped, and every
    module (root first) is offered to the model adapters' ``lrp_rewrite``:

    * torchvision ``BasicBlock``/``Bottleneck`` and timm ``DepthwiseSeparableConv``/
      ``InvertedResidual``/``ConvBnAct`` become :class:`ResidualBlock` s with an
      explicit :class:`~captum_nave.attribution._lrp_modules.Add`, BatchNorm fused
      into the preceding convolution, and one non-inplace activation per use;
      conv+BN pairs on the stem/head of torchvision ``ResNet`` and timm
      ``EfficientNet`` are fused;
    * ViTs (timm ``VisionTransformer``, Hugging Face ViT / DeiT / DINOv2 / CLIP /
      SigLIP, torch-hub DINOv2) are rebuilt by
      :class:`~captum_nave.attribution._lrp_transformer.LRPTransformer`: explicit
      attention (detached softmax), explicit residual additions, layer scale as a
      per-channel linear map, the embedding constants (prefix tokens, positions) as a
      bias-like :class:`AddConstant`, average pooling as :class:`TokenMean`;

    then, generically, conv+BN pairs inside ``nn.Sequential`` containers are fused,
    every ``LayerNorm`` becomes a :class:`DetachedLayerNorm` and in-place
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
    kit = LRPKit()
    root_new = _rewrite_block(work, "", kit)
    if root_new is not None:
        work = _adopt_origin(root_new, work)
    _rewrite(work, "", kit)
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
            "timm EfficientNet blocks without SE, timm VisionTransformer, Hugging Face "
            "ViT/DeiT/DINOv2/CLIP/SigLIP vision models, torch-hub DINOv2"
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
            structural = id(node) not in boundaries
            if not structural:
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
