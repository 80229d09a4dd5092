"""Does the map point at the object? Pointing game and energy inside the boxes.

Both need ground-truth boxes ``(x_min, y_min, x_max, y_max)`` in pixels of the inputs
(exclusive maxima, as :mod:`captum_nave.evaluation.corloc`); several boxes of one
image count as their union. Images without a box get NaN.

* **pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016): a hit when the map's maximum lies inside a box grown by ``tolerance``
  pixels (they use 15 px); with several maxima, a hit when any of them does
  (Quantus' ``PointingGame``);
* **energy in box** (Wang et al., Score-CAM, CVPRW 2020, "energy-based pointing
  game"): the share of the map's positive mass inside the boxes,
  ``sum_box max(a, 0) / sum max(a, 0)`` (NaN for a map without positive mass);
  ``positive=False`` uses the signed map, as Quantus' ``RelevanceMassAccuracy``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["box_masks", "pointing_game", "energy_in_box"]


def box_masks(boxes: Sequence[Any], shape: Sequence[int], *, tolerance: float = 0.0) -> Tensor:
    """Union of every image's boxes as a mask.

    Parameters
    ----------
    boxes : sequence of N arrays of shape (M_i, 4)
        ``(x_min, y_min, x_max, y_max)`` in pixels; ``M_i = 0`` or ``None`` for none.
    shape : (N, 1, H, W) or (N, C, H, W)
    tolerance : float, default 0
        Grow every box by this many pixels on each side.

    Returns
    -------
    BoolTensor of shape (N, H, W)
        Pixel ``(y, x)`` (centre ``(y + 0.5, x + 0.5)``) is inside a box
        ``x_min <= x + 0.5 <= x_max``, ``y_min <= y + 0.5 <= y_max``.
    """
    n, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence) or len(boxes) != n:
        raise ValueError(f"boxes: expected one array of boxes (M, 4) per image ({n}), got {boxes!r}")
    if not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a number of pixels >= 0, got {tolerance!r}")
    cy = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    cx = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    out = torch.zeros(n, h, w, dtype=torch.bool)
    for i, b in enumerate(boxes):
        arr = np.zeros((0, 4)) if b is None else np.asarray(b, dtype=np.float64)
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
            raise ValueError(f"boxes[{i}]: expected an array of shape (M, 4) of finite numbers, got {b!r}")
        if np.any(arr[:, 2] <= arr[:, 0]) or np.any(arr[:, 3] <= arr[:, 1]):
            raise ValueError(f"boxes[{i}]: expected x_max > x_min and y_max > y_min, got {arr.tolist()}")
        for x0, y0, x1, y1 in arr.tolist():
            t = float(tolerance)
            out[i] |= (cx >= x0 - t) & (cx <= x1 + t) & (cy >= y0 - t) & (cy <= y1 + t)
    return out


def _check(maps: Any) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[1] != 1 or not maps.is_floating_point():
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps: expected a float tensor of shape (N, 1, H, W), got {got}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps: expected finite values, got NaN or inf")
    return maps


def pointing_game(maps: Tensor, boxes: Sequence[Any], *, tolerance: float = 0.0) -> Tensor:
    """1.0 where the map's maximum is inside a box, 0.0 where not, NaN without a box.

    Parameters
    ----------
    maps : Tensor of shape (N, 1, H, W)
    boxes : sequence of N arrays (M_i, 4)
    tolerance : float, default 0
        Pixels added around every box (Zhang et al.: 15).

    Returns
    -------
    Tensor of shape (N,), float64
    """
    a = _check(maps).detach().to("cpu", torch.float64)[:, 0]
    inside = box_masks(boxes, a.shape[:1] + (1,) + a.shape[1:], tolerance=tolerance)
    top = a == a.amax(dim=(1, 2), keepdim=True)
    hits = (top & inside).flatten(1).any(dim=1).to(torch.float64)
    none = ~box_masks(boxes, a.shape[:1] + (1,) + a.shape[1:]).flatten(1).any(dim=1)
    return torch.where(none, torch.full_like(hits, math.nan), hits)


def energy_in_box(maps: Tensor, boxes: Sequence[Any], *, positive: bool = True) -> Tensor:
    """Share of the map's (positive) mass inside the boxes, per image.

    Parameters
    ----------
    maps : Tensor of shape (N, 1, H, W)
    boxes : sequence of N arrays (M_i, 4)
    positive : bool, default True
        Use ``max(a, 0)`` (Score-CAM); ``False``: the signed map (Quantus'
        ``RelevanceMassAccuracy``).

    Returns
    -------
    Tensor of shape (N,), float64
        NaN for images without a box or with zero total mass.
    """
    a = _check(maps).detach().to("cpu", torch.float64)[:, 0]
    if positive:
        a = a.clamp_min(0)
    inside = box_masks(boxes, a.shape[:1] + (1,) + a.shape[1:])
    total = a.flatten(1).sum(1)
    within = (a * inside).flatten(1).sum(1)
    share = within / torch.where(total == 0, torch.ones_like(total), total)
    bad = (total == 0) | ~inside.flatten(1).any(dim=1)
    return torch.where(bad, torch.full_like(share, math.nan), share)

