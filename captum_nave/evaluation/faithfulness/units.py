"""Perturbation units besides NAVE segments: a regular grid and SLIC superpixels.

Both return label maps ``(N, 1, H, W)`` (LongTensor) like
:meth:`captum_nave.LayerClusterExplainer.attribute`, so any of them can be the
``units=`` of :func:`~captum_nave.evaluation.faithfulness.perturbation_curve`.
They reuse the CorLoc baselines of :mod:`captum_nave.evaluation.baselines`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["grid_units", "slic_units"]


def grid_units(shape: Tuple[int, int, int, int], rows: int = 4, cols: int = 4, device: Any = None) -> Tensor:
    """A ``rows x cols`` grid of (nearly) equal cells for every image.

    Parameters
    ----------
    shape : (N, C, H, W)
        Shape of the inputs (e.g. ``inputs.shape``).
    rows, cols : int, default 4
    device : torch device, optional

    Returns
    -------
    LongTensor of shape (N, 1, H, W)
        Cell ids ``0 .. rows * cols - 1`` in row-major order.
    """
    from captum_nave.evaluation.baselines import grid_labels

    if len(shape) != 4:
        raise ValueError(f"shape: expected (N, C, H, W), got {tuple(shape)}")
    n, _, h, w = (int(v) for v in shape)
    lab = torch.from_numpy(grid_labels(h, w, rows, cols))
    return lab.to(device)[None, None].expand(n, 1, h, w).clone()


def slic_units(
    images: Tensor,
    n_segments: int = 50,
    *,
    compactness: float = 10.0,
    sigma: float = 0.0,
    device: Optional[Any] = None,
) -> Tensor:
    """SLIC superpixels (scikit-image) of every image.

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W), values in [0, 1]
        The images before normalisation (SLIC works on colours).
    n_segments : int, default 50
        Approximate number of superpixels per image.
    compactness, sigma : float
        SLIC's colour / space trade-off and pre-smoothing (scikit-image defaults).
    device : torch device, optional
        Default: the images' device.

    Returns
    -------
    LongTensor of shape (N, 1, H, W), ids from 0
    """
    from captum_nave.evaluation.baselines import slic_labels

    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a float tensor (N, 3, H, W) with values in [0, 1], got {got}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"images: expected values in [0, 1] (SLIC needs the colours, not normalised inputs), "
            f"got range [{lo:.3g}, {hi:.3g}]"
        )
    arr = (images.detach().permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    labs = [slic_labels(a, n_segments=n_segments, compactness=compactness, sigma=sigma) for a in arr]
    out = torch.from_numpy(np.stack(labs))[:, None]
    return out.to(images.device if device is None else device)
