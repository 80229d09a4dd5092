"""Layer-wise Relevance Propagation with named composites, on canonical model copies.

LRP explains a logit by propagating it back layer by layer with a *rule* per
layer.  Which rules is a choice: LRP-epsilon everywhere is, on ReLU networks,
close to gradient x input (a noisy map much like Integrated Gradients);
practitioners use *composites* (Montavon et al. 2019, "Layer-wise relevance
propagation: an overview"; Kohlbrenner et al. 2020, "Towards best practice in
explaining neural network decisions with LRP"): a flat or box rule on the first
layer, z+ / gamma / alpha-beta rules on the convolutions, epsilon on the dense
layers.  :func:`lrp_attribute` offers zennit's composites by name, the CP-LRP
and AttnLRP rules for transformers, rule maps by module name and type merged
over a composite, and a stabiliser relative to each layer's activations:

=============================  ==============================================
``composite``                  rules (see :mod:`._lrp_composites` for the table)
=============================  ==============================================
``"auto"`` (default)           ``"epsilon-plus-flat"`` for CNNs, ``"cp-lrp"``
                               for models with attention
``"epsilon"``                  epsilon everywhere (Bach et al. 2015)
``"epsilon-plus"``             z+ on convolutions, epsilon on dense layers
``"epsilon-plus-flat"``        + flat on the first layer (zennit EpsilonPlusFlat)
``"epsilon-gamma-box"``        z^B on the first convolution (``input_bounds``),
                               gamma on convolutions, epsilon on dense layers
``"epsilon-alpha2-beta1"``     alpha=2, beta=1 on convolutions (``-flat``: and
                               flat on the first layer)
``"cp-lrp"``                   transformers: constant attention weights, LayerNorm
                               scaling and GELU pass relevance (Ali et al. 2022)
``"attnlrp"``                  transformers: softmax and uniform product rules
                               through queries and keys (Achtibat et al. 2024)
=============================  ==============================================

The rules are zennit's (``zennit.rules``, including the treatment of negative
inputs) and the composites match zennit's ``EpsilonPlus``, ``EpsilonPlusFlat``,
``EpsilonGammaBox``, ``EpsilonAlpha2Beta1``; the tests compare the maps with
zennit on ResNet18, VGG16-BN and the real EfficientNet-Lite0.  zennit is not
needed at run time.

Canonical copy
--------------
Rules are attached to leaf modules; anything that happens in ``forward`` code
between leaves is invisible to them.  On a stock torchvision ResNet the residual
``out += identity`` would send the full relevance down *both* branches (Captum's
own LRP gives an input relevance of about -6.7e10 for a logit of -3 on a random
ResNet18), and a timm ViT has no leaf for LayerNorm statistics or attention.
LRP therefore runs on a *canonical copy* of the model (:func:`canonize`, a
``copy.deepcopy``; the user's model is never modified) in which every
value-mixing operation is a leaf module:

* torchvision ``ResNet`` (``BasicBlock``, ``Bottleneck``): BatchNorm folded into
  the preceding convolution (also the ``downsample`` branch), the shared
  in-place ReLU replaced by one ReLU per use, ``out += identity`` replaced by
  ``Add`` (zennit-style canonisation).
* torchvision ``VGG`` (with or without BN): in-place ReLUs replaced, conv+BN fused.
* timm ``EfficientNet`` blocks (``DepthwiseSeparableConv``, ``InvertedResidual``,
  ``ConvBnAct``; depthwise convs, ReLU6, no squeeze-excite), e.g.
  ``efficientnet_lite0``: ``BatchNormAct2d`` folded into the conv, skip as ``Add``.
* timm ``VisionTransformer`` (class token, register tokens, ``token``/``avg``
  pooling, LayerScale, query/key norms): the attention is computed explicitly as
  ``AttentionScores`` (the probabilities) and ``AttentionMix`` (their product
  with the values), residual additions as ``Add``, LayerNorm with its standard
  deviation held constant (``DetachedLayerNorm``), the positional embedding as
  a bias-like ``AddConstant``.  Class token, register tokens and the positional
  embedding absorb their share of the relevance, which is therefore not in the
  input map.

Before propagating, :func:`._lrp_canonize.audit_graph` runs one forward pass of
the copy and walks its autograd graph: any operation between rule-carrying
modules that is not a pure re-indexing (reshape, slice, concatenation, ...)
raises a ``TypeError`` naming it, as does a leaf module with no rule.  Unknown
architectures thus fail loudly instead of returning silently wrong relevance.
Custom models can use :class:`Add` for their residual additions.

Rule maps
---------
``name_map`` and ``type_map`` (a dict, or zennit-style list of ``(keys, rule)``
pairs) override the composite: ``name_map={"layer4.*": "epsilon", "conv1":
Flat()}`` matches shell-style patterns against the module names of *your* model
(``layer1.0.conv1``; modules created by the canonicalisation are named below the
module they replace, e.g. ``layer1.0.add``), ``type_map={nn.Linear: Gamma(0.05)}``
matches module types (also the original type: ``nn.LayerNorm``).  Names win over
types, the first match wins.  :func:`lrp_rules` lists every leaf with its rule.

Stabiliser and conservation
---------------------------
Every rule divides by a stabilised denominator ``z + eps * sign(z)``.  With
``stabilizer_mode="relative"`` (default) ``eps`` is multiplied by the root mean
square of ``z`` over each image (zennit's ``Stabilizer(norm_scale=True)``), so
the share of relevance it absorbs does not depend on the scale of the layer's
activations: on a LayerScale ViT whose logits are of order 1e-3 an absolute
``eps = 1e-6`` absorbs most of the relevance, the relative one 1e-6 of it.
With all biases zero (BatchNorm ``running_mean`` and ``beta``, LayerNorm bias,
positional embedding and prefix tokens included) epsilon, z+, flat, w^2 and
alpha-beta steps are conservative up to the stabiliser (gamma with zero bias
as well), so the input relevance sums to the target logit; the convergence
delta ``sum(relevance) - logit`` measures the difference, and
``delta / |logit|`` is reported as the relative delta by ``attribute("lrp")``.
AttnLRP's softmax rule is not conservative (it absorbs relevance like a bias).
"""

from __future__ import annotations

import inspect
from numbers import Integral
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_nave._validation import check_images, check_real, model_float_dtype
from captum_nave.attribution._lrp_canonize import audit_graph, canonize, fuse_conv_bn
from captum_nave.attribution._lrp_composites import (
    COMPOSITES,
    RULE_NAMES,
    RuleSettings,
    assign_rules,
    resolve_composite,
)
from captum_nave.attribution._lrp_engine import propagate
from captum_nave.attribution._lrp_modules import Add
from captum_nave.attribution._lrp_rules import (
    AlphaBeta,
    AttnLRPSoftmax,
    Constant,
    Epsilon,
    Flat,
    Gamma,
    Pass,
    Rule,
    Stabilizer,
    Uniform,
    WSquare,
    ZBox,
    ZPlus,
)

__all__ = [
    "COMPOSITES",
    "RULE_NAMES",
    "Add",
    "AlphaBeta",
    "AttnLRPSoftmax",
    "Constant",
    "Epsilon",
    "Flat",
    "Gamma",
    "Pass",
    "Rule",
    "Stabilizer",
    "Uniform",
    "WSquare",
    "ZBox",
    "ZPlus",
    "canonize",
    "fuse_conv_bn",
    "lrp_attribute",
    "lrp_rules",
    "normalisation_bounds",
]

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


BoundLike = Union[float, Sequence[float], Tensor]


def normalisation_bounds(
    mean: Sequence[float], std: Sequence[float], pixel_range: Tuple[float, float] = (0.0, 1.0)
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Bounds of normalised images, for the ZBox rule of ``"epsilon-gamma-box"``.

    Parameters
    ----------
    mean, std : sequence of C floats
        The normalisation ``(x - mean) / std`` (e.g. ``info["mean"]``,
        ``info["std"]`` from :func:`captum_nave.models.load_model`).
    pixel_range : (float, float), default (0, 1)
        Range of the pixels before normalisation.

    Returns
    -------
    low, high : tuple of C floats
        ``(pixel_range[0] - mean) / std`` and ``(pixel_range[1] - mean) / std`` per
        channel; pass them as ``input_bounds=(low, high)``.
    """
    m = torch.as_tensor(mean, dtype=torch.float64).flatten()
    s = torch.as_tensor(std, dtype=torch.float64).flatten()
    if m.shape != s.shape:
        raise ValueError(f"mean, std: expected the same number of channels, got {m.numel()} and {s.numel()}")
    if not bool((s > 0).all()):
        raise ValueError(f"std: expected positive values, got {s.tolist()}")
    lo, hi = (float(v) for v in pixel_range)
    if not lo < hi:
        raise ValueError(f"pixel_range: expected low < high, got {pixel_range!r}")
    return tuple(((lo - m) / s).tolist()), tuple(((hi - m) / s).tolist())


def _bound(value: BoundLike, name: str) -> Tensor:
    if isinstance(value, Tensor):
        t = value.detach().to("cpu", torch.float64)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor(float(value), dtype=torch.float64)
    elif isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        t = torch.tensor([float(v) for v in value], dtype=torch.float64).reshape(1, -1, 1, 1)
    else:
        raise TypeError(
            f"{name}: expected a number, a sequence of one number per channel or a Tensor, "
            f"got {type(value).__name__}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values")
    return t


def _check_bounds(input_bounds: Any, x: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    if input_bounds is None:
        return None
    if not (isinstance(input_bounds, (tuple, list)) and len(input_bounds) == 2):
        raise TypeError(
            f"input_bounds: expected a pair (low, high), got {type(input_bounds).__name__}"
        )
    low, high = _bound(input_bounds[0], "input_bounds[0]"), _bound(input_bounds[1], "input_bounds[1]")
    try:
        torch.broadcast_shapes(low.shape, high.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"input_bounds: shapes {tuple(low.shape)} and {tuple(high.shape)} do not broadcast "
            f"to the inputs of shape {tuple(x.shape)} (per-channel bounds: shape (1, C, 1, 1))"
        ) from None
    if bool((low > high).any()):
        raise ValueError("input_bounds: expected low <= high everywhere")
    return low, high


def _settings(
    x: Tensor,
    epsilon: float,
    stabilizer: float,
    stabilizer_mode: str,
    gamma: float,
    input_bounds: Any,
) -> RuleSettings:
    if stabilizer_mode not in ("relative", "absolute"):
        raise ValueError(f"stabilizer_mode: expected 'relative' or 'absolute', got {stabilizer_mode!r}")
    return RuleSettings(
        epsilon=check_real(epsilon, "epsilon", low=0.0),
        stabilizer=check_real(stabilizer, "stabilizer", low=0.0),
        relative=stabilizer_mode == "relative",
        gamma=check_real(gamma, "gamma", low=0.0),
        bounds=_check_bounds(input_bounds, x),
    )


def _prepare(
    model: nn.Module, inputs: Any, composite: str, settings_args: dict, name_map: Any, type_map: Any
) -> Tuple[nn.Module, Tensor, Tensor, dict, list, str]:
    """Canonical copy, audited logits, rules and plan shared by lrp_attribute and lrp_rules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_images(inputs, "inputs", dtype=model_float_dtype(model))
    settings = _settings(x, **settings_args)
    if not isinstance(composite, str):
        raise TypeError(f"composite: expected a str, got {type(composite).__name__}")
    work = canonize(model)
    x = x.detach().clone()
    order: List[str] = []
    logits = audit_graph(work, x, order)
    if logits.dim() != 2:
        raise ValueError(
            f"LRP needs a model returning logits of shape (N, K), got shape {tuple(logits.shape)}"
        )
    name = resolve_composite(composite, work)
    rules, plan = assign_rules(work, name, order, settings, name_map, type_map)
    return work, x, logits, rules, plan, name


def lrp_attribute(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    *,
    composite: str = "auto",
    epsilon: float = 1e-6,
    stabilizer: float = 1e-6,
    stabilizer_mode: str = "relative",
    gamma: float = 0.25,
    input_bounds: Optional[Tuple[BoundLike, BoundLike]] = None,
    name_map: Any = None,
    type_map: Any = None,
    return_convergence_delta: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
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
    composite : str, default "auto"
        Rules by layer kind and depth: ``"auto"`` (``"epsilon-plus-flat"`` for
        CNNs, ``"cp-lrp"`` for models with attention), ``"epsilon"``,
        ``"epsilon-plus"``, ``"epsilon-plus-flat"``, ``"epsilon-gamma-box"``,
        ``"epsilon-alpha2-beta1"``, ``"epsilon-alpha2-beta1-flat"``, ``"cp-lrp"``,
        ``"attnlrp"`` (see :data:`COMPOSITES` and the module docstring).
    epsilon : float >= 0, default 1e-6
        Stabiliser of the epsilon rule (dense layers, LayerNorm, ...).
    stabilizer : float >= 0, default 1e-6
        Stabiliser of the other rules (z+, gamma, flat, box) and of sums and
        poolings.
    stabilizer_mode : {"relative", "absolute"}, default "relative"
        ``"relative"``: ``epsilon`` and ``stabilizer`` are multiplied by the root
        mean square of each layer's output, per image (zennit's
        ``Stabilizer(norm_scale=True)``); ``"absolute"``: added as they are
        (zennit's default).
    gamma : float >= 0, default 0.25
        Parameter of the gamma rule (``"epsilon-gamma-box"``, rule name ``"gamma"``).
    input_bounds : (low, high), optional
        Range of valid inputs for the ZBox rule (``"epsilon-gamma-box"``): numbers,
        one number per channel, or tensors broadcastable to ``inputs``; for images
        normalised as ``(x - mean) / std``: :func:`normalisation_bounds`.
    name_map, type_map : dict or list of (keys, rule) pairs, optional
        Rules by module name pattern / module type, merged over ``composite``;
        a rule is a :class:`Rule` (``Epsilon(0.25)``, ``ZPlus()``, ...) or a name
        from :data:`RULE_NAMES`.
    return_convergence_delta : bool, default False
        Also return the per-image conservation delta.

    Returns
    -------
    relevance : Tensor of shape (N, C, H, W)
        Input relevance (same dtype/device as ``inputs``, detached).
    delta : Tensor of shape (N,)
        Only if ``return_convergence_delta``: ``relevance[i].sum() - logit[i, target[i]]``
        (logits of the canonical copy).  Zero for a conservative propagation;
        bias terms, the class/register tokens and positional embedding of ViTs,
        and the stabilisers absorb relevance.

    Raises
    ------
    TypeError
        Unsupported module or operation (named in the message), wrong argument
        types, a rule that does not apply to the module it is mapped to.
    ValueError
        ``inputs`` not 4D, ``target`` out of range or of the wrong length, bad
        ``composite`` / ``epsilon`` / ``stabilizer`` / ``gamma``, a ZBox rule
        without ``input_bounds``.

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.resnet18(weights=None, num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> rel, delta = lrp_attribute(net, x, target=[3, 7], return_convergence_delta=True)
    >>> rel.shape, delta.shape
    (torch.Size([2, 3, 32, 32]), torch.Size([2]))
    >>> rel = lrp_attribute(net, x, 3, composite="epsilon-gamma-box",
    ...                     input_bounds=normalisation_bounds((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ...                     name_map={"layer4.*": "epsilon"})
    """
    relevance, delta, _, _ = _run(
        model, inputs, target, composite=composite, epsilon=epsilon, stabilizer=stabilizer,
        stabilizer_mode=stabilizer_mode, gamma=gamma, input_bounds=input_bounds,
        name_map=name_map, type_map=type_map,
    )
    return (relevance, delta) if return_convergence_delta else relevance


def _run(
    model: nn.Module, inputs: Any, target: Any, *, composite: str, name_map: Any, type_map: Any,
    **settings: Any,
) -> Tuple[Tensor, Tensor, Tensor, str]:
    """-> (relevance, delta, target logit, resolved composite name)."""
    work, x, logits, rules, _, name = _prepare(model, inputs, composite, settings, name_map, type_map)
    t = _check_target(target, x.shape[0], logits.shape[1])
    relevance, out = propagate(work, x, t, rules)
    chosen = out.gather(1, t.to(out.device).view(-1, 1)).view(-1).to(relevance.dtype)
    return relevance, relevance.sum(dim=(1, 2, 3)) - chosen, chosen, name


def lrp_rules(model: nn.Module, inputs: Tensor, **options: Any) -> List[Tuple[str, str, str, Rule]]:
    """Which rule :func:`lrp_attribute` applies to each leaf of the canonical copy.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, C, H, W)
        Needed to trace the execution order, which defines the first layer.
    **options
        ``composite``, ``epsilon``, ``stabilizer``, ``stabilizer_mode``, ``gamma``,
        ``input_bounds``, ``name_map``, ``type_map``, as for :func:`lrp_attribute`.

    Returns
    -------
    list of (copy name, original name, module type, rule)
        In order of execution; leaves that only move values (``Identity``,
        ``Flatten``) are left out.

    Examples
    --------
    >>> for copy_name, name, kind, rule in lrp_rules(net, x, composite="epsilon-plus-flat")[:2]:
    ...     print(name, kind, rule)
    conv1 Conv2d Flat(stabilizer=1e-06, relative=True)
    relu ReLU Pass()
    """
    known = set(inspect.signature(lrp_attribute).parameters) - {"model", "inputs", "target", "return_convergence_delta"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"lrp_rules got unexpected keyword argument(s) {unknown}; accepted: {', '.join(sorted(known))}")
    defaults = {k: v.default for k, v in inspect.signature(lrp_attribute).parameters.items() if k in known}
    opts = {**defaults, **options}
    composite, name_map, type_map = opts.pop("composite"), opts.pop("name_map"), opts.pop("type_map")
    return _prepare(model, inputs, composite, opts, name_map, type_map)[4]
