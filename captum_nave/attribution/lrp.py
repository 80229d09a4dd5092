"""Layer-wise Relevance Propagation that conserves relevance on ResNets and ViTs.

Captum's :class:`captum.attr.LRP` attaches a propagation rule to every *leaf*
module and lets relevance flow as the "gradient" between them.  Anything that
happens in ``forward`` code between leaves is invisible to it.  On a stock
torchvision ResNet the residual ``out += identity`` therefore sends the full
relevance down *both* branches (and divides by the wrong denominator), so the
input relevance explodes (about -6.7e10 for a logit of -3 on a random
ResNet18); on a timm ViT it raises (no rule for LayerNorm, GELU, attention).

This module keeps Captum's machinery and rules and feeds them a *canonical copy*
of the model (:func:`canonize`, a ``copy.deepcopy``; the user's model is never
modified) in which every value-mixing operation is a leaf module:

=============================  ===============================================
module in the copy             rule
=============================  ===============================================
Conv2d, timm Conv2dSame,       Captum ``EpsilonRule`` (or ``GammaRule``);
Linear                         a following BatchNorm is folded in first
residual addition ``Add``      ``EpsilonRule``: ``R_a = a R / (a + b + eps)``
MaxPool2d, (Adaptive)AvgPool   ``EpsilonRule`` (Captum's defaults)
BatchNorm2d not after a conv   ``EpsilonRule`` (a linear layer in eval mode)
ReLU, Tanh, Dropout            Captum's built-in pass-through
ReLU6, GELU, SiLU, ...         ``IdentityRule``: relevance passes unchanged
LayerNorm                      ``DetachedLayerNorm`` + ``EpsilonRule``: the
                               centring and affine part are propagated, the
                               division by the std is treated as constant
attention ``A @ V``            ``AttentionMix`` + ``EpsilonRule`` with the
                               softmax weights ``A`` detached (CP-LRP)
positional embedding           ``AddConstant`` + ``EpsilonRule`` (a bias)
ViT average pooling            ``TokenMean`` + ``EpsilonRule``
Identity, Flatten              ``PassThroughRule`` (no hooks)
=============================  ===============================================

Canonicalisation of known families (see :mod:`._lrp_canonize`):

* torchvision ``ResNet`` (``BasicBlock``, ``Bottleneck``): BatchNorm folded into
  the preceding convolution (also the ``downsample`` branch), the shared
  in-place ReLU replaced by one ReLU per use, ``out += identity`` replaced by
  ``Add`` (zennit-style canonisation; Montavon et al. 2019, "Layer-wise relevance
  propagation: an overview").
* torchvision ``VGG`` (with or without BN): in-place ReLUs replaced, conv+BN fused.
* timm ``EfficientNet`` blocks (``DepthwiseSeparableConv``, ``InvertedResidual``,
  ``ConvBnAct``; depthwise convs, ReLU6, no squeeze-excite), e.g.
  ``efficientnet_lite0``: ``BatchNormAct2d`` folded into the conv, skip as ``Add``.
* timm ``VisionTransformer`` (class token, register tokens, ``token``/``avg``
  pooling): the transformer rules of CP-LRP (Ali et al. 2022, "XAI for
  Transformers: Better Explanations through Conservative Propagation",
  ICML, arXiv:2202.07304): the attention weights are treated as constants so
  all relevance flows through the values, LayerNorm's normalisation is
  detached, and the elementwise GELU uses the identity rule as in AttnLRP
  (Achtibat et al. 2024, arXiv:2402.05602).  The attention is computed
  explicitly in the copy (timm's fused SDPA is not used).  Class token,
  register tokens and the positional embedding are bias-like constants: they
  absorb their share of the relevance, which is therefore not in the input map.

Before propagating, :func:`audit_graph` runs one forward pass of the copy and
walks its autograd graph: any operation between rule-carrying modules that is
not a pure re-indexing (reshape, slice, concatenation, ...) raises a
``TypeError`` naming it, as does a leaf module with no rule, a module called
more than once, or an activation whose input also feeds another operation.  Unknown architectures thus fail loudly instead of returning
silently wrong relevance.  Custom models can use :class:`Add` for their
residual additions.

Conservation: with all biases zero (BatchNorm ``running_mean`` and ``beta``,
LayerNorm bias, positional embedding and prefix tokens included) every step is
conservative up to the epsilon stabiliser, so the input relevance sums to the
target logit; the returned convergence delta measures the difference.
"""

from __future__ import annotations

from numbers import Integral
from typing import Union

import torch
from captum.attr import LRP
from torch import Tensor, nn

from captum_nave._validation import check_images, check_real, model_float_dtype
from captum_nave.attribution._lrp_canonize import (
    RULES,
    attach_rules,
    audit_graph,
    canonize,
    fuse_conv_bn,
)
from captum_nave.attribution._lrp_modules import Add

__all__ = ["Add", "canonize", "fuse_conv_bn", "lrp_attribute"]

TargetLike = Union[int, Tensor, list]


def _check_target(target: object, n: int, n_classes: int) -> Tensor:
    """Turn ``target`` into a LongTensor of shape (n,) within [0, n_classes)."""
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints or an integer Tensor, got bool")
    if isinstance(target, Integral):
        t = torch.full((n,), int(target), dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target tensor must have an integer dtype, got {target.dtype}")
        if target.dim() == 0 or target.numel() == 1 and n != 1 and target.dim() <= 1:
            t = torch.full((n,), int(target.reshape(-1)[0]), dtype=torch.long)
        elif target.dim() == 1 and target.shape[0] == n:
            t = target.detach().to("cpu", torch.long)
        else:
            raise ValueError(
                f"target tensor must be a scalar or of shape ({n},), got shape {tuple(target.shape)}"
            )
    elif isinstance(target, (list, tuple)):
        if len(target) != n or not all(
            isinstance(v, Integral) and not isinstance(v, bool) for v in target
        ):
            raise ValueError(
                f"target list must hold {n} ints (one per image), got {target!r}"
            )
        t = torch.tensor([int(v) for v in target], dtype=torch.long)
    else:
        raise TypeError(
            f"target must be an int, a list of ints or an integer Tensor, got {type(target).__name__}"
        )
    bad = (t < 0) | (t >= n_classes)
    if bool(bad.any()):
        raise ValueError(
            f"target must lie in [0, {n_classes - 1}] (the model has {n_classes} outputs), "
            f"got {t[bad].tolist()}"
        )
    return t


def lrp_attribute(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    *,
    epsilon: float = 1e-6,
    rule: str = "epsilon",
    return_convergence_delta: bool = False,
    **kwargs: object,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Input relevance of ``target`` by LRP on a canonical copy of ``model``.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits of shape (N, K): torchvision ResNet / VGG,
        timm EfficientNet (no SE) or timm VisionTransformer, or any model built
        from supported modules (see :mod:`captum_nave.attribution.lrp`).
        Never modified (mode, ``requires_grad``, weights, buffers, hooks).
    inputs : Tensor of shape (N, C, H, W)
        Images (floating point), on the model's device.
    target : int, list of int, or integer Tensor of shape () or (N,)
        Class index per image.
    epsilon : float, default 1e-6
        Stabiliser of the epsilon rule, ``z + epsilon * sign(z)`` in every
        denominator; must be finite and >= 0.
    rule : {"epsilon", "gamma"}, default "epsilon"
        "gamma" uses Captum's ``GammaRule`` on convolutions and linear layers
        (parameter ``gamma`` in ``kwargs``, default 0.25) and the epsilon rule
        elsewhere.
    return_convergence_delta : bool, default False
        Also return the per-image conservation delta.
    **kwargs
        ``gamma`` (float >= 0, only with ``rule="gamma"``).

    Returns
    -------
    relevance : Tensor of shape (N, C, H, W)
        Input relevance (same dtype/device as ``inputs``, detached).
    delta : Tensor of shape (N,)
        Only if ``return_convergence_delta``: ``relevance[i].sum() - logit[i, target[i]]``.
        Zero for a conservative propagation; bias terms, the class/register
        tokens and positional embedding of ViTs, and epsilon absorb relevance.

    Raises
    ------
    TypeError
        Unsupported module or operation (named in the message), wrong argument types.
    ValueError
        ``inputs`` not 4D, ``target`` out of range or of the wrong length,
        bad ``epsilon`` / ``rule`` / ``gamma``.

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.resnet18(weights=None, num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> rel, delta = lrp_attribute(net, x, target=[3, 7], return_convergence_delta=True)
    >>> rel.shape, delta.shape
    (torch.Size([2, 3, 32, 32]), torch.Size([2]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_images(inputs, "inputs", dtype=model_float_dtype(model))
    epsilon = check_real(epsilon, "epsilon", low=0.0)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    gamma_given = "gamma" in kwargs
    gamma = kwargs.pop("gamma", 0.25)
    if kwargs:
        raise TypeError(
            f"lrp_attribute got unexpected keyword argument(s) {sorted(kwargs)}; "
            "accepted: epsilon, rule, return_convergence_delta, gamma"
        )
    if gamma_given and rule != "gamma":
        raise ValueError(f"gamma is used only with rule='gamma', got rule={rule!r}")
    gamma = check_real(gamma, "gamma", low=0.0)

    work = canonize(model)
    x = x.detach().clone()
    logits = audit_graph(work, x)
    if logits.dim() != 2:
        raise ValueError(
            f"LRP needs a model returning logits of shape (N, K), got shape {tuple(logits.shape)}"
        )
    t = _check_target(target, x.shape[0], logits.shape[1])
    attach_rules(work, rule=rule, epsilon=float(epsilon), gamma=float(gamma))
    x.requires_grad_(True)  # the copy of the inputs; avoids Captum's warning
    relevance = LRP(work).attribute(x, target=t.to(x.device))
    relevance = relevance.detach()
    if not return_convergence_delta:
        return relevance
    chosen = logits.gather(1, t.to(logits.device).view(-1, 1)).view(-1)
    delta = relevance.sum(dim=(1, 2, 3)) - chosen.to(relevance.dtype)
    return relevance, delta
