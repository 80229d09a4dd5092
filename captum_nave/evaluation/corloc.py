"""The paper's object-extraction proxy task: segment selection and CorLoc.

A segmentation (NAVE clusters, SLIC superpixels, a grid, ...) is turned into
candidate boxes and scored against ground-truth boxes as in the authors'
evaluation script (Boubekki et al., arXiv 2411.19700, Sec. 4.2 and Appendix A;
``Ahcene-B/VOC_eval``, ``main_nave.py``):

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
   correctly localised when it reaches ``iou_threshold`` (0.5). CorLoc is the
   fraction of correctly localised images. An image where no component
   survives steps 3-4 is a miss (the authors' script crashes there); runners
   report how many there were.

The details that decide whether numbers are comparable with the paper's are
set by ``conventions`` (:class:`CorLocProtocol`):

==========================  =====================================  ==============================
detail                      ``"authors"`` (default)                ``"clean"`` (captum-nave 0.1)
==========================  =====================================  ==============================
inner-box centre            median truncated to an int             float median
IoU                         float32, ``eps = 1e-7`` (LOST's        exact float64
                            ``bbox_iou``)
hit, inner strategy         ``iou > iou_threshold`` (strict)       ``iou >= iou_threshold``
hit, outer strategy         ``iou >= iou_threshold``               ``iou >= iou_threshold``
ties, inner strategy        argmax of the (n_gt, n_components)     first maximum over
                            IoU matrix: first GT box, then first   (n_components, n_gt): first
                            component                              component, then first GT box
ties, outer strategy        first component with the best IoU      same
                            over all GT boxes, then first GT box
==========================  =====================================  ==============================

Components are ordered by cluster id and, within a cluster, by the
raster-scan order of their first pixel (as ``np.unique`` + ``skimage.measure.label``
in the authors' script); ground-truth boxes keep the dataset order.

The authors' current HEAD clips the inner box with the image tensor's
``(C, H, W)`` shape read as ``(H, W)``, which gives nearly every inner box zero
height and an inner-box IoU of 0: the paper's inner-box numbers cannot come
from it. ``"authors"`` follows their previous, working commit (see
:func:`~captum_nave.evaluation.boxes.inner_box`). With a ``border`` of 0 their
slicing (``cc[:, :, -0:] = 0``) would zero every mask; here 0 means no border.
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

from .boxes import CONVENTIONS, as_boxes, authors_box_iou, box_iou, check_conventions, inner_box, outer_box

__all__ = [
    "STRATEGIES",
    "CONVENTIONS",
    "Component",
    "Selection",
    "CorLocProtocol",
    "as_protocol",
    "box_iou",
    "authors_box_iou",
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
DEFAULT_CONVENTIONS = "authors"

LabelLike = Union[np.ndarray, torch.Tensor]


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
    conventions: str = DEFAULT_CONVENTIONS,
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
    conventions : {"authors", "clean"}, default "authors"
        How the inner box is centred (:func:`~captum_nave.evaluation.boxes.inner_box`).

    Returns
    -------
    components : list of Component
        Ordered by cluster id, then by raster order of each component's first pixel.
    """
    lab = as_label_map(labels)
    _check_nonneg_int(min_area, "min_area")
    _check_nonneg_int(border, "border")
    check_conventions(conventions)
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
                    inner_box=inner_box(ys, xs, height, width, conventions=conventions),
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
        The reported IoU reaches the threshold (``>`` for the inner strategy
        with the authors' conventions, ``>=`` otherwise).
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
    conventions: str = DEFAULT_CONVENTIONS,
) -> Selection:
    """Oracle selection of one component (steps 6-7 of the protocol).

    Parameters
    ----------
    components : sequence of Component
        Candidates, e.g. from :func:`extract_components` (with the same ``conventions``).
    gt_boxes : array-like of shape (M, 4), M >= 1
        Ground-truth boxes ``(x_min, y_min, x_max, y_max)`` in image pixels.
    strategy : {"inner", "outer"}, default "inner"
        Which box of each component competes for the best IoU.
    iou_threshold : float, default 0.5
        CorLoc threshold on the reported IoU.
    conventions : {"authors", "clean"}, default "authors"
        ``"authors"``: float32 IoU with ``eps = 1e-7``; inner strategy: argmax of
        the (n_gt, n_components) IoU matrix (first GT box, then first component)
        and a hit needs ``iou > iou_threshold``; outer strategy: the first
        component with the best IoU over all GT boxes, a hit needs
        ``iou >= iou_threshold``. ``"clean"``: float64 IoU, first maximum over
        (n_components, n_gt), ``>=`` for both strategies.

    Returns
    -------
    Selection
        With ``component == -1`` and ``iou == 0`` when there is no candidate.
    """
    _check_strategy(strategy)
    check_conventions(conventions)
    gt = as_boxes(gt_boxes, "gt_boxes")
    if gt.shape[0] == 0:
        raise ValueError("gt_boxes: at least one ground-truth box is needed, got 0")
    _check_threshold(iou_threshold)
    if len(components) == 0:
        return Selection(strategy, -1, -1, None, None, 0.0, -1, 0.0, False, 0)
    cand = np.stack([c.box(strategy) for c in components])
    if conventions == "authors":
        ious = authors_box_iou(gt, cand)  # (n_gt, n_components), float32
        if strategy == "inner":
            gi, ci = divmod(int(np.argmax(ious)), len(components))  # first GT, then component
        else:
            ci = int(np.argmax(ious.max(axis=0)))  # first component with the best IoU
            gi = int(np.argmax(ious[:, ci]))
        selection_iou = float(ious[gi, ci])
        reported = float(authors_box_iou(components[ci].outer_box, gt[gi])[0, 0])
        correct = reported > iou_threshold if strategy == "inner" else reported >= iou_threshold
    else:
        ious = box_iou(cand, gt)  # (n_components, n_gt), float64
        ci, gi = divmod(int(np.argmax(ious)), gt.shape[0])  # first component, then GT
        selection_iou = float(ious[ci, gi])
        reported = float(box_iou(components[ci].outer_box, gt[gi])[0, 0])
        correct = reported >= iou_threshold
    chosen = components[ci]
    return Selection(
        strategy=strategy,
        component=ci,
        cluster=chosen.cluster,
        selection_box=tuple(float(v) for v in chosen.box(strategy)),  # type: ignore[arg-type]
        outer_box=tuple(float(v) for v in chosen.outer_box),  # type: ignore[arg-type]
        selection_iou=selection_iou,
        gt_index=gi,
        iou=reported,
        correct=bool(correct),
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
        CorLoc threshold. With ``conventions="authors"`` an IoU exactly equal to
        it is a miss for the inner strategy and a hit for the outer one (as the
        authors' script: ``iou > 0.5`` / ``iou >= 0.5``); with ``"clean"`` it is
        a hit for both.
    connectivity : {4, 8}, default 4
        Connectivity of the components.
    conventions : {"authors", "clean"}, default "authors"
        ``"authors"``: the authors' script exactly, so that numbers are
        comparable with the paper's: inner box centred on the int-truncated
        median, float32 IoU with ``eps = 1e-7``, ties broken by the argmax of
        the (n_gt, n_components) IoU matrix for the inner strategy, ``>`` for
        the inner and ``>=`` for the outer strategy. ``"clean"``: the float
        conventions of captum-nave 0.1 (float median, float64 IoU, first
        maximum over (n_components, n_gt), ``>=`` for both). See the module
        docstring for the table, and for the bug of the authors' current HEAD.

    Examples
    --------
    >>> protocol = CorLocProtocol()                     # the paper's, the authors' conventions
    >>> sel = protocol.evaluate(labels, gt_boxes)       # labels: (H, W) ints
    >>> sel["inner"].correct, sel["outer"].iou
    >>> CorLocProtocol(conventions="clean").evaluate(labels, gt_boxes)
    """

    min_area: int = DEFAULT_MIN_AREA
    border: int = DEFAULT_BORDER
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    connectivity: int = DEFAULT_CONNECTIVITY
    conventions: str = DEFAULT_CONVENTIONS

    def __post_init__(self) -> None:
        # plain Python numbers: the protocol is written to JSON with the results
        object.__setattr__(self, "min_area", _check_nonneg_int(self.min_area, "min_area"))
        object.__setattr__(self, "border", _check_nonneg_int(self.border, "border"))
        object.__setattr__(self, "iou_threshold", _check_threshold(self.iou_threshold))
        _structure(self.connectivity)
        object.__setattr__(self, "connectivity", int(self.connectivity))
        check_conventions(self.conventions)

    def to_dict(self) -> Dict[str, object]:
        """Parameters as a plain dict (``conventions`` included)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, params: Dict[str, object]) -> "CorLocProtocol":
        """Inverse of :meth:`to_dict`.

        Dicts written by captum-nave 0.1 have no ``conventions``: they were
        computed with what is now ``conventions="clean"``, which is filled in.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict of protocol parameters, got {type(params).__name__}")
        return cls(**{"conventions": "clean", **params})  # type: ignore[arg-type]

    def describe(self) -> str:
        """One sentence saying how a hit is counted, for table captions."""
        p = self.iou_threshold
        if self.conventions == "authors":
            rule = (f"IoU > {p} (inner strategy, strict) or >= {p} (outer strategy), float32 IoU "
                    "with eps 1e-7, inner boxes centred on the int-truncated median, ties to the "
                    "first ground-truth box: the authors' conventions")
        else:
            rule = (f"IoU >= {p}, float64 IoU, inner boxes centred on the float median, ties to "
                    "the first component: the clean conventions of captum-nave 0.1")
        return (f"protocol {self.conventions!r}: a hit is {rule} (min_area={self.min_area}, "
                f"border={self.border}, connectivity={self.connectivity})")

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
            lab,
            min_area=self.min_area,
            border=self.border,
            connectivity=self.connectivity,
            conventions=self.conventions,
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
            s: select_component(
                comps, gt_boxes, s, iou_threshold=self.iou_threshold, conventions=self.conventions
            )
            for s in strategies
        }


def as_protocol(protocol: object, name: str = "protocol") -> CorLocProtocol:
    """``None`` -> the paper's protocol; ``"authors"`` / ``"clean"`` -> the paper's
    constants with those conventions; a :class:`CorLocProtocol` is returned as is."""
    if protocol is None:
        return CorLocProtocol()
    if isinstance(protocol, CorLocProtocol):
        return protocol
    if isinstance(protocol, str):
        if protocol not in CONVENTIONS:
            raise ValueError(f"{name}: expected one of {list(CONVENTIONS)} or a CorLocProtocol, got {protocol!r}")
        return CorLocProtocol(conventions=protocol)
    raise TypeError(
        f"{name}: expected a CorLocProtocol or one of {list(CONVENTIONS)}, got {type(protocol).__name__}"
    )


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
