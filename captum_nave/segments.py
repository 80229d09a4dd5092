"""Label maps (fourth step of the NAVE data flow): resizing, relabelling, components."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_labels", "relabel_by_area", "connected_components"]


def resize_labels(labels: Tensor, size: Tuple[int, int], *, cell: Optional[Tuple[int, int]] = None) -> Tensor:
    """Resize integer label maps with nearest-neighbour interpolation (never bilinear).

    Uses PyTorch's ``"nearest-exact"`` mode: output pixel ``y`` takes source row
    ``floor((y + 0.5) * h / H)``, i.e. pixel centres are aligned. For integer
    upscaling factors (a ViT patch grid to its padded image) this equals plain
    ``"nearest"``: each grid cell becomes a ``ph x pw`` block.

    With ``cell=(ph, pw)`` the source cells are instead ``ph x pw`` output pixels
    counted from the top-left corner, as a ViT's patches: output pixel ``(y, x)``
    takes cell ``(min(y // ph, h - 1), min(x // pw, w - 1))``. This is the exact map of
    a patch grid on an input that is not a multiple of the patch size, whether the
    model pads it at the bottom / right (timm ``dynamic_img_pad``) or crops the
    remainder (a convolution patch embedding; those pixels take the last patch).

    Parameters
    ----------
    labels : LongTensor of shape (N, 1, h, w), (N, h, w) or (h, w)
    size : (int, int)
        Target ``(H, W)``.
    cell : (int, int), optional
        Patch size, for patch grids (see above).

    Returns
    -------
    LongTensor with the same number of dimensions and spatial size ``(H, W)``.
    """
    if labels.is_floating_point():
        raise TypeError(f"labels: expected an integer tensor, got dtype {labels.dtype}")
    dim = labels.dim()
    if dim not in (2, 3, 4):
        raise ValueError(f"labels: expected (h, w), (N, h, w) or (N, 1, h, w), got {tuple(labels.shape)}")
    x = labels
    if dim == 2:
        x = x[None, None]
    elif dim == 3:
        x = x[:, None]
    if cell is not None:
        h, w = x.shape[-2:]
        rows = (torch.arange(int(size[0]), device=x.device) // int(cell[0])).clamp_max(h - 1)
        cols = (torch.arange(int(size[1]), device=x.device) // int(cell[1])).clamp_max(w - 1)
        x = x[..., rows, :][..., cols]
    elif tuple(x.shape[-2:]) != tuple(size):
        # float64 represents label ids exactly; nearest never mixes values
        x = F.interpolate(x.to(torch.float64), size=tuple(size), mode="nearest-exact").round().long()
    if dim == 2:
        return x[0, 0]
    if dim == 3:
        return x[:, 0]
    return x


def relabel_by_area(labels: Tensor, *, per_image: bool = True) -> Tensor:
    """Renumber labels 0..M-1 by decreasing area (ties: smaller old id first).

    Parameters
    ----------
    labels : LongTensor of shape (N, H, W)
        Any integer ids (negative ids, e.g. a clusterer's noise label, become a segment).
    per_image : bool
        Order each image by its own areas (True) or the whole batch by total area,
        keeping ids consistent across images (False).

    Returns
    -------
    LongTensor of shape (N, H, W)
    """
    if per_image:
        return torch.stack([relabel_by_area(l[None], per_image=False)[0] for l in labels]) \
            if labels.shape[0] > 0 else labels
    uniq, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    # sort by (-count, id): ids are already sorted ascending in uniq, use a stable sort
    order = torch.sort(-counts, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank[inv]


def connected_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """4-connected components of a boolean mask.

    Returns
    -------
    components : ndarray of int (H, W), 0 = background, 1..n the components
    n : int
    """
    from scipy import ndimage

    structure = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    comp, n = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    return comp, int(n)
