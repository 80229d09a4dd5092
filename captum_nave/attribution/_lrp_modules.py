"""Explicit modules for the LRP working copy of a model.

Captum's :class:`~captum.attr.LRP` sees a model only through its leaf modules:
each leaf gets a propagation rule, and whatever happens *between* leaves in
``forward`` code (additions, multiplications, means) is invisible to it.  The
canonical copy made by :mod:`captum_nave.attribution._lrp_canonize` therefore
expresses every operation that mixes values as one of the small modules below,
each linear (homogeneous when its bias-like part is zero) in the tensors that
receive relevance, so that Captum's epsilon rule (gradient x input divided by
the stabilised output) is the exact epsilon-LRP rule for it.

Nothing here is used on the user's model; only on the deep copy.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from captum.attr._utils.custom_modules import Addition_Module
from captum.attr._utils.lrp_rules import PropagationRule

__all__ = [
    "Add",
    "AddConstant",
    "AttentionMix",
    "AttentionScores",
    "DetachedLayerNorm",
    "PassThroughRule",
    "TokenMean",
    "TokenSelect",
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
        constant, which depends on the input size); Captum's hooks see only ``x``.

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
        dims = tuple(range(-len(self.normalized_shape), 0))
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        var = centred.detach().pow(2).mean(dim=dims, keepdim=True)
        y = centred / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.normalized_shape}, eps={self.eps}"


class AttentionMix(nn.Module):
    """Apply fixed attention weights to the values: ``out = attn @ v``.

    The attention probabilities are passed as the keyword argument ``attn`` and
    must already be detached; Captum's hooks see only the positional input ``v``,
    so all relevance of the output flows to the values in proportion to
    ``attn[q, k] * v[k]`` (CP-LRP, Ali et al. 2022).
    """

    def forward(self, v: Tensor, *, attn: Tensor) -> Tensor:  # noqa: D102
        return attn @ v


class AttentionScores(nn.Module):
    """Softmax attention probabilities, computed without gradient (CP-LRP).

    ``softmax(norm_q(q) * scale @ norm_k(k)^T)`` on detached ``q`` and ``k``: the
    result is a constant for the relevance pass, so no relevance flows into the
    query/key path.  The optional query/key LayerNorms (timm ``qk_norm=True``)
    are applied functionally here, so that they are not leaf modules with hooks.

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
        return F.layer_norm(t, shape, getattr(self, f"{key}_weight"), getattr(self, f"{key}_bias"), eps)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:  # noqa: D102
        with torch.no_grad():
            q = self._norm("q", q.detach()) * self.scale
            k = self._norm("k", k.detach())
            return (q @ k.transpose(-2, -1)).softmax(dim=-1)


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


class TokenSelect(nn.Module):
    """One token ``x[:, index]``, as a leaf with a rule.

    Used where a tensor feeds several poolings (DINOv2 classifiers read the CLS token and
    the patch mean of the same tokens): Captum multiplies the *total* gradient arriving at
    a tensor by that tensor in the input hook of the first rule-carrying consumer, so
    every consumer must carry a rule; with the epsilon rule the selected token receives
    ``x R / (x + eps)``, i.e. ``R``.

    Parameters
    ----------
    index : int
        Position of the token.
    """

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = int(index)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x[:, self.index]

    def extra_repr(self) -> str:  # noqa: D102
        return f"index={self.index}"


class PassThroughRule(PropagationRule):
    """Rule for modules whose backward only moves values around.

    Used for ``nn.Identity``, ``nn.Flatten`` and similar leaves whose gradient is
    a pure re-indexing: no hooks are registered, so the relevance (which is what
    flows as "gradient" between Captum's hooked layers) passes unchanged.
    """

    def forward_hook(self, module, inputs, outputs):  # type: ignore[no-untyped-def]
        """Register nothing; keep the output as it is."""
        return None

    def forward_hook_weights(self, module, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        """No weights to change and no activations to store."""
        return None

    def forward_pre_hook_activations(self, module, inputs):  # type: ignore[no-untyped-def]
        """Leave inputs as they are."""
        return None

    def _manipulate_weights(self, module, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        return None
