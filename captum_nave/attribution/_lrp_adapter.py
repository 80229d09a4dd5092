"""Registers :func:`captum_nave.attribution.lrp.lrp_attribute` as the method ``"lrp"``."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Tuple

from torch import Tensor, nn

from .registry import register_method

__all__ = ["lrp"]


def lrp(
    model: nn.Module, inputs: Tensor, target: Tensor, **options: Any
) -> Tuple[Tensor, Tensor, Tensor, Dict[str, Any], Tensor]:
    """LRP relevance of ``target`` (registered as ``"lrp"``).

    Options are those of :func:`captum_nave.attribution.lrp.lrp_attribute`
    (``composite``, ``epsilon``, ``stabilizer``, ``stabilizer_mode``, ``gamma``,
    ``input_bounds``, ``name_map``, ``type_map``); the model is canonicalised on
    a copy.

    Returns
    -------
    maps : Tensor of shape (N, 1, H, W)
        Relevance summed over channels.
    raw : Tensor of shape (N, C, H, W)
    delta : Tensor of shape (N,)
        ``sum(relevance) - logit`` (conservation error).
    options : dict
        The options used; ``composite`` is the resolved name (``"auto"`` becomes
        ``"epsilon-plus-flat"`` or ``"cp-lrp"``).
    relative_delta : Tensor of shape (N,)
        ``delta / |logit|``.
    """
    from .lrp import _run, lrp_attribute

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: LRP needs an nn.Module, got {type(model).__name__}")
    defaults = {
        k: v.default for k, v in inspect.signature(lrp_attribute).parameters.items()
        if v.default is not inspect.Parameter.empty and k != "return_convergence_delta"
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(
            f"{unknown[0]}: not an option of LRP; expected some of {', '.join(defaults)}"
            + (" (the delta is always returned)" if unknown[0] == "return_convergence_delta" else "")
        )
    used = {**defaults, **options}
    raw, delta, logit, used["composite"] = _run(model, inputs, target, **used)
    return raw.sum(dim=1, keepdim=True), raw, delta, used, delta / logit.abs()


register_method("lrp", lrp)
