"""LRP rules, in zennit's vocabulary, applied by :mod:`._lrp_engine`.

A rule turns the relevance ``R`` of a module's output into the relevance of the
module's inputs.  The engine calls :meth:`Rule.backward` with a :class:`LeafCall`
(the module, the inputs it was called with, and a way to re-evaluate it with
modified inputs and parameters) and the output relevance; the rule returns one
relevance tensor per relevance-receiving input.  The formulas follow zennit
(``zennit.rules``; Anders et al. 2021, arXiv:2106.13200) term by term, including
the treatment of negative inputs ("generalised" z+ / alpha-beta / gamma rules):

===============  ==========================================================
rule             relevance of the input ``x`` (``z = f(x)``, ``s = R / stab(.)``)
===============  ==========================================================
``Epsilon``      ``x * J^T s``, ``s = R / stab(z)`` (Bach et al. 2015);
                 ``epsilon=0`` is LRP-0
``ZPlus``        ``x+ * J+^T s + x- * J-^T s``, ``s = R / stab(z+ + z-)`` where
                 ``z+`` uses the positive weights (and positive bias) on ``x+``
                 and ``z-`` the negative weights on ``x-`` (Montavon et al. 2017)
``AlphaBeta``    ``alpha * (positive part) - beta * (negative part)``,
                 ``alpha - beta = 1`` (Bach et al. 2015)
``Gamma``        z+-like with the weights ``w + gamma * w+`` for outputs > 0 and
                 ``w + gamma * w-`` for outputs < 0 (Montavon et al. 2019;
                 Andeol et al. 2021)
``Flat``         relevance spread uniformly over the receptive field: weights
                 and inputs set to one, bias zero (Lapuschkin et al. 2019)
``WSquare``      spread in proportion to the squared weights (Montavon et al. 2017)
``ZBox``         input-domain rule for inputs bounded by ``low <= x <= high``
                 (Montavon et al. 2017)
``Pass``         relevance passes unchanged (elementwise activations)
``Gradient``     relevance flows as the gradient (max pooling: winner takes all)
``Uniform``      epsilon rule split equally between the factors of a product
                 (AttnLRP, Achtibat et al. 2024, Prop. 3.2/3.3)
``Constant``     the module's output is a constant: no relevance flows into it
                 (the attention weights of CP-LRP, Ali et al. 2022)
``AttnLRPSoftmax`` attention probabilities ``softmax(q k^T)``: the softmax rule
                 ``R_L = L * (R - p * sum(R))`` of AttnLRP (Prop. 3.1), then
                 :class:`Uniform` through ``q k^T``
===============  ==========================================================

``stab(z) = z + eps * sign(z)`` (``sign(0) = 1``).  With ``relative=True`` the
stabiliser is ``eps`` times the root mean square of ``z`` over each image
(zennit's ``Stabilizer(norm_scale=True)``), or over each token's features for
token sequences (N, T, D), so it scales with the layer's activations: a model
whose logits are of order 1e-3 loses no more relevance to the stabiliser than
one whose logits are of order 10.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "AlphaBeta",
    "AttnLRPSoftmax",
    "Constant",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "LeafCall",
    "Pass",
    "Rule",
    "Stabilizer",
    "Uniform",
    "WSquare",
    "ZBox",
    "ZPlus",
]

ParamFn = Callable[[str, Tensor], Tensor]


def _check_number(value: object, name: str, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name}: expected a finite number >= {low:g}, got {value!r}")
    return float(value)


class Stabilizer:
    """``z -> z + eps * sign(z)`` with ``sign(0) = 1``; ``eps`` absolute or relative.

    Parameters
    ----------
    epsilon : float >= 0
        The stabiliser.
    relative : bool, default True
        Multiply ``epsilon`` by the root mean square of ``z``: per image over all
        dimensions but the first (as zennit's ``Stabilizer(norm_scale=True)``) for
        images ``(N, C, H, W)``, vectors ``(N, D)`` and attention tensors, and per
        token over the features for token sequences ``(N, T, D)``, whose tokens
        can differ in scale by orders of magnitude (class and register tokens,
        LayerScale branches).  An all-zero ``z`` falls back to the absolute
        ``epsilon``.
    """

    def __init__(self, epsilon: float = 1e-6, relative: bool = True) -> None:
        self.epsilon = _check_number(epsilon, "epsilon")
        if not isinstance(relative, bool):
            raise TypeError(f"relative: expected a bool, got {relative!r}")
        self.relative = relative

    def __call__(self, z: Tensor) -> Tensor:
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        if not self.relative:
            return z + sign * self.epsilon
        dims = (2,) if z.dim() == 3 else tuple(range(1, z.dim()))
        rms = z.pow(2).mean(dim=dims, keepdim=True).sqrt() if dims else z.abs()
        scale = torch.where(rms > 0, rms, torch.ones_like(rms))
        return z + sign * (self.epsilon * scale)

    def __repr__(self) -> str:
        mode = "relative" if self.relative else "absolute"
        return f"{self.epsilon:g} ({mode})"


class LeafCall:
    """One call of a leaf module, as the engine recorded it in the forward pass.

    Attributes
    ----------
    module : nn.Module
    inputs : list of Tensor
        The call's tensor arguments that receive relevance (those that required
        gradients), detached, in order: positional arguments, then keyword ones.
    output : Tensor
        The module's output (detached).
    """

    def __init__(
        self,
        module: nn.Module,
        args: tuple,
        kwargs: Dict[str, Any],
        output: Tensor,
        evaluate: Callable[["LeafCall", Sequence[Tensor], Optional[ParamFn]], Tensor],
    ) -> None:
        self.module = module
        self._args = list(args)
        self._kwargs = dict(kwargs)
        #: where each relevance input sits: ("arg", position) or ("kw", name)
        self.slots: List[Tuple[str, Union[int, str]]] = []
        self.inputs: List[Tensor] = []
        for i, a in enumerate(self._args):
            if isinstance(a, Tensor):
                if a.requires_grad:
                    self.slots.append(("arg", i))
                    self.inputs.append(a.detach())
                self._args[i] = a.detach()
        for k, a in self._kwargs.items():
            if isinstance(a, Tensor):
                if a.requires_grad:
                    self.slots.append(("kw", k))
                    self.inputs.append(a.detach())
                self._kwargs[k] = a.detach()
        self.output = output.detach()
        self._evaluate = evaluate

    def arguments(self, inputs: Sequence[Tensor]) -> Tuple[tuple, Dict[str, Any]]:
        """The call's ``(args, kwargs)`` with the relevance inputs replaced by ``inputs``."""
        args, kwargs = list(self._args), dict(self._kwargs)
        for (where, key), t in zip(self.slots, inputs):
            if where == "arg":
                args[key] = t  # type: ignore[index]
            else:
                kwargs[key] = t  # type: ignore[index]
        return tuple(args), kwargs

    def evaluate(self, inputs: Sequence[Tensor], params: Optional[ParamFn] = None) -> Tensor:
        """Run the module on ``inputs`` with its parameters mapped by ``params(name, p)``.

        Runs with gradients enabled and without the engine's hooks.
        """
        return self._evaluate(self, inputs, params)


# --------------------------------------------------------------------------- helpers
def _grads(z: Tensor, xs: Sequence[Tensor], grad: Tensor) -> List[Tensor]:
    """``d<z, grad>/dx`` for each ``x`` (zeros where ``z`` does not depend on it)."""
    out = torch.autograd.grad(z, list(xs), grad_outputs=grad, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, out)]


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(True)


def _pos(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _neg(t: Tensor) -> Tensor:
    return t.clamp(max=0)


def _params(fn: Callable[[Tensor], Tensor], zero_bias: bool = False) -> ParamFn:
    """Parameter map applying ``fn`` to every parameter (zennit's ``ParamMod``)."""

    def apply(name: str, p: Tensor) -> Tensor:
        if zero_bias and name == "bias":
            return torch.zeros_like(p)
        return fn(p)

    return apply


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


# --------------------------------------------------------------------------- rules
class Rule:
    """Base class of the LRP rules (zennit's ``Hook`` / ``BasicHook``).

    Subclasses implement :meth:`backward`.  ``requires`` says which modules the
    rule accepts: ``"any"`` (any leaf but activations), ``"homogeneous"``
    (convolution, linear layer, or a parameter-free linear map such as a sum or
    average pooling: the rule evaluates the module on modified inputs),
    ``"elementwise"`` (activations) or ``"attention-scores"``.
    """

    name: ClassVar[str] = "rule"
    requires: ClassVar[str] = "any"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:
        """Relevance of each of ``call.inputs`` given the output relevance."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = []
        for k, v in vars(self).items():
            if k.startswith("_"):
                continue
            if isinstance(v, Stabilizer):
                args.append(f"{k}={v.epsilon:g}, relative={v.relative}")
            elif isinstance(v, Tensor):
                args.append(f"{k}=<tensor {tuple(v.shape)}>")
            else:
                args.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): ``R_x = x * J^T (R / stab(z))``.

    ``epsilon=0`` gives LRP-0.  Multi-input linear modules (additions) split the
    relevance in proportion to each input's contribution.

    Parameters
    ----------
    epsilon : float >= 0, default 1e-6
    relative : bool, default True
        Stabiliser relative to the RMS of ``z`` (see :class:`Stabilizer`).
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, relative: bool = True) -> None:
        self.epsilon = Stabilizer(epsilon, relative)

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        if len(call.inputs) > 1 and getattr(call.module, "lrp_bilinear", False):
            raise TypeError(
                f"LRP: rule Epsilon on {type(call.module).__name__}, a product of two inputs "
                "that both receive relevance, would count its output twice; use Uniform "
                "(AttnLRP) or make one factor constant (CP-LRP)"
            )
        xs = [_leaf(x) for x in call.inputs]
        z = call.evaluate(xs)
        cs = _grads(z, xs, relevance / self.epsilon(z.detach()))
        return [x.detach() * c for x, c in zip(xs, cs)]


class Uniform(Rule):
    """Epsilon rule shared equally by the factors of a product (AttnLRP).

    For ``z = a * b`` (or ``a @ b``) both ``a * dz/da`` and ``b * dz/db`` sum to
    ``z``, so each of the ``n`` relevance-receiving factors gets ``1/n`` of the
    epsilon-rule relevance (Achtibat et al. 2024, Prop. 3.2 and 3.3).  With one
    factor constant this is the epsilon rule.

    Parameters
    ----------
    epsilon : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "uniform"

    def __init__(self, epsilon: float = 1e-6, relative: bool = True) -> None:
        self.epsilon = Stabilizer(epsilon, relative)

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        xs = [_leaf(x) for x in call.inputs]
        z = call.evaluate(xs)
        cs = _grads(z, xs, relevance / self.epsilon(z.detach()))
        n = len(xs)
        return [x.detach() * c / n for x, c in zip(xs, cs)]


class _TermRule(Rule):
    """Rules made of several evaluations of the module (zennit's ``BasicHook``)."""

    requires = "homogeneous"

    def __init__(self, stabilizer: float = 1e-6, relative: bool = True) -> None:
        self.stabilizer = Stabilizer(stabilizer, relative)

    @staticmethod
    def _term(call: LeafCall, mod: Callable[[Tensor], Tensor], params: ParamFn) -> Tuple[List[Tensor], Tensor]:
        xs = [_leaf(mod(x)) for x in call.inputs]
        return xs, call.evaluate(xs, params)


class ZPlus(_TermRule):
    """z+ rule, zennit's generalised form (alpha=1, beta=0 with negative inputs).

    ``z = f+(x+) + f-(x-)`` where ``f+`` has the positive weights and positive bias,
    ``f-`` the negative weights and no bias; ``R_x = x+ * J+^T s + x- * J-^T s``
    with ``s = R / stab(z)`` (Bach et al. 2015; Montavon et al. 2017).

    Parameters
    ----------
    stabilizer : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "zplus"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        xp, zp = self._term(call, _pos, _params(_pos))
        xn, zn = self._term(call, _neg, _params(_neg, zero_bias=True))
        s = relevance / self.stabilizer((zp + zn).detach())
        cp, cn = _grads(zp, xp, s), _grads(zn, xn, s)
        return [a.detach() * g + b.detach() * h for a, g, b, h in zip(xp, cp, xn, cn)]


class AlphaBeta(_TermRule):
    """alpha-beta rule (Bach et al. 2015), zennit's form with negative inputs.

    ``R = alpha * R+ - beta * R-`` where ``R+`` redistributes by the positive
    contributions ``x+ w+, x- w-`` (and positive bias) and ``R-`` by the negative
    ones ``x+ w-, x- w+`` (and negative bias).

    Parameters
    ----------
    alpha, beta : float >= 0 with ``alpha - beta == 1``; default 2 and 1
    stabilizer : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "alpha-beta"

    def __init__(
        self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, relative: bool = True
    ) -> None:
        super().__init__(stabilizer, relative)
        self.alpha = _check_number(alpha, "alpha")
        self.beta = _check_number(beta, "beta")
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"alpha, beta: expected alpha - beta == 1, got alpha={alpha!r}, beta={beta!r}")

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        x0, z0 = self._term(call, _pos, _params(_pos))
        x1, z1 = self._term(call, _neg, _params(_neg, zero_bias=True))
        x2, z2 = self._term(call, _pos, _params(_neg))
        x3, z3 = self._term(call, _neg, _params(_pos, zero_bias=True))
        sp = relevance / self.stabilizer((z0 + z1).detach())
        sn = relevance / self.stabilizer((z2 + z3).detach())
        c0, c1, c2, c3 = _grads(z0, x0, sp), _grads(z1, x1, sp), _grads(z2, x2, sn), _grads(z3, x3, sn)
        out = []
        for i in range(len(x0)):
            pos = x0[i].detach() * c0[i] + x1[i].detach() * c1[i]
            neg = x2[i].detach() * c2[i] + x3[i].detach() * c3[i]
            out.append(self.alpha * pos - self.beta * neg)
        return out


class Gamma(_TermRule):
    """Generalised gamma rule (Montavon et al. 2019; Andeol et al. 2021; as zennit).

    Outputs ``z > 0`` are redistributed by ``x+ (w + gamma w+) + x- (w + gamma w-)``
    (bias ``b + gamma b+``), outputs ``z < 0`` by ``x+ (w + gamma w-) + x- (w + gamma w+)``
    (bias ``b + gamma b-``).  ``gamma=0`` is the epsilon rule with the stabiliser.

    Parameters
    ----------
    gamma : float >= 0, default 0.25
    stabilizer : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, relative: bool = True) -> None:
        super().__init__(stabilizer, relative)
        self.gamma = _check_number(gamma, "gamma")

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        g = self.gamma
        up = lambda p: p + g * p.clamp(min=0)  # noqa: E731
        down = lambda p: p + g * p.clamp(max=0)  # noqa: E731
        x0, z0 = self._term(call, _pos, _params(up))
        x1, z1 = self._term(call, _neg, _params(down, zero_bias=True))
        x2, z2 = self._term(call, _pos, _params(down))
        x3, z3 = self._term(call, _neg, _params(up, zero_bias=True))
        with torch.no_grad():
            z = call.evaluate([x.detach() for x in call.inputs])
        sp = (z > 0).to(relevance.dtype) * relevance / self.stabilizer((z0 + z1).detach())
        sn = (z < 0).to(relevance.dtype) * relevance / self.stabilizer((z2 + z3).detach())
        c0, c1, c2, c3 = _grads(z0, x0, sp), _grads(z1, x1, sp), _grads(z2, x2, sn), _grads(z3, x3, sn)
        return [
            x0[i].detach() * c0[i] + x1[i].detach() * c1[i] + x2[i].detach() * c2[i] + x3[i].detach() * c3[i]
            for i in range(len(x0))
        ]


class Flat(_TermRule):
    """Flat rule (Lapuschkin et al. 2019): relevance spread uniformly.

    Inputs and weights are replaced by ones and the bias by zero, so each output's
    relevance is shared equally by the inputs of its receptive field; the input
    values themselves play no role.  For the first layer.

    Parameters
    ----------
    stabilizer : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "flat"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        xs, z = self._term(call, torch.ones_like, _params(torch.ones_like, zero_bias=True))
        return _grads(z, xs, relevance / self.stabilizer(z.detach()))


class WSquare(_TermRule):
    """w^2 rule (Montavon et al. 2017): spread in proportion to the squared weights.

    Inputs are replaced by ones and every parameter (bias included, as in zennit)
    by its square.  For a first layer whose inputs are unbounded.

    Parameters
    ----------
    stabilizer : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "wsquare"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        xs, z = self._term(call, torch.ones_like, _params(lambda p: p * p))
        return _grads(z, xs, relevance / self.stabilizer(z.detach()))


class ZBox(_TermRule):
    """z^B rule for inputs in a box ``low <= x <= high`` (Montavon et al. 2017).

    ``z = f(x) - f+(low) - f-(high)`` (``f+``/``f-``: positive/negative weights and
    bias), ``R_x = x c0 - low c1 - high c2`` with ``c_i`` the gradients of the three
    terms weighted by ``R / stab(z)``.  For the first layer of an image model, with
    the bounds of the normalised pixel range (``(0 - mean) / std`` and
    ``(1 - mean) / std`` per channel).

    Parameters
    ----------
    low, high : float or Tensor
        Bounds, broadcastable to the input of the layer (e.g. shape (1, C, 1, 1)).
    stabilizer : float >= 0, default 1e-6
    relative : bool, default True
    """

    name = "zbox"

    def __init__(
        self,
        low: Union[float, Tensor],
        high: Union[float, Tensor],
        stabilizer: float = 1e-6,
        relative: bool = True,
    ) -> None:
        super().__init__(stabilizer, relative)
        self.low = torch.as_tensor(low, dtype=torch.float64)
        self.high = torch.as_tensor(high, dtype=torch.float64)
        if not bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise ValueError("low, high: expected finite bounds")
        try:
            below = bool((self.low > self.high).any())
        except RuntimeError as exc:
            raise ValueError(
                f"low, high: shapes {tuple(self.low.shape)} and {tuple(self.high.shape)} do not broadcast"
            ) from exc
        if below:
            raise ValueError("low, high: expected low <= high everywhere")

    def _bound(self, t: Tensor, like: Tensor) -> Tensor:
        try:
            return t.to(like).expand_as(like).clone()
        except RuntimeError as exc:
            raise ValueError(
                f"ZBox: bounds of shape {tuple(t.shape)} do not broadcast to the layer input of "
                f"shape {tuple(like.shape)}"
            ) from exc

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        if len(call.inputs) != 1:
            raise TypeError(f"LRP: rule ZBox needs a single-input layer, got {type(call.module).__name__}")
        (x,) = call.inputs
        x0, z0 = self._term(call, lambda t: t, _params(lambda p: p))
        x1, z1 = self._term(call, lambda t: self._bound(self.low, t), _params(_pos))
        x2, z2 = self._term(call, lambda t: self._bound(self.high, t), _params(_neg))
        z = z0 - z1 - z2
        s = relevance / self.stabilizer(z.detach())
        (c0,), (c1,), (c2,) = _grads(z0, x0, s), _grads(z1, x1, s), _grads(z2, x2, s)
        return [x0[0].detach() * c0 - x1[0].detach() * c1 - x2[0].detach() * c2]


class Pass(Rule):
    """Relevance passes unchanged (elementwise activations: ReLU, GELU, SiLU, ...).

    The identity rule of AttnLRP for elementwise non-linearities (Achtibat et al.
    2024, Prop. 3.4) and zennit's ``Pass``.
    """

    name = "pass"
    requires = "elementwise"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        if len(call.inputs) != 1 or call.inputs[0].shape != relevance.shape:
            raise TypeError(
                f"LRP: rule Pass needs an elementwise module (one input of the output's shape), "
                f"got {type(call.module).__name__}"
            )
        return [relevance]


class Gradient(Rule):
    """Relevance flows as the gradient: ``R_x = J^T R``.

    For max pooling this is the winner-takes-all redistribution (all relevance of
    a pooled value goes to the input that won), which is also what zennit does
    with modules that have no rule.
    """

    name = "gradient"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        xs = [_leaf(x) for x in call.inputs]
        return _grads(call.evaluate(xs), xs, relevance)


class Constant(Rule):
    """The module's output is a constant for the relevance pass (CP-LRP).

    Used on the attention probabilities: relevance flows only through the values
    (Ali et al. 2022, "XAI for Transformers: Better Explanations through
    Conservative Propagation").  The engine detaches the output.
    """

    name = "constant"

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        return [None for _ in call.inputs]


class AttnLRPSoftmax(Rule):
    """AttnLRP rule for attention probabilities ``p = softmax(scale * q k^T)``.

    With ``L`` the attention logits: ``R_L = L * (R_p - p * sum_k R_p)`` (softmax,
    Achtibat et al. 2024, Prop. 3.1), then the :class:`Uniform` rule through the
    bilinear ``q k^T`` (half to the queries, half to the keys, Prop. 3.3), then
    the query/key normalisation, if any, with its standard deviation held
    constant (Prop. 3.4).  For :class:`~._lrp_modules.AttentionScores` modules.

    Parameters
    ----------
    epsilon : float >= 0, default 1e-6
        Stabiliser of the bilinear and normalisation steps.
    relative : bool, default True
    """

    name = "attnlrp-softmax"
    requires = "attention-scores"

    def __init__(self, epsilon: float = 1e-6, relative: bool = True) -> None:
        self.epsilon = Stabilizer(epsilon, relative)

    def backward(self, call: LeafCall, relevance: Tensor) -> List[Optional[Tensor]]:  # noqa: D102
        module = call.module
        logits_of = getattr(module, "lrp_logits", None)
        if logits_of is None:
            raise TypeError(
                f"LRP: rule AttnLRPSoftmax needs an attention-scores module with lrp_logits(q, k), "
                f"got {type(module).__name__}"
            )
        (args, kwargs) = call.arguments(call.inputs)
        q, k = (_leaf(t) for t in args[:2])
        qn, kn = module.lrp_normalize(q, k)
        qd, kd = _leaf(qn), _leaf(kn)
        logits = logits_of(qd, kd)
        probs = logits.detach().softmax(dim=-1)
        r_logits = logits.detach() * (relevance - probs * relevance.sum(dim=-1, keepdim=True))
        cq, ck = _grads(logits, (qd, kd), r_logits / self.epsilon(logits.detach()))
        r_qn, r_kn = 0.5 * qd.detach() * cq, 0.5 * kd.detach() * ck
        out: List[Optional[Tensor]] = []
        for raw, normed, r in ((q, qn, r_qn), (k, kn, r_kn)):
            if normed is raw:
                out.append(r)
            else:
                (c,) = _grads(normed, (raw,), r / self.epsilon(normed.detach()))
                out.append(raw.detach() * c)
        by_slot = {("arg", 0): out[0], ("arg", 1): out[1]}
        return [by_slot.get(slot) for slot in call.slots]
