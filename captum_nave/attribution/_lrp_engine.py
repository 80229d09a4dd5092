"""Relevance propagation through a model with one LRP rule per leaf module.

Each leaf module that has a rule gets a forward hook that replaces its output
by the same values produced by a custom autograd function; the function's
backward is the rule (:mod:`._lrp_rules`).  The "gradient" that flows between
hooked modules is therefore the relevance itself (as in zennit): operations
between leaves that only move values (reshape, slice, concatenation; checked by
:func:`._lrp_canonize.audit_graph`) pass it unchanged, and the gradient that
reaches the input is the input relevance.  The model's own backward graph
inside a hooked module is never used.

Only the canonical working copy is hooked; the hooks are removed on return,
also on failure.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._lrp_rules import Constant, LeafCall, ParamFn, Rule

__all__ = ["propagate"]


class _RuleFunction(torch.autograd.Function):
    """Identity on the module's output whose backward applies the rule."""

    @staticmethod
    def forward(ctx: Any, call: LeafCall, rule: Rule, *inputs: Tensor) -> Tensor:  # noqa: D102
        ctx.call, ctx.rule = call, rule
        return call.output

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> Tuple[Optional[Tensor], ...]:  # noqa: D102
        call: LeafCall = ctx.call
        with torch.enable_grad():
            out = ctx.rule.backward(call, relevance)
        if len(out) != len(call.inputs):
            raise RuntimeError(
                f"LRP rule {ctx.rule!r} returned {len(out)} relevances for "
                f"{len(call.inputs)} inputs of {type(call.module).__name__}"
            )
        for r, x in zip(out, call.inputs):
            if r is not None and r.shape != x.shape:
                raise RuntimeError(
                    f"LRP rule {ctx.rule!r} returned relevance of shape {tuple(r.shape)} for an "
                    f"input of shape {tuple(x.shape)} of {type(call.module).__name__}"
                )
        ctx.call = None  # free the stored activations as soon as possible
        return (None, None, *[None if r is None else r.detach() for r in out])


class _Hooks:
    """Forward hooks of the engine; ``enabled`` is off while rules re-evaluate modules."""

    def __init__(self) -> None:
        self.enabled = True

    def evaluate(self, call: LeafCall, inputs: Sequence[Tensor], params: Optional[ParamFn]) -> Tensor:
        args, kwargs = call.arguments(inputs)
        module = call.module
        self.enabled = False
        try:
            with torch.enable_grad():
                if params is None:
                    return module(*args, **kwargs)
                named = {n: params(n, p.detach()) for n, p in module.named_parameters(recurse=False)}
                return torch.func.functional_call(module, named, args, kwargs)
        finally:
            self.enabled = True

    def make(self, rule: Rule):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple, kwargs: Dict[str, Any], output: Any) -> Any:
            if not self.enabled:
                return None
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"LRP: module {type(module).__name__} returned {type(output).__name__}; "
                    "a module with an LRP rule must return one Tensor"
                )
            if isinstance(rule, Constant):
                return output.detach()
            live: List[Tensor] = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
            live += [a for a in kwargs.values() if isinstance(a, Tensor) and a.requires_grad]
            if not live:
                return None
            call = LeafCall(module, args, kwargs, output, self.evaluate)
            return _RuleFunction.apply(call, rule, *live)

        return hook


def propagate(
    model: nn.Module, inputs: Tensor, target: Tensor, rules: Mapping[nn.Module, Rule]
) -> Tuple[Tensor, Tensor]:
    """Input relevance of the target logits of ``model`` under ``rules``.

    Parameters
    ----------
    model : nn.Module
        Canonical working copy (eval mode, parameters not requiring gradients).
    inputs : Tensor of shape (N, C, H, W)
    target : LongTensor of shape (N,)
    rules : mapping module -> Rule
        The leaves to hook; other modules pass relevance as their gradient does
        (only pure re-indexing modules may be left out).

    Returns
    -------
    relevance : Tensor of shape (N, C, H, W)
        Detached; the output relevance is the target logit of each image.
    logits : Tensor of shape (N, K)
        The model's output in the same pass (detached).
    """
    hooks = _Hooks()
    handles = [m.register_forward_hook(hooks.make(r), with_kwargs=True) for m, r in rules.items()]
    try:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            if not isinstance(out, Tensor) or out.dim() != 2:
                raise TypeError("LRP: the model must return logits of shape (N, K)")
            idx = target.to(out.device).view(-1, 1)
            start = torch.zeros_like(out).scatter(1, idx, out.detach().gather(1, idx))
            if not out.requires_grad:
                return torch.zeros_like(inputs), out.detach()
            (rel,) = torch.autograd.grad(out, x, grad_outputs=start, allow_unused=True)
        if rel is None:
            rel = torch.zeros_like(x)
        return rel.detach(), out.detach()
    finally:
        for h in handles:
            h.remove()
