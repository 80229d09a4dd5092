"""Small standard modules the adapters use to describe model parts by type."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["QuickGELU"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation of OpenAI CLIP (``quick_gelu``).

    An elementwise activation; LRP passes relevance through it unchanged (identity rule),
    like the other GELUs.
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * torch.sigmoid(1.702 * x)
