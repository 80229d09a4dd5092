"""The paper's object-extraction proxy task: segment selection and CorLoc.

A segmentation (NAVE clusters, SLIC superpixels, a grid, ...) is turned into
candidate boxes and scored against ground-truth boxes exactly as in the
authors' evaluation script (Boubekki et al., arXiv 2411.19700, Sec. 4.2 and
Appendix A):

1. the label map is resized with NEAREST interpolation to the (padded) image
   size the model saw;
2. every cluster is split into 4-connected components;
3. components with an area ``<= min_area`` pixels (784 = 14 * 14 * 4) are
   dropped;
4. a ``border`` of 14 pixels is zeroed on all four sides of every component
   mask; components that become empty are dropped;
5. each remaining component gets an *outer* box (min / max of its pixel
   coordinates, Algorithm 2) and an *inner* box (centred on the median pixel
   coordinate with half-widths ``min(|xs - xmin|, |xs - xmax|)`` and
   ``min(|ys - ymin|, |ys - ymax|)``, clipped to the image, Algorithm 3);
6. the component whose box (outer or inner, per strategy) has the highest IoU
   with any ground-truth box is selected (an oracle selection: a proxy task,
   not object discovery);
7. the reported IoU is that of the selected component's OUTER box with the
   ground-truth box matched in step 6, for both strategies; an image counts as
   correctly localised when it is ``>= iou_threshold`` (0.5). CorLoc is the
   fraction of correctly localised images.

Boxes are ``(x_min, y_min, x_max, y_max)`` in continuous pixel coordinates and
IoU uses no ``+1`` (as the authors' script). The outer box of a component is
made of pixel *indices*, so a component covering columns 0..9 has the box
``x_min=0, x_max=9`` (as Algorithm 2).

Ties are broken deterministically: components are ordered by cluster id and,
within a cluster, by the raster-scan order of their first pixel; ground-truth
boxes keep the dataset order; the first maximum wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import ndimage

from captum_nave._validation import InvalidParameterError, check_int, check_int_pair, check_real
from captum_nave.segments import resize_labels

__all__ = [
    "STRATEGIES",
    "Component",
    "Selection",
    "CorLocProtocol",
    "box_iou",
    "outer_box",
    "inner_box",
    "extract_components",
    "select_component",
    "corloc",
    "as_label_map",
]

#: Selection strategies of the paper: by inner box (Algorithm 3, the main text's
#: numbers) or by outer box (Algorithm 2, Appendix B).
STRATEGIES: Tuple[str, ...] = ("inner", "outer")

#: Paper values of the protocol constants.
DEFAULT_MIN_AREA = 784  # 14 * 14 * 4 pixels at image scale; components with area <= this are dropped
DEFAULT_BORDER = 14  # pixels zeroed on each side of every component mask
DEFAULT_IOU_THRESHOLD = 0.5  # CorLoc / AP@50%
DEFAULT_CONNECTIVITY = 4

LabelLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------- boxes
def _as_boxes(boxes: object, name: str) -> np.ndarray:
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
    """Pairwise intersection over union in continuous coordinates (no ``+1``).

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
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
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


def inner_box(ys: np.ndarray, xs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inner box of a set of pixels (Algorithm 3).

    The box is centred on the median pixel coordinate ``(xs_med, ys_med)``
    (``numpy.median``: the mean of the two middle values for an even count,
    as the authors' numpy code) with half-widths
    ``xd = min(|xs_med - x_min|, |xs_med - x_max|)`` and
    ``yd = min(|ys_med - y_min|, |ys_med - y_max|)``, clipped to ``[0, width]``
    and ``[0, height]``.

    Parameters
    ----------
    ys, xs : ndarray of shape (P,)
        Row and column indices of the component's pixels (``P >= 1``).
    height, width : int
        Size of the image the component lives in.

    Returns
    -------
    box : ndarray of shape (4,), float64
        ``(x_min, y_min, x_max, y_max)``.
    """
    if len(xs) == 0:
        raise ValueError("inner_box: the component has no pixels")
    xs_med = float(np.median(xs))
    ys_med = float(np.median(ys))
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


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """One candidate region: a connected component of one cluster.

    Attributes
    ----------
    cluster : int
        Cluster (segment) id the component belongs to.
    area : int
        Number of pixels before the border was zeroed (compared with ``min_area``).
    pixels : int
        Number of pixels left after the border was zeroed (``>= 1``).
    outer_box : ndarray of shape (4,)
        Algorithm 2 box of the remaining pixels.
    inner_box : ndarray of shape (4,)
        Algorithm 3 box of the remaining pixels.
    """

    cluster: int
    area: int
    pixels: int
    outer_box: np.ndarray
    inner_box: np.ndarray

    def box(self, strategy: str) -> np.ndarray:
        """The box used by ``strategy`` (``"inner"`` or ``"outer"``)."""
        _check_strategy(strategy)
        return self.inner_box if strategy == "inner" else self.outer_box


def as_label_map(labels: LabelLike, name: str = "labels") -> np.ndarray:
    """Convert a label map to a 2-D int64 numpy array.

    Accepts shapes ``(H, W)``, ``(1, H, W)`` and ``(1, 1, H, W)``, as numpy
    arrays or torch tensors with integer values.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array or torch tensor, got {type(labels).__name__}"
        )
    arr = labels
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a label map of shape (H, W), (1, H, W) or (1, 1, H, W), "
            f"got shape {tuple(labels.shape)}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: the label map is empty, shape {tuple(labels.shape)}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected integer segment ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    if connectivity == 8:
        return ndimage.generate_binary_structure(2, 2)
    raise ValueError(f"connectivity: expected 4 or 8, got {connectivity!r}")


def extract_components(
    labels: LabelLike,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    border: int = DEFAULT_BORDER,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> List[Component]:
    """Split every cluster into connected components, filter them, and box them.

    Steps 2-5 of the protocol: 4-connected components per cluster, drop those
    with ``area <= min_area``, zero a ``border``-pixel frame of every component
    mask, drop the components that become empty, compute outer and inner boxes.

    Parameters
    ----------
    labels : ndarray or Tensor of shape (H, W), (1, H, W) or (1, 1, H, W)
        Integer segment ids at image scale (already resized to the image).
    min_area : int, default 784
        Components with ``area <= min_area`` pixels are dropped (paper: 14*14*4).
    border : int, default 14
        Width in pixels of the frame zeroed on all four sides (paper: 14).
    connectivity : {4, 8}, default 4
        Pixel connectivity of the components (paper: 4).

    Returns
    -------
    components : list of Component
        Ordered by cluster id, then by raster order of each component's first pixel.
    """
    lab = as_label_map(labels)
    _check_nonneg_int(min_area, "min_area")
    _check_nonneg_int(border, "border")
    structure = _structure(connectivity)
    height, width = lab.shape
    out: List[Component] = []
    for cluster in np.unique(lab):
        comp_ids, n = ndimage.label(lab == cluster, structure=structure)
        if n == 0:
            continue
        slices = ndimage.find_objects(comp_ids)
        for idx, slc in enumerate(slices, start=1):
            if slc is None:
                continue
            local_y, local_x = np.nonzero(comp_ids[slc] == idx)
            area = int(local_y.size)
            if area <= min_area:
                continue
            ys = local_y + slc[0].start
            xs = local_x + slc[1].start
            keep = (ys >= border) & (ys < height - border) & (xs >= border) & (xs < width - border)
            if not np.any(keep):
                continue
            ys, xs = ys[keep], xs[keep]
            out.append(
                Component(
                    cluster=int(cluster),
                    area=area,
                    pixels=int(ys.size),
                    outer_box=outer_box(ys, xs),
                    inner_box=inner_box(ys, xs, height, width),
                )
            )
    return out


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selection:
    """The oracle-selected component of one image for one strategy.

    Attributes
    ----------
    strategy : str
        ``"inner"`` or ``"outer"``.
    component : int
        Index of the selected component in the component list, ``-1`` if none survived.
    cluster : int
        Cluster id of the selected component, ``-1`` if none.
    selection_box : tuple of 4 float or None
        The box (inner or outer) that won the selection.
    outer_box : tuple of 4 float or None
        Outer box of the selected component (the box whose IoU is reported).
    selection_iou : float
        IoU of ``selection_box`` with the matched ground-truth box.
    gt_index : int
        Index of the matched ground-truth box, ``-1`` if none.
    iou : float
        Reported IoU: ``outer_box`` with the matched ground-truth box.
    correct : bool
        ``iou >= iou_threshold``.
    n_components : int
        Number of candidate components after filtering.
    """

    strategy: str
    component: int
    cluster: int
    selection_box: Optional[Tuple[float, float, float, float]]
    outer_box: Optional[Tuple[float, float, float, float]]
    selection_iou: float
    gt_index: int
    iou: float
    correct: bool
    n_components: int

    def to_dict(self) -> Dict[str, object]:
        """Plain-Python representation (JSON-serialisable)."""
        d = asdict(self)
        for key in ("selection_box", "outer_box"):
            if d[key] is not None:
                d[key] = [float(v) for v in d[key]]
        return d


def select_component(
    components: Sequence[Component],
    gt_boxes: object,
    strategy: str = "inner",
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> Selection:
    """Oracle selection of one component (steps 6-7 of the protocol).

    Parameters
    ----------
    components : sequence of Component
        Candidates, e.g. from :func:`extract_components`.
    gt_boxes : array-like of shape (M, 4), M >= 1
        Ground-truth boxes ``(x_min, y_min, x_max, y_max)`` in image pixels.
    strategy : {"inner", "outer"}, default "inner"
        Which box of each component competes for the best IoU.
    iou_threshold : float, default 0.5
        An image is correctly localised when the reported IoU is ``>=`` this.

    Returns
    -------
    Selection
        With ``component == -1`` and ``iou == 0`` when there is no candidate.
    """
    _check_strategy(strategy)
    gt = _as_boxes(gt_boxes, "gt_boxes")
    if gt.shape[0] == 0:
        raise ValueError("gt_boxes: at least one ground-truth box is needed, got 0")
    _check_threshold(iou_threshold)
    if len(components) == 0:
        return Selection(strategy, -1, -1, None, None, 0.0, -1, 0.0, False, 0)
    cand = np.stack([c.box(strategy) for c in components])
    ious = box_iou(cand, gt)  # (n_components, n_gt)
    flat = int(np.argmax(ious))  # first maximum in row-major order: earliest component, then GT
    ci, gi = divmod(flat, gt.shape[0])
    chosen = components[ci]
    reported = float(box_iou(chosen.outer_box[None], gt[gi][None])[0, 0])
    return Selection(
        strategy=strategy,
        component=ci,
        cluster=chosen.cluster,
        selection_box=tuple(float(v) for v in chosen.box(strategy)),  # type: ignore[arg-type]
        outer_box=tuple(float(v) for v in chosen.outer_box),  # type: ignore[arg-type]
        selection_iou=float(ious[ci, gi]),
        gt_index=gi,
        iou=reported,
        correct=bool(reported >= iou_threshold),
        n_components=len(components),
    )


def corloc(correct: Sequence[bool]) -> float:
    """Correct-localisation rate: the fraction of ``True`` entries (NaN if empty)."""
    flags = np.asarray(list(correct), dtype=bool)
    return float(flags.mean()) if flags.size else math.nan


# --------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class CorLocProtocol:
    """The full protocol with its constants (paper values by default).

    Parameters
    ----------
    min_area : int, default 784
        Components with ``area <= min_area`` pixels at image scale are dropped
        (14 * 14 * 4 in the authors' script). Scale it with the image size when
        evaluating much smaller images.
    border : int, default 14
        Width of the frame zeroed on each side of every component mask.
    iou_threshold : float, default 0.5
        CorLoc threshold; an IoU exactly equal to it counts as correct.
    connectivity : {4, 8}, default 4
        Connectivity of the components.

    Examples
    --------
    >>> protocol = CorLocProtocol()
    >>> sel = protocol.evaluate(labels, gt_boxes)       # labels: (H, W) ints
    >>> sel["inner"].correct, sel["outer"].iou
    """

    min_area: int = DEFAULT_MIN_AREA
    border: int = DEFAULT_BORDER
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    connectivity: int = DEFAULT_CONNECTIVITY

    def __post_init__(self) -> None:
        # plain Python numbers: the protocol is written to JSON with the results
        object.__setattr__(self, "min_area", _check_nonneg_int(self.min_area, "min_area"))
        object.__setattr__(self, "border", _check_nonneg_int(self.border, "border"))
        object.__setattr__(self, "iou_threshold", _check_threshold(self.iou_threshold))
        _structure(self.connectivity)
        object.__setattr__(self, "connectivity", int(self.connectivity))

    def to_dict(self) -> Dict[str, object]:
        """Parameters as a plain dict."""
        return asdict(self)

    def components(
        self, labels: LabelLike, image_size: Optional[Tuple[int, int]] = None
    ) -> List[Component]:
        """Candidate components of a label map.

        Parameters
        ----------
        labels : ndarray or Tensor of shape (h, w), (1, h, w) or (1, 1, h, w)
            Segment ids; resized NEAREST to ``image_size`` when given and different.
        image_size : (H, W), optional
            Image scale at which the protocol runs (the padded image size).
        """
        lab = as_label_map(labels)
        if image_size is not None:
            lab = _resize_nearest(lab, image_size)
        return extract_components(
            lab, min_area=self.min_area, border=self.border, connectivity=self.connectivity
        )

    def evaluate(
        self,
        labels: LabelLike,
        gt_boxes: object,
        strategies: Sequence[str] = STRATEGIES,
        image_size: Optional[Tuple[int, int]] = None,
    ) -> Dict[str, Selection]:
        """Select a component per strategy for one image.

        Parameters
        ----------
        labels : ndarray or Tensor of shape (h, w), (1, h, w) or (1, 1, h, w)
            Segment ids of one image.
        gt_boxes : array-like of shape (M, 4), M >= 1
            Ground-truth boxes in pixels of the (unpadded) image.
        strategies : sequence of {"inner", "outer"}
            Strategies to evaluate.
        image_size : (H, W), optional
            Resize ``labels`` NEAREST to this size first.

        Returns
        -------
        dict
            ``{strategy: Selection}``.
        """
        strategies = _check_strategies(strategies)
        comps = self.components(labels, image_size)
        return {
            s: select_component(comps, gt_boxes, s, iou_threshold=self.iou_threshold)
            for s in strategies
        }


# --------------------------------------------------------------------------- helpers
def _resize_nearest(lab: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    size = _check_size(size)
    if tuple(lab.shape) == size:
        return lab
    t = torch.from_numpy(np.ascontiguousarray(lab))[None, None]
    return as_label_map(resize_labels(t, size))


def _check_size(size: object) -> Tuple[int, int]:
    if not isinstance(size, (tuple, list)):
        raise InvalidParameterError(f"image_size: expected (height, width), got {size!r}")
    return check_int_pair(size, "image_size")


def _check_nonneg_int(value: object, name: str) -> int:
    return check_int(value, name, low=0)  # type: ignore[return-value]


def _check_threshold(value: object) -> float:
    return check_real(value, "iou_threshold", low=0.0, high=1.0, low_open=True)  # type: ignore[return-value]


def _check_strategy(strategy: object) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {list(STRATEGIES)}, got {strategy!r}")


def _check_strategies(strategies: object) -> Tuple[str, ...]:
    if isinstance(strategies, str):
        strategies = (strategies,)
    try:
        out = tuple(strategies)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"strategies: expected a sequence of {list(STRATEGIES)}, got {strategies!r}"
        ) from None
    if not out:
        raise ValueError("strategies: expected at least one strategy, got none")
    for s in out:
        _check_strategy(s)
    return tuple(dict.fromkeys(out))
