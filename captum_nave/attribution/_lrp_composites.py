"""Named LRP composites and user rule maps (zennit's vocabulary).

A composite says which rule every leaf of the canonical copy gets, by the kind
of layer and its depth (the first layer of the network is special), as
zennit's composites do.  The kinds, in the canonical copy of
:func:`._lrp_canonize.canonize`:

* *first layer*: the first convolution or linear layer executed (zennit: the
  first matching module);
* *convolution*: every other ``Conv2d`` (also depthwise, timm ``Conv2dSame``,
  with BatchNorm folded in);
* *dense*: every other ``nn.Linear`` (classifier heads; in transformers also
  q/k/v, projections and MLPs);
* *max pooling*: ``Gradient`` (winner takes all, as zennit);
* *sum/pool*: residual additions, average pooling, token means,
  positional embeddings, LayerScale, unfused BatchNorm: the epsilon rule with
  the ``stabilizer`` (zennit's ``Norm`` on sums and poolings);
* *LayerNorm*: the epsilon rule with the standard deviation held constant
  (identity on the normalisation; Ali et al. 2022, Achtibat et al. 2024);
* *activation* (ReLU, GELU, SiLU, ...): ``Pass``;
* *attention*: the probabilities ``softmax(q k^T)`` and their product with the
  values (see the ``cp-lrp`` and ``attnlrp`` rows).

===========================  ============  ==============  ========  ==================
composite                    first layer   convolutions    dense     attention
===========================  ============  ==============  ========  ==================
``epsilon``                  Epsilon       Epsilon         Epsilon   CP-LRP
``epsilon-plus``             ZPlus         ZPlus           Epsilon   CP-LRP
``epsilon-plus-flat``        Flat          ZPlus           Epsilon   CP-LRP
``epsilon-gamma-box``        ZBox (conv)   Gamma(0.25)     Epsilon   CP-LRP
``epsilon-alpha2-beta1``     AlphaBeta     AlphaBeta(2,1)  Epsilon   CP-LRP
``epsilon-alpha2-beta1-flat`` Flat         AlphaBeta(2,1)  Epsilon   CP-LRP
``cp-lrp``                   Epsilon       Epsilon         Epsilon   CP-LRP
``attnlrp``                  Epsilon       Epsilon         Epsilon   AttnLRP
===========================  ============  ==============  ========  ==================

CP-LRP: the attention probabilities are constants (``Constant``), all relevance
flows through the values (Ali et al. 2022).  AttnLRP: the softmax rule and the
uniform rule on ``q k^T`` and ``attn @ v`` send relevance through queries and
keys as well (Achtibat et al. 2024).  On a model without attention ``cp-lrp``
and ``attnlrp`` are the ``epsilon`` composite.

User rule maps are merged over the composite: a leaf matched by ``name_map``
(shell-style patterns on the module names of the user's model, e.g.
``"layer4.*"``, or on the names in the copy) takes that rule (a pattern with
wildcards only where the rule applies, e.g. z+ to the convolutions and linear
layers it matches, not to their activations; an exact name or a type must fit
its rule), else a leaf
matched by ``type_map`` (``isinstance`` on the module or on the type of the
user's module it came from, e.g. ``nn.LayerNorm``), else the composite's rule,
as zennit's ``NameLayerMapComposite`` / ``MixedComposite`` (names before types,
first match wins).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from ._lrp_canonize import (
    ATTENTION_SCORES,
    CAPTUM_NONLINEAR,
    IDENTITY_ACTIVATIONS,
    PASS_THROUGH,
    _conv_types,
    _leaf_modules,
    _linear_leaf_types,
    module_origins,
)
from ._lrp_modules import Add, AttentionMix, DetachedLayerNorm, TokenMean
from ._lrp_rules import (
    AlphaBeta,
    AttnLRPSoftmax,
    Constant,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Pass,
    Rule,
    Uniform,
    WSquare,
    ZBox,
    ZPlus,
)

__all__ = ["COMPOSITES", "Composite", "RULE_NAMES", "RuleSettings", "assign_rules", "resolve_composite"]

RuleLike = Union[Rule, str]


@dataclass(frozen=True)
class Composite:
    """Rules of a named composite by kind of layer (see the module docstring)."""

    name: str
    first: str
    conv: str
    dense: str
    attention: str  # "cp-lrp" or "attnlrp"
    first_kinds: Tuple[str, ...]
    summary: str
    reference: str


_KB = "Kohlbrenner et al. 2020, 'Towards best practice in explaining neural network decisions with LRP', IJCNN"
_MONTAVON = "Montavon et al. 2019, 'Layer-wise relevance propagation: an overview', LNCS 11700"
COMPOSITES: Dict[str, Composite] = {
    c.name: c
    for c in (
        Composite(
            "epsilon", "epsilon", "epsilon", "epsilon", "cp-lrp", ("conv", "dense"),
            "LRP-epsilon everywhere; on ReLU networks close to gradient x input.",
            "Bach et al. 2015, 'On pixel-wise explanations for non-linear classifier decisions "
            "by layer-wise relevance propagation', PLoS ONE 10(7)",
        ),
        Composite(
            "epsilon-plus", "zplus", "zplus", "epsilon", "cp-lrp", ("conv", "dense"),
            "z+ on convolutions, epsilon on dense layers (zennit EpsilonPlus).",
            f"{_MONTAVON}; {_KB}",
        ),
        Composite(
            "epsilon-plus-flat", "flat", "zplus", "epsilon", "cp-lrp", ("conv", "dense"),
            "flat on the first layer, z+ on other convolutions, epsilon on dense layers "
            "(zennit EpsilonPlusFlat); the recommended composite for CNNs.",
            f"{_KB}; Lapuschkin et al. 2019, 'Unmasking Clever Hans predictors', Nat. Commun. 10",
        ),
        Composite(
            "epsilon-gamma-box", "zbox", "gamma", "epsilon", "cp-lrp", ("conv",),
            "z^B on the first convolution (input bounds from the normalisation), gamma=0.25 on "
            "other convolutions, epsilon on dense layers (zennit EpsilonGammaBox).",
            f"{_MONTAVON}; Montavon et al. 2017, 'Explaining nonlinear classification decisions "
            "with deep Taylor decomposition', Pattern Recognit. 65",
        ),
        Composite(
            "epsilon-alpha2-beta1", "alpha2-beta1", "alpha2-beta1", "epsilon", "cp-lrp", ("conv", "dense"),
            "alpha=2, beta=1 on convolutions, epsilon on dense layers (zennit EpsilonAlpha2Beta1).",
            f"Bach et al. 2015; {_KB}",
        ),
        Composite(
            "epsilon-alpha2-beta1-flat", "flat", "alpha2-beta1", "epsilon", "cp-lrp", ("conv", "dense"),
            "flat on the first layer, alpha=2, beta=1 on other convolutions, epsilon on dense "
            "layers (zennit EpsilonAlpha2Beta1Flat).",
            f"{_KB}",
        ),
        Composite(
            "cp-lrp", "epsilon", "epsilon", "epsilon", "cp-lrp", ("conv", "dense"),
            "transformers: attention weights constant, LayerNorm scaling and GELU pass relevance, "
            "epsilon on linear layers.",
            "Ali et al. 2022, 'XAI for Transformers: Better Explanations through Conservative "
            "Propagation', ICML, arXiv:2202.07304",
        ),
        Composite(
            "attnlrp", "epsilon", "epsilon", "epsilon", "attnlrp", ("conv", "dense"),
            "transformers: relevance also through queries and keys (softmax and uniform "
            "product rules), LayerNorm scaling and GELU pass relevance, epsilon on linear layers.",
            "Achtibat et al. 2024, 'AttnLRP: Attention-Aware Layer-wise Relevance Propagation "
            "for Transformers', ICML, arXiv:2402.05602",
        ),
    )
}


@dataclass(frozen=True)
class RuleSettings:
    """Parameters of the rules that composites and rule names refer to.

    Attributes
    ----------
    epsilon : float
        Epsilon of the epsilon rule on dense/conv layers and LayerNorm.
    stabilizer : float
        Stabiliser of the other rules and of sums and poolings.
    relative : bool
        Both relative to the RMS of the layer's output (per image).
    gamma : float
        Parameter of the gamma rule.
    bounds : (Tensor, Tensor) or None
        ``(low, high)`` of the ZBox rule.
    """

    epsilon: float = 1e-6
    stabilizer: float = 1e-6
    relative: bool = True
    gamma: float = 0.25
    bounds: Optional[Tuple[Tensor, Tensor]] = None

    def make(self, key: str, where: str) -> Rule:
        """The rule called ``key`` with these parameters (``where`` names the module in errors)."""
        e, s, r = self.epsilon, self.stabilizer, self.relative
        if key == "zbox":
            if self.bounds is None:
                raise ValueError(
                    f"input_bounds: the ZBox rule (on '{where}') needs the range of valid inputs; "
                    "pass input_bounds=(low, high), e.g. normalisation_bounds(mean, std) for "
                    "images normalised as (x - mean) / std from [0, 1]"
                )
            return ZBox(self.bounds[0], self.bounds[1], s, r)
        makers = {
            "epsilon": lambda: Epsilon(e, r),
            "lrp-0": lambda: Epsilon(0.0, r),
            "norm": lambda: Epsilon(s, r),
            "zplus": lambda: ZPlus(s, r),
            "alpha2-beta1": lambda: AlphaBeta(2.0, 1.0, s, r),
            "alpha1-beta0": lambda: AlphaBeta(1.0, 0.0, s, r),
            "gamma": lambda: Gamma(self.gamma, s, r),
            "flat": lambda: Flat(s, r),
            "wsquare": lambda: WSquare(s, r),
            "pass": Pass,
            "gradient": Gradient,
            "uniform": lambda: Uniform(e, r),
            "constant": Constant,
            "attnlrp-softmax": lambda: AttnLRPSoftmax(e, r),
        }
        return makers[key]()


#: Rule names accepted in ``name_map`` / ``type_map`` (besides Rule instances).
RULE_NAMES: Tuple[str, ...] = (
    "epsilon", "lrp-0", "norm", "zplus", "alpha2-beta1", "alpha1-beta0", "gamma", "flat",
    "wsquare", "zbox", "pass", "gradient", "uniform", "constant", "attnlrp-softmax",
)
_ALIASES = {"z+": "zplus", "zero": "lrp-0", "alpha-beta": "alpha2-beta1", "identity": "pass"}

_PARAM_FREE_LINEAR: Tuple[type, ...] = (
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, Add, TokenMean,
)


def _canonical_rule_name(value: str, where: str) -> str:
    key = value.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in RULE_NAMES:
        raise ValueError(f"{where}: expected a Rule or one of {', '.join(RULE_NAMES)}, got {value!r}")
    return key


def _pairs(value: Any, where: str, key_kind: str) -> List[Tuple[Tuple[Any, ...], RuleLike]]:
    """Normalise a dict / list of pairs into [(keys, rule)] (keys: names or types)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        items: Iterable = value.items()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise TypeError(
            f"{where}: expected a dict or a list of (key, rule) pairs, got {type(value).__name__}"
        )
    out: List[Tuple[Tuple[Any, ...], RuleLike]] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"{where}: expected (key, rule) pairs, got {item!r}")
        keys, rule = item
        keys = tuple(keys) if isinstance(keys, (tuple, list)) else (keys,)
        for k in keys:
            ok = isinstance(k, str) if key_kind == "name" else isinstance(k, type) and issubclass(k, nn.Module)
            if not ok:
                expected = "module name patterns (str)" if key_kind == "name" else "nn.Module subclasses"
                raise TypeError(f"{where}: keys must be {expected}, got {k!r}")
        if isinstance(rule, str):
            rule = _canonical_rule_name(rule, f"{where}[{item[0]!r}]")
        elif not isinstance(rule, Rule):
            raise TypeError(
                f"{where}[{item[0]!r}]: expected a Rule (e.g. Epsilon(), ZPlus()) or a rule name, "
                f"got {type(rule).__name__}"
            )
        out.append((keys, rule))
    return out


def leaf_kind(module: nn.Module) -> Optional[str]:
    """Kind of a leaf of the canonical copy (None: no rule, relevance passes as is)."""
    kind = type(module)
    if kind in PASS_THROUGH:
        return None
    if kind in ATTENTION_SCORES:
        return "attention-scores"
    if isinstance(module, AttentionMix):
        return "attention-mix"
    if kind in IDENTITY_ACTIVATIONS + CAPTUM_NONLINEAR:
        return "activation"
    if kind in _conv_types():
        return "conv"
    if kind is nn.Linear:
        return "dense"
    if kind is DetachedLayerNorm:
        return "norm"
    if kind is nn.MaxPool2d:
        return "maxpool"
    if kind in _linear_leaf_types():
        return "sum"
    return None


def _applies(rule: Rule, module: nn.Module, kind: Optional[str]) -> bool:
    """Whether ``rule`` can be applied to a leaf of this kind."""
    req = rule.requires
    if kind is None:
        return False
    if req == "elementwise":
        return kind == "activation"
    if req == "homogeneous":
        return kind in ("conv", "dense") or type(module) in _PARAM_FREE_LINEAR
    if req == "attention-scores":
        return kind == "attention-scores"
    return kind != "activation" or isinstance(rule, Constant)


def _check_rule(rule: Rule, module: nn.Module, kind: Optional[str], where: str) -> None:
    if _applies(rule, module, kind):
        return
    req = rule.requires
    if kind is None:
        raise TypeError(f"LRP: module '{where}' only moves values and takes no rule, got {rule!r}")
    if req == "elementwise":
        raise TypeError(f"LRP: rule {rule!r} is for elementwise activations; '{where}' is {type(module).__name__}")
    if req == "homogeneous":
        raise TypeError(
            f"LRP: rule {rule!r} evaluates the layer on modified inputs and weights; it applies to "
            f"convolutions, linear layers, sums and average poolings, not to '{where}' "
            f"({type(module).__name__})"
        )
    if req == "attention-scores":
        raise TypeError(f"LRP: rule {rule!r} is for attention probabilities; '{where}' is {type(module).__name__}")
    raise TypeError(
        f"LRP: rule {rule!r} is not for activations; '{where}' is {type(module).__name__} (use Pass)"
    )


_WILDCARDS = frozenset("*?[")


def resolve_composite(composite: str, model: nn.Module) -> str:
    """``"auto"`` -> ``"cp-lrp"`` for models with attention, ``"epsilon-plus-flat"`` otherwise."""
    if not isinstance(composite, str):
        raise TypeError(f"composite: expected a str, got {type(composite).__name__}")
    key = composite.strip().lower().replace("_", "-")
    if key == "auto":
        has_attention = any(
            type(m) in ATTENTION_SCORES or isinstance(m, AttentionMix) for m in model.modules()
        )
        return "cp-lrp" if has_attention else "epsilon-plus-flat"
    if key not in COMPOSITES:
        raise ValueError(
            f"composite: expected 'auto' or one of {', '.join(COMPOSITES)}, got {composite!r}"
        )
    return key


def assign_rules(
    model: nn.Module,
    composite: str,
    order: Sequence[str],
    settings: RuleSettings,
    name_map: Any = None,
    type_map: Any = None,
) -> Tuple[Dict[nn.Module, Rule], List[Tuple[str, str, str, Rule]]]:
    """Choose the rule of every leaf of a canonical copy.

    Parameters
    ----------
    model : nn.Module
        Canonical copy.
    composite : str
        A key of :data:`COMPOSITES` (already resolved from ``"auto"``).
    order : sequence of str
        Names of the copy's leaves in order of first execution (from
        :func:`._lrp_canonize.audit_graph`); defines the first layer.
    settings : RuleSettings
    name_map, type_map : dict or list of (key, rule) pairs, optional
        User rules merged over the composite (see the module docstring).

    Returns
    -------
    rules : dict module -> Rule
        The leaves that get hooks.
    plan : list of (copy name, original name, module type, rule)
        Every leaf with its rule, in execution order, for inspection.
    """
    spec = COMPOSITES[composite]
    names = _pairs(name_map, "name_map", "name")
    types = _pairs(type_map, "type_map", "type")
    origins = module_origins(model)
    leaves = dict(_leaf_modules(model))
    ranked = [n for n in order if n in leaves] + [n for n in leaves if n not in set(order)]
    first = next((n for n in ranked if leaf_kind(leaves[n]) in spec.first_kinds), None)
    cache: Dict[str, Rule] = {}

    def named(key: str, where: str) -> Rule:
        if key not in cache:  # rules hold parameters only: one instance per name
            cache[key] = settings.make(key, where)
        return cache[key]

    rules: Dict[nn.Module, Rule] = {}
    plan: List[Tuple[str, str, str, Rule]] = []
    for copy_name in ranked:
        module = leaves[copy_name]
        _, origin, origin_type = origins[module]
        where = origin or copy_name or "<model>"
        kind = leaf_kind(module)
        chosen: Optional[RuleLike] = None
        for keys, rule in names:
            hits = [k for k in keys if fnmatch.fnmatchcase(origin, k) or fnmatch.fnmatchcase(copy_name, k)]
            if not hits:
                continue
            if all(_WILDCARDS & set(k) for k in hits):
                # a pattern ("layer4.*") takes the layers its rule applies to: z+ on the
                # convolutions of a block, Pass on its activations
                probe = named(rule, where) if isinstance(rule, str) else rule
                if not _applies(probe, module, kind):
                    continue
            chosen = rule
            break
        if chosen is None:
            for keys, rule in types:
                if isinstance(module, keys) or issubclass(origin_type, keys):
                    chosen = rule
                    break
        if chosen is None:
            chosen = _default(spec, kind, copy_name == first)
            if chosen is None:
                continue
        rule = named(chosen, where) if isinstance(chosen, str) else chosen
        _check_rule(rule, module, kind, where)
        rules[module] = rule
        plan.append((copy_name, origin, type(module).__name__, rule))
    return rules, plan


def _default(spec: Composite, kind: Optional[str], is_first: bool) -> Optional[str]:
    if kind is None:
        return None
    if is_first:
        return spec.first
    if kind == "conv":
        return spec.conv
    if kind == "dense":
        return spec.dense
    if kind == "norm":
        return "epsilon"
    if kind == "activation":
        return "pass"
    if kind == "attention-scores":
        return "attnlrp-softmax" if spec.attention == "attnlrp" else "constant"
    if kind == "attention-mix":
        return "uniform"
    if kind == "maxpool":
        return "gradient"
    return "norm"
