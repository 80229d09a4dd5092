"""Registers :func:`captum_nave.attribution.lrp.lrp_attribute` as the method ``"lrp"``."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Tuple

from torch import Tensor, nn

from .registry import register_method

__all__ = ["lrp"]


def lrp(model: nn.Module, inputs: Tensor, target: Tensor, **options: Any) -> Tuple[Tensor, Tensor, Tensor, Dict[str, Any]]:
    """LRP relevance of ``target`` (registered as ``"lrp"``).

    Options are those of :func:`captum_nave.attribution.lrp.lrp_attribute`
    (``epsilon``, ``rule``, ``gamma``); the model is canonicalised on a copy.

    Returns
    -------
    maps : Tensor of shape (N, 1, H, W)
        Relevance summed over channels.
    raw : Tensor of shape (N, C, H, W)
    delta : Tensor of shape (N,)
        ``sum(relevance) - logit`` (conservation error).
    options : dict
    """
    from .lrp import lrp_attribute

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: LRP needs an nn.Module, got {type(model).__name__}")
    if "return_convergence_delta" in options:
        raise TypeError("return_convergence_delta: not an option of attribute(); the delta is always returned")
    raw, delta = lrp_attribute(model, inputs, target, return_convergence_delta=True, **options)
    defaults = {
        k: v.default for k, v in inspect.signature(lrp_attribute).parameters.items()
        if v.default is not inspect.Parameter.empty and k != "return_convergence_delta"
    }
    used = {**defaults, **options}
    return raw.sum(dim=1, keepdim=True), raw, delta, used


register_method("lrp", lrp)
