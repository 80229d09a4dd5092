"""Token norms and high-norm outlier tokens (Darcet et al., ICLR 2024).

Large ViTs without registers turn a few background patches into high-norm
tokens (about 10x the norm of the others) from about a third of the depth on.
This module finds them per image and per layer, with a fixed threshold or a
robust data-driven one, and reports which register tokens carry high norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from captum_nave._validation import check_real
from captum_nave.adapters import ViTLayout

__all__ = [
    "MAD_TO_STD",
    "robust_threshold",
    "detect_outliers",
    "first_outlier_layer",
    "OutlierReport",
    "outlier_report",
    "norm_map",
]

#: Consistency constant: ``1.4826 * MAD`` estimates the standard deviation of a Gaussian.
MAD_TO_STD = 1.4826


def robust_threshold(values: Tensor, k: float) -> Tensor:
    """``median + k * 1.4826 * MAD`` along the last dimension.

    Parameters
    ----------
    values : Tensor of shape (..., P)
    k : float
        Number of robust standard deviations.

    Returns
    -------
    Tensor of shape (...)

    Notes
    -----
    The median is the lower median (``torch.median``) for an even count. A zero MAD
    (e.g. constant norms) is floored at ``1e-6 * median`` so that exact ties are not
    outliers.
    """
    med = values.median(dim=-1).values
    mad = (values - med.unsqueeze(-1)).abs().median(dim=-1).values
    mad = torch.maximum(mad, 1e-6 * med.abs())
    return med + k * MAD_TO_STD * mad


def detect_outliers(
    norms: Tensor,
    *,
    method: str = "robust",
    k: float = 5.0,
    threshold: Optional[float] = None,
    min_ratio: Optional[float] = 2.0,
) -> Tensor:
    """High-norm tokens among a set of patch-token norms.

    Parameters
    ----------
    norms : Tensor of shape (..., P)
        L2 norms of the patch tokens of one image and layer per row.
    method : {"robust", "fixed"}, default "robust"
        ``"robust"``: outliers have ``norm > median + k * 1.4826 * MAD`` of their row.
        ``"fixed"``: outliers have ``norm > threshold``.
    k : float, default 5.0
        Robust threshold width (``method="robust"``).
    threshold : float, optional
        Absolute norm threshold (required for ``method="fixed"``).
    min_ratio : float or None, default 2.0
        With ``method="robust"``, also require ``norm >= min_ratio * median`` so that a
        merely heavy-tailed norm distribution yields no outliers (Darcet et al.'s
        outliers are about 10x the median). ``None`` disables it.

    Returns
    -------
    BoolTensor of shape (..., P)
    """
    if method not in ("robust", "fixed"):
        raise ValueError(f"method: expected 'robust' or 'fixed', got {method!r}")
    if norms.dim() < 1 or norms.shape[-1] == 0:
        raise ValueError(f"norms: expected shape (..., P) with P >= 1, got {tuple(norms.shape)}")
    if method == "fixed":
        if threshold is None:
            raise ValueError("threshold: method='fixed' needs a numeric threshold, got None")
        return norms > check_real(threshold, "threshold")  # type: ignore[operator]
    k = check_real(k, "k", low=0.0)
    mask = norms > robust_threshold(norms, float(k)).unsqueeze(-1)
    if min_ratio is not None:
        min_ratio = check_real(min_ratio, "min_ratio", low=0.0, allow_none=True)
        med = norms.median(dim=-1).values.unsqueeze(-1)
        mask &= norms >= float(min_ratio) * med
    return mask


def first_outlier_layer(mask: Tensor) -> Tensor:
    """Index of the first layer that has at least one outlier.

    Parameters
    ----------
    mask : BoolTensor of shape (N, L, P)

    Returns
    -------
    LongTensor of shape (N,)
        ``-1`` where no layer has an outlier.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask: expected shape (N, L, P), got {tuple(mask.shape)}")
    any_l = mask.any(dim=-1)  # (N, L)
    first = any_l.to(torch.int64).argmax(dim=1)
    return torch.where(any_l.any(dim=1), first, torch.full_like(first, -1))


@dataclass
class OutlierReport:
    """High-norm token statistics of a set of images, per layer.

    Attributes
    ----------
    mask : BoolTensor of shape (N, L, P)
        Outlier patch tokens per image and layer (block outputs).
    threshold : Tensor of shape (N, L)
        Threshold used per image and layer.
    fraction : Tensor of shape (N, L)
        Share of patch tokens that are outliers.
    max_median_ratio : Tensor of shape (N, L)
        Largest patch-token norm divided by the median one.
    first_layer : LongTensor of shape (N,)
        First layer with an outlier, ``-1`` if none.
    register_high : BoolTensor of shape (N, L, R)
        Register tokens whose norm exceeds the patch threshold of their layer.
    register_ratio : Tensor of shape (N, L, R)
        Register-token norm divided by the median patch-token norm.
    """

    mask: Tensor
    threshold: Tensor
    fraction: Tensor
    max_median_ratio: Tensor
    first_layer: Tensor
    register_high: Tensor
    register_ratio: Tensor

    def outlier_indices(self, image: int, layer: int) -> Tuple[int, ...]:
        """Patch indices (raster order on the grid) of the outliers of one image and layer."""
        return tuple(int(i) for i in torch.nonzero(self.mask[image, layer]).flatten())


def outlier_report(
    norms: Tensor,
    layout: ViTLayout,
    *,
    method: str = "robust",
    k: float = 5.0,
    threshold: Optional[float] = None,
    min_ratio: Optional[float] = 2.0,
) -> OutlierReport:
    """Outliers, their share, the max/median ratio and register norms per layer.

    Parameters
    ----------
    norms : Tensor of shape (N, L, T)
        Token norms of every token (prefix first) at the output of each block.
    layout : ViTLayout
    method, k, threshold, min_ratio
        See :func:`detect_outliers`.

    Returns
    -------
    OutlierReport
    """
    if norms.dim() != 3:
        raise ValueError(f"norms: expected shape (N, L, T), got {tuple(norms.shape)}")
    npfx = layout.num_prefix_tokens
    patch = norms[..., npfx:]
    mask = detect_outliers(patch, method=method, k=k, threshold=threshold, min_ratio=min_ratio)
    if method == "fixed":
        thr = torch.full(patch.shape[:-1], float(threshold), dtype=patch.dtype, device=patch.device)  # type: ignore[arg-type]
    else:
        thr = robust_threshold(patch, float(k))
        if min_ratio is not None:
            thr = torch.maximum(thr, float(min_ratio) * patch.median(dim=-1).values)
    med = patch.median(dim=-1).values
    regs = norms[..., list(layout.register_indices)]
    return OutlierReport(
        mask=mask,
        threshold=thr,
        fraction=mask.to(torch.float64).mean(dim=-1),
        max_median_ratio=patch.max(dim=-1).values / med.clamp_min(1e-12),
        first_layer=first_outlier_layer(mask),
        register_high=regs > thr.unsqueeze(-1),
        register_ratio=regs / med.clamp_min(1e-12).unsqueeze(-1),
    )


def norm_map(norms: Tensor, layout: ViTLayout, grid: Tuple[int, int]) -> Tensor:
    """Patch-token norms as maps on the patch grid.

    Parameters
    ----------
    norms : Tensor of shape (..., T)
    layout : ViTLayout
    grid : (h, w)

    Returns
    -------
    Tensor of shape (..., h, w)
    """
    p = norms[..., layout.num_prefix_tokens :]
    h, w = grid
    if p.shape[-1] != h * w:
        raise ValueError(f"grid: {p.shape[-1]} patch tokens do not fill a {h}x{w} grid")
    return p.reshape(*p.shape[:-1], h, w)
