"""CLS attention: recomputed rows, maps, entropy and attention masses.

The CLS row of a block's attention, ``softmax(q_cls k^T * scale)`` per head, is
recomputed from the block's query / key projections (captured by
:mod:`captum_nave.registers.capture`), so it is available whether the model runs
the fused SDPA kernel or not, and only the needed row is ever formed.

For models without a CLS token the "query" is the mean of the attention rows of
all patch queries (:func:`mean_query_attention`): how much attention each token
receives on average. It is still a probability vector over the sequence.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_nave.adapters import ViTLayout

__all__ = [
    "split_heads",
    "query_attention",
    "mean_query_attention",
    "attention_map",
    "attention_entropy",
    "attention_masses",
]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """Reshape projections ``(B, T, H * d)`` to ``(B, H, T, d)``."""
    if x.dim() != 3 or x.shape[-1] % num_heads:
        raise ValueError(
            f"num_heads: a projection of shape {tuple(x.shape)} cannot be split into "
            f"{num_heads} heads"
        )
    b, t, a = x.shape
    return x.reshape(b, t, num_heads, a // num_heads).permute(0, 2, 1, 3)


def query_attention(q: Tensor, k: Tensor, scale: float, query_index: int) -> Tensor:
    """Attention row of one query token, per head.

    Parameters
    ----------
    q, k : Tensor of shape (B, H, T, d)
        Queries and keys after any per-head normalisation.
    scale : float
        Softmax temperature (``d ** -0.5`` for standard attention).
    query_index : int
        Position of the query token (the CLS token).

    Returns
    -------
    Tensor of shape (B, H, T)
        ``softmax(q[:, :, query_index] @ k^T * scale)``; each row sums to 1.
    """
    qi = q[:, :, query_index, :]  # (B, H, d)
    logits = torch.einsum("bhd,bhtd->bht", qi * scale, k)
    return logits.softmax(dim=-1)


def mean_query_attention(
    q: Tensor, k: Tensor, scale: float, query_indices: Sequence[int], chunk: int = 256
) -> Tensor:
    """Mean attention row over a set of queries (for models without CLS).

    Parameters
    ----------
    q, k : Tensor of shape (B, H, T, d)
    scale : float
    query_indices : sequence of int
        Query positions to average (usually all patch tokens).
    chunk : int
        Queries processed at once (memory ``B * H * chunk * T``).

    Returns
    -------
    Tensor of shape (B, H, T)
        Each row sums to 1.
    """
    idx = torch.as_tensor(list(query_indices), dtype=torch.long, device=q.device)
    if idx.numel() == 0:
        raise ValueError("query_indices: expected at least one query position, got none")
    total = q.new_zeros(q.shape[0], q.shape[1], k.shape[2])
    for start in range(0, idx.numel(), chunk):
        sel = idx[start : start + chunk]
        logits = torch.einsum("bhqd,bhtd->bhqt", q[:, :, sel, :] * scale, k)
        total += logits.softmax(dim=-1).sum(dim=2)
    return total / idx.numel()


def _heads_avg(attn: Tensor) -> Tensor:
    return attn.mean(dim=-2) if attn.dim() == 3 else attn


def attention_map(
    attn: Tensor, layout: ViTLayout, grid: Tuple[int, int], head: Optional[int] = None
) -> Tensor:
    """Patch part of an attention row as a map on the patch grid.

    Parameters
    ----------
    attn : Tensor of shape (N, H, T) or (N, T)
        Attention rows (per head or already averaged).
    layout : ViTLayout
    grid : (h, w)
    head : int, optional
        Head to show; ``None`` averages the heads.

    Returns
    -------
    Tensor of shape (N, h, w)
        Raw attention weights (not renormalised) on the patches.
    """
    if attn.dim() == 3:
        a = attn.mean(dim=1) if head is None else attn[:, head]
    elif attn.dim() == 2:
        a = attn
    else:
        raise ValueError(f"attn: expected shape (N, H, T) or (N, T), got {tuple(attn.shape)}")
    p = a[:, layout.num_prefix_tokens :]
    h, w = grid
    if p.shape[1] != h * w:
        raise ValueError(
            f"grid: {p.shape[1]} patch tokens do not fill a {h}x{w} grid"
        )
    return p.reshape(a.shape[0], h, w)


def attention_entropy(attn: Tensor, layout: ViTLayout, normalized: bool = True) -> Tensor:
    """Entropy of the attention distribution over the patches.

    The patch part of each row is renormalised to sum to 1, then
    ``-sum p log p`` (nats) is taken; with ``normalized=True`` it is divided by
    ``log(P)`` (``P`` patches), so 1 means uniform and 0 a single patch, comparable
    across grids of different sizes.

    Parameters
    ----------
    attn : Tensor of shape (..., T)
        Attention rows (per head ``(N, H, T)`` or averaged ``(N, T)``).
    layout : ViTLayout
    normalized : bool, default True

    Returns
    -------
    Tensor of shape (...)
    """
    p = attn[..., layout.num_prefix_tokens :].to(torch.float64)
    n_patch = p.shape[-1]
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1)
    if normalized:
        ent = ent / math.log(n_patch) if n_patch > 1 else torch.zeros_like(ent)
    return ent


def attention_masses(
    attn: Tensor, layout: ViTLayout, outlier_mask: Optional[Tensor] = None
) -> Dict[str, Tensor]:
    """Attention mass of a query row on each kind of token.

    Parameters
    ----------
    attn : Tensor of shape (N, H, T) or (N, T)
        Attention rows; per-head rows are averaged over heads first.
    layout : ViTLayout
    outlier_mask : BoolTensor of shape (N, P), optional
        High-norm patch tokens (see :func:`captum_nave.registers.norms.detect_outliers`).

    Returns
    -------
    dict of str -> Tensor of shape (N,)
        ``"cls"`` (on the CLS token itself; 0 without CLS), ``"registers"``, ``"other"``
        (other prefix tokens), ``"patches"``, ``"outlier_patches"`` (a part of
        ``"patches"``; NaN without ``outlier_mask``). ``cls + registers + other +
        patches`` equals the row sum (1).
    """
    a = _heads_avg(attn) if attn.dim() == 3 else attn
    if a.dim() != 2:
        raise ValueError(f"attn: expected shape (N, H, T) or (N, T), got {tuple(attn.shape)}")
    n = a.shape[0]
    zero = a.new_zeros(n)
    npfx = layout.num_prefix_tokens
    out = {
        "cls": a[:, layout.cls_index] if layout.cls_index is not None else zero,
        "registers": a[:, list(layout.register_indices)].sum(dim=1) if layout.num_registers else zero,
        "other": a[:, list(layout.other_prefix_indices)].sum(dim=1)
        if layout.other_prefix_indices
        else zero,
        "patches": a[:, npfx:].sum(dim=1),
    }
    if outlier_mask is None:
        out["outlier_patches"] = torch.full_like(zero, float("nan"))
    else:
        if outlier_mask.shape != a[:, npfx:].shape:
            raise ValueError(
                f"outlier_mask: expected shape {tuple(a[:, npfx:].shape)} (N, patches), got "
                f"{tuple(outlier_mask.shape)}"
            )
        out["outlier_patches"] = (a[:, npfx:] * outlier_mask.to(a.dtype)).sum(dim=1)
    return out
