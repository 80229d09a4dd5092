"""Decomposition of the CLS token update (Lappe & Giese, arXiv 2505.05892).

In a pre-norm block the CLS token after the attention sublayer is

    residual = skip + ls(W_o concat_h(sum_j a_hj v_hj) + b_o)

where ``skip`` is the CLS token entering the block, ``a_h`` the CLS attention
row of head ``h``, ``v`` the values, ``W_o, b_o`` the output projection and
``ls`` the (linear, diagonal) layer scale. Splitting the sum over ``j`` into
patches, registers, the CLS token itself and other prefix tokens gives
contributions that add up exactly to the attention output:

    attn_out = patches + registers + cls + other + bias,   residual = skip + attn_out.

Per image the parts are compared with the full output by cosine; over a set of
images by linear CKA (Kornblith et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from captum_nave.adapters import ViTLayout

__all__ = ["ClsDecomposition", "decompose_cls", "linear_cka", "cosine"]

PARTS = ("skip", "patches", "registers", "cls", "other", "bias")


def cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise cosine similarity of two ``(N, D)`` tensors (0 where a row is zero)."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    num = (a64 * b64).sum(dim=-1)
    den = a64.norm(dim=-1) * b64.norm(dim=-1)
    return torch.where(den > eps, num / den.clamp_min(eps), torch.zeros_like(num))


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same examples.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred
    ``Xc, Yc``, computed in float64. It is 1 for ``y = x @ Q`` with ``Q``
    orthogonal (or any isotropic scaling) and near 0 for independent data.

    Parameters
    ----------
    x : Tensor of shape (n, p)
    y : Tensor of shape (n, q)

    Returns
    -------
    float
        In [0, 1]; NaN if either representation is constant over the examples.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x, y: expected 2-D tensors with the same number of rows, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"x: linear CKA needs at least 2 examples, got {x.shape[0]}")
    xc = x.to(torch.float64) - x.to(torch.float64).mean(dim=0, keepdim=True)
    yc = y.to(torch.float64) - y.to(torch.float64).mean(dim=0, keepdim=True)
    n = xc.shape[0]
    if n < max(xc.shape[1], yc.shape[1]):
        kx, ky = xc @ xc.T, yc @ yc.T
        hsic, nx, ny = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        hsic = (yc.T @ xc).pow(2).sum()
        nx, ny = (xc.T @ xc).norm(), (yc.T @ yc).norm()
    den = nx * ny
    if float(den) == 0.0:
        return float("nan")
    return float(hsic / den)


@dataclass
class ClsDecomposition:
    """CLS contributions of one block for a set of images; every field is ``(N, D)``.

    Attributes
    ----------
    skip : CLS token entering the block (the residual / skip path).
    patches, registers, cls, other : contributions read from those tokens (after the
        output projection and layer scale, without the bias).
    bias : the (layer-scaled) projection bias, repeated per image.
    attn_out : sum of the above except ``skip``: the attention sublayer output.
    residual : ``skip + attn_out``: the CLS token after the attention sublayer.
    """

    skip: Tensor
    patches: Tensor
    registers: Tensor
    cls: Tensor
    other: Tensor
    bias: Tensor
    attn_out: Tensor
    residual: Tensor

    def norms(self) -> Dict[str, Tensor]:
        """L2 norm of each part per image: dict of ``(N,)`` tensors."""
        return {k: getattr(self, k).to(torch.float64).norm(dim=-1) for k in PARTS + ("attn_out",)}

    def cosines(self) -> Dict[str, Tensor]:
        """Cosine per image of each part with the attention output and with the residual.

        Keys ``"<part>_vs_attn"`` for patches / registers / cls, and
        ``"<part>_vs_residual"`` for skip / patches / registers / attn_out.
        """
        out = {f"{p}_vs_attn": cosine(getattr(self, p), self.attn_out) for p in ("patches", "registers", "cls")}
        for p in ("skip", "patches", "registers", "attn_out"):
            out[f"{p}_vs_residual"] = cosine(getattr(self, p), self.residual)
        return out

    def cka(self) -> Dict[str, float]:
        """Linear CKA over the images of each part with the attention output / residual."""
        out: Dict[str, float] = {}
        if self.attn_out.shape[0] < 2:
            return out
        for p in ("patches", "registers", "cls"):
            out[f"{p}_vs_attn"] = linear_cka(getattr(self, p), self.attn_out)
        for p in ("skip", "patches", "registers", "attn_out"):
            out[f"{p}_vs_residual"] = linear_cka(getattr(self, p), self.residual)
        return out

    @staticmethod
    def concat(parts: Sequence["ClsDecomposition"]) -> "ClsDecomposition":
        """Concatenate decompositions of several batches along the image axis."""
        names = PARTS + ("attn_out", "residual")
        return ClsDecomposition(**{k: torch.cat([getattr(p, k) for p in parts]) for k in names})


def decompose_cls(
    attn_row: Tensor,
    values: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    layout: ViTLayout,
    skip: Tensor,
    layer_scale: Optional[Callable[[Tensor], Tensor]] = None,
) -> ClsDecomposition:
    """Split the CLS attention output of one block by token kind.

    Parameters
    ----------
    attn_row : Tensor of shape (N, H, T)
        CLS attention row per head (rows sum to 1).
    values : Tensor of shape (N, H, T, d)
        Values per head.
    proj_weight : Tensor of shape (D, H * d)
        Output projection weight.
    proj_bias : Tensor of shape (D,) or None
    layout : ViTLayout
        Must have a CLS token.
    skip : Tensor of shape (N, D)
        CLS token entering the block.
    layer_scale : callable, optional
        Linear map applied to the attention output before the residual addition
        (timm / DINOv2 ``ls1``); identity when ``None``.

    Returns
    -------
    ClsDecomposition
    """
    if not layout.has_cls:
        raise ValueError("layout: the CLS decomposition needs a model with a CLS token (cls_index=None)")
    if attn_row.dim() != 3 or values.dim() != 4 or values.shape[:3] != attn_row.shape:
        raise ValueError(
            f"attn_row, values: expected shapes (N, H, T) and (N, H, T, d), got "
            f"{tuple(attn_row.shape)} and {tuple(values.shape)}"
        )
    n, h, t = attn_row.shape
    npfx = layout.num_prefix_tokens
    ls = layer_scale if layer_scale is not None else (lambda z: z)

    def part(indices: Sequence[int]) -> Tensor:
        if len(indices) == 0:
            return skip.new_zeros(n, proj_weight.shape[0])
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=values.device)
        mixed = torch.einsum("nht,nhtd->nhd", attn_row[:, :, idx], values[:, :, idx, :])
        return ls(mixed.reshape(n, -1) @ proj_weight.T)

    patches = part(range(npfx, t))
    registers = part(layout.register_indices)
    cls = part([layout.cls_index])  # type: ignore[list-item]
    other = part(layout.other_prefix_indices)
    if proj_bias is not None:
        bias = ls(proj_bias.expand(n, -1))
    else:
        bias = skip.new_zeros(n, proj_weight.shape[0])
    attn_out = patches + registers + cls + other + bias
    return ClsDecomposition(
        skip=skip,
        patches=patches,
        registers=registers,
        cls=cls,
        other=other,
        bias=bias,
        attn_out=attn_out,
        residual=skip + attn_out,
    )
