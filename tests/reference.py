"""Plain float64 re-implementation of NAVE's Algorithm 1 and Lloyd's k-means (tests only).

Deliberately naive: materialises the upsampled (N, H*W, sum C) matrix with
``F.interpolate`` and clusters it with textbook Lloyd iterations.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_features(acts: Sequence[Tensor], grid: Tuple[int, int], eps: float = 1e-8) -> Tensor:
    """Algorithm 1 features, shape (N, H*W, D), float64."""
    blocks = []
    for a in acts:
        a = a.double()
        n, c = a.shape[:2]
        u = F.interpolate(a, size=grid, mode="bicubic", align_corners=False)
        u = u.permute(0, 2, 3, 1).reshape(n, -1, c)
        norm = u.norm(dim=-1, keepdim=True)
        u = torch.where(norm > eps, u / norm, torch.zeros_like(u)) / (1 + c)
        blocks.append(u)
    return torch.cat(blocks, dim=-1)


def reference_lloyd(X: Tensor, centers: Tensor, max_iter: int = 300) -> Tensor:
    """Textbook Lloyd from given centres until labels stop changing; returns labels (P,)."""
    C = centers.double().clone()
    labels = None

    def sqdist(C):
        return (X * X).sum(1, keepdim=True) - 2 * X @ C.t() + (C * C).sum(1)[None]

    for _ in range(max_iter):
        new = sqdist(C).argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for k in range(C.shape[0]):
            members = X[labels == k]
            if len(members):
                C[k] = members.mean(0)
    return sqdist(C).argmin(1)
