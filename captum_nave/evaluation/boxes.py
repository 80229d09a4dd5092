"""Boxes of the CorLoc protocol: outer / inner boxes of a component and IoU.

Two sets of conventions are implemented (see :class:`~captum_nave.evaluation.CorLocProtocol`):

* ``"authors"`` -- exactly what the authors' evaluation script does
  (``Ahcene-B/VOC_eval``, ``main_nave.py``, the working version; its IoU is
  LOST's ``bbox_iou``): the inner box is centred on the median pixel
  coordinate truncated to an int, and IoU is computed in float32 with
  ``eps = 1e-7`` added to both box heights and to the union;
* ``"clean"`` -- float conventions (captum-nave 0.1): the float median and an
  exact float64 IoU.

Boxes are ``(x_min, y_min, x_max, y_max)`` in continuous pixel coordinates
and IoU uses no ``+1``. The outer box of a component is made of pixel
*indices*, so a component covering columns 0..9 has ``x_min=0, x_max=9``
(Algorithm 2 of the paper).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONVENTIONS", "box_iou", "authors_box_iou", "outer_box", "inner_box"]

#: Conventions of the protocol: the authors' script exactly (default) or float ones.
CONVENTIONS = ("authors", "clean")

#: The ``eps`` of LOST's ``bbox_iou`` used by the authors' script.
AUTHORS_IOU_EPS = 1e-7


def check_conventions(value: object) -> str:
    """Return ``value`` if it is one of :data:`CONVENTIONS`, else raise ``ValueError``."""
    if not isinstance(value, str) or value not in CONVENTIONS:
        raise ValueError(f"conventions: expected one of {list(CONVENTIONS)}, got {value!r}")
    return value


def as_boxes(boxes: object, name: str) -> np.ndarray:
    """``boxes`` as a finite float64 array of shape (M, 4) (a single box may be 1-D)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(
            f"{name}: expected boxes of shape (M, 4) as (x_min, y_min, x_max, y_max), "
            f"got shape {tuple(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: boxes must be finite, got {arr.tolist()}")
    return arr


def box_iou(boxes_a: object, boxes_b: object) -> np.ndarray:
    """Pairwise intersection over union in continuous coordinates (no ``+1``), float64.

    The ``"clean"`` conventions' IoU.

    Parameters
    ----------
    boxes_a : array-like of shape (N, 4)
        Boxes ``(x_min, y_min, x_max, y_max)``.
    boxes_b : array-like of shape (M, 4)
        Boxes ``(x_min, y_min, x_max, y_max)``.

    Returns
    -------
    iou : ndarray of shape (N, M), float64
        ``area(a & b) / area(a | b)``; 0 where the union is empty.
    """
    a = as_boxes(boxes_a, "boxes_a")
    b = as_boxes(boxes_b, "boxes_b")
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def authors_box_iou(boxes_a: object, boxes_b: object) -> np.ndarray:
    """Pairwise IoU as the authors' script computes it: float32, ``eps = 1e-7``.

    The script calls LOST's ``bbox_iou`` on int64 boxes, which torch promotes
    to float32::

        inter / (w1 * (h1 + eps) + w2 * (h2 + eps) - inter + eps)

    The coordinates are cast to float32 (exact for integer pixel coordinates
    below 2**24, the only ones the script sees), and every operation is done in
    float32 in that order, so the values are bit-identical to the script's.
    The ``eps`` only matters for boxes of height 0 or 1 (it lowers an IoU of
    exactly 0.5 between 1-pixel-high boxes below 0.5).

    Parameters
    ----------
    boxes_a : array-like of shape (N, 4)
    boxes_b : array-like of shape (M, 4)

    Returns
    -------
    iou : ndarray of shape (N, M), float32
    """
    a = as_boxes(boxes_a, "boxes_a").astype(np.float32)
    b = as_boxes(boxes_b, "boxes_b").astype(np.float32)
    eps = np.float32(AUTHORS_IOU_EPS)
    zero = np.float32(0)
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), zero)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), zero)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * ((a[:, 3] - a[:, 1]) + eps)
    area_b = (b[:, 2] - b[:, 0]) * ((b[:, 3] - b[:, 1]) + eps)
    union = ((area_a[:, None] + area_b[None, :]) - inter) + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union != 0, iou, zero).astype(np.float32, copy=False)


def outer_box(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Outer box of a set of pixels (Algorithm 2): min / max of the pixel indices.

    Parameters
    ----------
    ys, xs : ndarray of shape (P,)
        Row and column indices of the component's pixels (``P >= 1``).

    Returns
    -------
    box : ndarray of shape (4,), float64
        ``(x_min, y_min, x_max, y_max)``.
    """
    if len(xs) == 0:
        raise ValueError("outer_box: the component has no pixels")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def inner_box(
    ys: np.ndarray, xs: np.ndarray, height: int, width: int, *, conventions: str = "authors"
) -> np.ndarray:
    """Inner box of a set of pixels (Algorithm 3).

    The box is centred on the median pixel coordinate ``(xs_med, ys_med)``
    with half-widths ``xd = min(|xs_med - x_min|, |xs_med - x_max|)`` and
    ``yd = min(|ys_med - y_min|, |ys_med - y_max|)``, clipped to ``[0, width]``
    and ``[0, height]``.

    With ``conventions="authors"`` the median is truncated to an int, as the
    authors' numpy code does (``xs = int(np.median(x))``): on a 64x64 map with
    one cluster and a 14-pixel border, the pixels span 14..49, the median 31.5
    becomes 31, ``xd = min(17, 18) = 17`` and the box is ``[14, 14, 48, 48]``.
    With ``conventions="clean"`` the float median is kept (the mean of the two
    middle values for an even count): ``[14, 14, 49, 49]``.

    The clip is a no-op (the median lies between the min and the max). The
    authors' current HEAD clips with the image tensor's ``(C, H, W)`` shape read
    as ``(H, W)``, so every y coordinate is clipped to ``[0, 3]`` and nearly
    every inner box gets zero height (IoU 0); the paper's inner-box numbers
    cannot come from it. Their previous commit clips to the map's ``(H, W)``,
    which is what is implemented here.

    Parameters
    ----------
    ys, xs : ndarray of shape (P,)
        Row and column indices of the component's pixels (``P >= 1``).
    height, width : int
        Size of the image the component lives in.
    conventions : {"authors", "clean"}, default "authors"

    Returns
    -------
    box : ndarray of shape (4,), float64
        ``(x_min, y_min, x_max, y_max)``.
    """
    check_conventions(conventions)
    if len(xs) == 0:
        raise ValueError("inner_box: the component has no pixels")
    xs_med = float(np.median(xs))
    ys_med = float(np.median(ys))
    if conventions == "authors":
        xs_med, ys_med = float(int(xs_med)), float(int(ys_med))
    xd = min(abs(xs_med - float(xs.min())), abs(xs_med - float(xs.max())))
    yd = min(abs(ys_med - float(ys.min())), abs(ys_med - float(ys.max())))
    return np.array(
        [
            min(max(xs_med - xd, 0.0), float(width)),
            min(max(ys_med - yd, 0.0), float(height)),
            min(max(xs_med + xd, 0.0), float(width)),
            min(max(ys_med + yd, 0.0), float(height)),
        ],
        dtype=np.float64,
    )
