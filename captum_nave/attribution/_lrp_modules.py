"""Explicit modules for the LRP working copy of a model.

LRP rules are attached to *leaf* modules; whatever happens between leaves in
``forward`` code (additions, multiplications, means) would be invisible to
them.  The canonical copy made by :mod:`captum_nave.attribution._lrp_canonize`
therefore expresses every operation that mixes values as one of the small
modules below, each linear (homogeneous when its bias-like part is zero) in the
tensors that receive relevance, so that a rule of :mod:`._lrp_rules` (epsilon:
gradient x input divided by the stabilised output) is the exact LRP rule for it.

Nothing here is used on the user's model; only on the deep copy.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from captum.attr._utils.custom_modules import Addition_Module

__all__ = [
    "Add",
    "AddConstant",
    "AttentionMix",
    "AttentionScores",
    "DetachedLayerNorm",
    "layer_norm_detached",
    "TokenMean",
]


class Add(Addition_Module):
    """Two-input addition ``a + b`` (Captum's ``Addition_Module``).

    With the epsilon rule the relevance ``R`` of the sum is split in proportion
    to the contributions: ``R_a = a R / (a + b + eps)``, ``R_b = b R / (a + b + eps)``.
    Used for residual connections (ResNet, inverted residuals, transformer blocks).
    """


class AddConstant(nn.Module):
    """Add a fixed tensor (a bias-like term such as a positional embedding).

    Parameters
    ----------
    constant : Tensor, optional
        Broadcastable to the input, e.g. of shape (1, T, D). ``None``: the constant is
        passed to each call as the keyword argument ``constant`` (e.g. a ViT's embedding
        constant, which depends on the input size); it is detached, so only ``x``
        receives relevance.

    Notes
    -----
    With the epsilon rule the input receives ``x R / (x + c + eps)``; the rest
    of the relevance is absorbed by the constant, exactly like a bias.
    """

    def __init__(self, constant: Optional[Tensor] = None) -> None:
        super().__init__()
        self.constant = None if constant is None else nn.Parameter(constant.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor, *, constant: Optional[Tensor] = None) -> Tensor:  # noqa: D102
        c = self.constant if constant is None else constant.detach()
        if c is None:
            raise ValueError("AddConstant: no constant given")
        return x + c


def layer_norm_detached(
    x: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
) -> Tensor:
    """``F.layer_norm`` with the standard deviation held constant for the backward pass.

    Same value as :func:`torch.nn.functional.layer_norm`; the map ``x -> y`` is
    affine for autograd (centring and affine part), the division by the standard
    deviation passes relevance unchanged (identity rule, Ali et al. 2022;
    Achtibat et al. 2024, Prop. 3.4).
    """
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    var = centred.detach().pow(2).mean(dim=dims, keepdim=True)
    y = centred / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class DetachedLayerNorm(nn.Module):
    """LayerNorm whose normalisation factor is treated as a constant.

    ``y = (x - mean(x)) / std(x).detach() * weight + bias``.  The forward value is
    that of :class:`torch.nn.LayerNorm`; the map ``x -> y`` is linear for the
    backward pass, so the epsilon rule redistributes relevance through the
    centring and the affine part while the division by the standard deviation
    passes relevance unchanged (identity rule on the scaling; Ali et al. 2022,
    Achtibat et al. 2024).

    Parameters
    ----------
    normalized_shape : tuple of int
        Trailing shape normalised over (as in ``nn.LayerNorm``).
    eps : float
        Variance stabiliser of the original layer.
    weight, bias : Tensor or None
        Affine parameters of the original layer.
    """

    def __init__(
        self,
        normalized_shape: tuple[int, ...],
        eps: float,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
    ) -> None:
        super().__init__()
        self.normalized_shape = tuple(normalized_shape)
        self.eps = float(eps)
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_layer_norm(cls, ln: nn.LayerNorm) -> "DetachedLayerNorm":
        """Build from an ``nn.LayerNorm`` (or a subclass such as timm's)."""
        return cls(ln.normalized_shape, ln.eps, ln.weight, ln.bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return layer_norm_detached(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.normalized_shape}, eps={self.eps}"


class AttentionMix(nn.Module):
    """Apply attention weights to the values: ``out = attn @ v``.

    The attention probabilities are passed as the keyword argument ``attn``.
    With CP-LRP (Ali et al. 2022) they are a constant (the rule ``Constant`` on
    the :class:`AttentionScores` that produced them) and all relevance of the
    output flows to the values in proportion to ``attn[q, k] * v[k]``; with
    AttnLRP (Achtibat et al. 2024) the ``Uniform`` rule gives half of it to the
    attention weights.
    """

    #: a product of two inputs: each of ``v * d/dv`` and ``attn * d/dattn`` sums to the output
    lrp_bilinear = True

    def forward(self, v: Tensor, *, attn: Tensor) -> Tensor:  # noqa: D102
        return attn @ v


class AttentionScores(nn.Module):
    """Softmax attention probabilities ``softmax(norm_q(q) * scale @ norm_k(k)^T)``.

    The optional query/key LayerNorms (timm ``qk_norm=True``) are applied
    functionally, with the standard deviation held constant in the backward pass
    (:func:`layer_norm_detached`), so that they are not leaf modules of their own.
    The rule decides how relevance treats the probabilities: ``Constant`` (CP-LRP,
    no relevance to queries and keys) or ``AttnLRPSoftmax`` (AttnLRP), which uses
    :meth:`lrp_normalize` and :meth:`lrp_logits`.

    Parameters
    ----------
    scale : float
        Multiplier of the queries (``head_dim ** -0.5`` in timm).
    q_norm, k_norm : nn.LayerNorm or None
        Normalisation of queries / keys over the head dimension.
    """

    def __init__(
        self, scale: float, q_norm: Optional[nn.LayerNorm], k_norm: Optional[nn.LayerNorm]
    ) -> None:
        super().__init__()
        self.scale = float(scale)
        self._norms: dict[str, Optional[tuple]] = {}
        for key, norm in (("q", q_norm), ("k", k_norm)):
            if norm is None:
                self._norms[key] = None
                continue
            for part in ("weight", "bias"):
                t = getattr(norm, part)
                self.register_buffer(f"{key}_{part}", None if t is None else t.detach().clone())
            self._norms[key] = (tuple(norm.normalized_shape), float(norm.eps))

    def _norm(self, key: str, t: Tensor) -> Tensor:
        spec = self._norms[key]
        if spec is None:
            return t
        shape, eps = spec
        return layer_norm_detached(t, shape, getattr(self, f"{key}_weight"), getattr(self, f"{key}_bias"), eps)

    def lrp_normalize(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised queries and keys (the inputs themselves where there is no norm)."""
        return self._norm("q", q), self._norm("k", k)

    def lrp_logits(self, q: Tensor, k: Tensor) -> Tensor:
        """Attention logits ``scale * q @ k^T`` of normalised queries and keys."""
        return (q * self.scale) @ k.transpose(-2, -1)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:  # noqa: D102
        return self.lrp_logits(*self.lrp_normalize(q, k)).softmax(dim=-1)


class TokenMean(nn.Module):
    """Mean over tokens ``x[:, start:].mean(1)`` for ViT average pooling.

    Parameters
    ----------
    start : int
        First token included (the number of prefix tokens to skip).
    """

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = int(start)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x[:, self.start :].mean(dim=1)

    def extra_repr(self) -> str:  # noqa: D102
        return f"start={self.start}"
