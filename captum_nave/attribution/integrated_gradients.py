"""Integrated Gradients with a choice of baselines, through Captum.

Integrated Gradients (Sundararajan et al., ICML 2017) integrates the gradient of the
target score along the straight path from a baseline ``b`` to the input ``x``:
``IG_i = (x_i - b_i) * int_0^1 dF/dx_i(b + a (x - b)) da``. Completeness says
``sum_i IG_i = F(x) - F(b)``; the numerical integration error is Captum's convergence
delta ``sum_i IG_i - (F(x) - F(b))``, returned per image.

Baselines (``baselines=``):

* ``"zeros"`` (default): all-zero input, i.e. the dataset mean for normalised images;
* ``"blur"``: the input blurred with a Gaussian of standard deviation ``blur_sigma``
  pixels (default ``max(H, W) / 10``), which removes fine detail but keeps colours
  (Sturmfels, Lundberg & Lee, "Visualizing the Impact of Feature Attribution
  Baselines", Distill 2020);
* ``"uniform"``: uniform noise between each image's per-channel minimum and maximum,
  seeded by ``random_state``;
* a number or a Tensor broadcastable to the inputs (N, C, H, W).

Channels are summed into one map (N, 1, H, W); the per-channel attributions are kept
as ``raw``.

Integration rules are Captum's, with one correction: Captum 0.9's
``"riemann_trapezoid"`` evaluates ``n`` points spaced ``1 / (n - 1)`` apart but weighs
them with ``1 / n`` (halved at the ends), so its weights sum to ``(n - 1) / n`` and even
a linear model misses completeness by that factor. The attributions are rescaled by
the inverse of the weights' sum (a no-op for the other rules and for a fixed Captum),
which gives the exact trapezoidal rule; the delta is recomputed accordingly.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from torch import Tensor

from captum_nave.adapters import logits_function

from .._validation import check_bool, check_int, check_real, check_seed
from .registry import register_method

__all__ = ["integrated_gradients", "make_baseline", "gaussian_blur"]

_METHODS = ("gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid")
BaselineLike = Union[str, float, int, Tensor]


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflected borders.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
    sigma : float
        Standard deviation in pixels (> 0). The kernel radius is ``ceil(3 sigma)``,
        capped at ``size - 1`` per axis (reflect padding needs fewer pixels than the
        image has).

    Returns
    -------
    Tensor of shape (N, C, H, W), same dtype
    """
    sigma = check_real(sigma, "blur_sigma", low=0.0, low_open=True)
    n, c, h, w = images.shape
    out = images
    for axis, size in ((2, h), (3, w)):
        radius = min(int(math.ceil(3 * float(sigma))), size - 1)
        if radius <= 0:
            continue
        grid = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
        kernel = torch.exp(-0.5 * (grid / float(sigma)) ** 2)
        kernel = kernel / kernel.sum()
        if axis == 2:
            weight = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
            padded = F.pad(out, (0, 0, radius, radius), mode="reflect")
        else:
            weight = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
            padded = F.pad(out, (radius, radius, 0, 0), mode="reflect")
        out = F.conv2d(padded, weight, groups=c)
    return out


def make_baseline(
    inputs: Tensor,
    baselines: BaselineLike = "zeros",
    *,
    blur_sigma: Optional[float] = None,
    random_state: Optional[int] = None,
) -> Tensor:
    """The baseline tensor (N, C, H, W) for ``inputs``; see the module docstring.

    Parameters
    ----------
    inputs : Tensor of shape (N, C, H, W)
    baselines : "zeros", "blur", "uniform", number or Tensor
    blur_sigma : float, optional
        Standard deviation of the blur in pixels (default ``max(H, W) / 10``).
    random_state : int, optional
        Seed of the uniform noise.

    Returns
    -------
    Tensor of shape (N, C, H, W), dtype and device of ``inputs``
    """
    x = inputs.detach()
    if isinstance(baselines, str):
        kind = baselines.strip().lower()
        if kind == "zeros":
            return torch.zeros_like(x)
        if kind == "blur":
            sigma = blur_sigma if blur_sigma is not None else max(x.shape[-2:]) / 10.0
            return gaussian_blur(x, sigma)
        if kind == "uniform":
            random_state = check_seed(random_state, allow_generator=False)
            g = torch.Generator(device="cpu")
            g.manual_seed(int(random_state) if random_state is not None else torch.seed())
            lo = x.amin(dim=(2, 3), keepdim=True)
            hi = x.amax(dim=(2, 3), keepdim=True)
            u = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)
            return lo + (hi - lo) * u
        raise ValueError(
            f"baselines: expected 'zeros', 'blur', 'uniform', a number or a Tensor, got {baselines!r}"
        )
    if isinstance(baselines, bool):
        raise TypeError("baselines: expected 'zeros', 'blur', 'uniform', a number or a Tensor, got bool")
    if isinstance(baselines, Real):
        if not math.isfinite(float(baselines)):
            raise ValueError(f"baselines: expected finite values, got {baselines!r}")
        return torch.full_like(x, float(baselines))
    if isinstance(baselines, Tensor):
        try:
            b = torch.broadcast_to(baselines.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(
                f"baselines: expected a tensor broadcastable to the inputs' shape {tuple(x.shape)}, "
                f"got shape {tuple(baselines.shape)}"
            ) from None
        if not bool(torch.isfinite(b).all()):
            raise ValueError("baselines: expected finite values, got a tensor with NaN or infinite values")
        return b.clone()
    raise TypeError(
        f"baselines: expected 'zeros', 'blur', 'uniform', a number or a Tensor, got {type(baselines).__name__}"
    )


def integrated_gradients(
    model: Any,
    inputs: Tensor,
    target: Tensor,
    *,
    baselines: BaselineLike = "zeros",
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: Optional[int] = None,
    multiply_by_inputs: bool = True,
    blur_sigma: Optional[float] = None,
    random_state: Optional[int] = 0,
    additional_forward_args: Any = None,
) -> Tuple[Tensor, Tensor, Tensor, Dict[str, Any], Tensor]:
    """Integrated Gradients of ``target`` (registered as ``"ig"``).

    Call it through ``captum_nave.attribution.attribute("ig", model, inputs, target,
    **options)``.

    Parameters
    ----------
    model : nn.Module or callable returning (N, K) scores
    inputs : Tensor of shape (N, C, H, W)
    target : LongTensor of shape (N,)
    baselines : "zeros", "blur", "uniform", number or Tensor, default "zeros"
        See :func:`make_baseline`.
    n_steps : int, default 50
        Integration points per image.
    method : str, default "gausslegendre"
        Captum's integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
    internal_batch_size : int, optional
        Images x steps evaluated per forward pass (bounds memory); default all at once.
    multiply_by_inputs : bool, default True
        Global attribution ``(x - b) * mean gradient`` (True) or the local one.
    blur_sigma : float, optional
        For ``baselines="blur"``.
    random_state : int or None, default 0
        For ``baselines="uniform"``.
    additional_forward_args : any, optional

    Returns
    -------
    maps : Tensor of shape (N, 1, H, W)
        Attributions summed over channels.
    raw : Tensor of shape (N, C, H, W)
    delta : Tensor of shape (N,)
        ``sum(raw[i]) - (F(x_i) - F(b_i))`` (meaningful with ``multiply_by_inputs``).
    options : dict
    relative_delta : Tensor of shape (N,)
        ``delta / |F(x_i) - F(b_i)|``.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {', '.join(_METHODS)}, got {method!r}")
    internal_batch_size = check_int(
        internal_batch_size, "internal_batch_size", low=1, allow_none=True, expected="None or an int >= 1"
    )
    check_bool(multiply_by_inputs, "multiply_by_inputs")
    base = make_baseline(inputs, baselines, blur_sigma=blur_sigma, random_state=random_state)
    ig = IntegratedGradients(logits_function(model), multiply_by_inputs=multiply_by_inputs)
    raw, delta = ig.attribute(
        inputs.detach(),
        baselines=base,
        target=target,
        additional_forward_args=additional_forward_args,
        n_steps=int(n_steps),
        method=method,
        internal_batch_size=None if internal_batch_size is None else int(internal_batch_size),
        return_convergence_delta=True,
    )
    raw = raw.detach()
    delta = delta.detach().to(raw.dtype).reshape(-1)
    weight_sum = _weight_sum(method, int(n_steps))
    if abs(weight_sum - 1.0) > 1e-12:
        # sum(raw) - delta = F(x) - F(b) does not depend on the weights
        gap = raw.sum(dim=(1, 2, 3)) - delta
        raw = raw / weight_sum
        delta = raw.sum(dim=(1, 2, 3)) - gap
    maps = raw.sum(dim=1, keepdim=True)
    options: Dict[str, Any] = {
        "baselines": baselines if isinstance(baselines, (str, int, float)) else "tensor",
        "n_steps": int(n_steps),
        "method": method,
        "internal_batch_size": internal_batch_size,
        "multiply_by_inputs": multiply_by_inputs,
    }
    if isinstance(baselines, str) and baselines.strip().lower() == "blur":
        options["blur_sigma"] = blur_sigma if blur_sigma is not None else max(inputs.shape[-2:]) / 10.0
    if isinstance(baselines, str) and baselines.strip().lower() == "uniform":
        options["random_state"] = random_state
    gap = raw.sum(dim=(1, 2, 3)) - delta  # F(x) - F(b)
    return maps, raw, delta, options, delta / gap.abs()


def _weight_sum(method: str, n_steps: int) -> float:
    """Sum of Captum's quadrature weights for ``method`` with ``n_steps`` points (1 if exact)."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, _ = approximation_parameters(method)
    return float(sum(step_sizes(n_steps)))


register_method("ig", integrated_gradients)
