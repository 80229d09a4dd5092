"""The authors' CorLoc conventions written out plainly, and generated test cases (tests only).

``authors_reference`` re-implements, step by step and independently of
``captum_nave.evaluation``, what the authors' evaluation script
(``Ahcene-B/VOC_eval``, ``main_nave.py``, working version; LOST's ``bbox_iou``)
does with one label map and its ground-truth boxes:

* components: one mask per cluster id (``np.unique`` order), 4-connected
  components by ``skimage.measure.label(connectivity=1)`` (raster order),
  kept when ``area > min_area``, then a ``border`` frame zeroed and empty
  components dropped (``get_CC``);
* outer box: min / max of the remaining pixel indices;
* inner box (``--centered_boxes``): ``xs = int(np.median(x))``,
  ``xd = int(min(|xs - xmin|, |xs - xmax|))`` (same for y), clipped to
  ``[0, W]`` / ``[0, H]`` of the map;
* IoU: ``bbox_iou`` on int64 boxes, i.e. float32 arithmetic with
  ``eps = 1e-7`` added to both heights and to the union;
* inner strategy: ``all_ious`` of shape ``(n_gt, n_cc)``, flat argmax (first
  ground-truth box wins, then first component); reported IoU = outer box of
  that component with that ground-truth box; hit when ``iou > 0.5``;
* outer strategy: per component the best IoU over the ground truth,
  ``np.argmax`` over components; hit when ``iou >= 0.5``;
* no surviving component: their script crashes; here a miss (component -1).

``generate_cases`` draws label maps (block grids resized by integer and
non-integer factors, painted objects, thin 2-row bars, mirrored twins),
image sizes that are not patch multiples, ground-truth boxes at the border,
boxes leaving the image, boxes at IoU exactly 0.5 and ties. A case is a small
JSON-able dict; ``render`` turns it into the label map (plain numpy).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

EPS32 = np.float32(1e-7)


# --------------------------------------------------------------------------- authors
def authors_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """LOST's ``bbox_iou(box1, box2)`` with int64 inputs: float32 result of shape (n,).

    Written with numpy float32 scalars in the order of the torch expression
    ``inter / (w1 * (h1 + eps) + w2 * (h2 + eps) - inter + eps)``; for integer
    coordinates (below 2**24) every float32 value equals torch's int64 -> float32
    promotion of the same quantity.
    """
    out = np.zeros(len(gts), dtype=np.float32)
    b = [np.float32(v) for v in box]
    for i, g in enumerate(gts):
        g = [np.float32(v) for v in g]
        iw = max(min(b[2], g[2]) - max(b[0], g[0]), np.float32(0))
        ih = max(min(b[3], g[3]) - max(b[1], g[1]), np.float32(0))
        inter = np.float32(iw * ih)
        w1, h1 = b[2] - b[0], (b[3] - b[1]) + EPS32
        w2, h2 = g[2] - g[0], (g[3] - g[1]) + EPS32
        union = np.float32(np.float32(np.float32(w1 * h1) + np.float32(w2 * h2)) - inter) + EPS32
        out[i] = np.float32(inter / union)
    return out


def authors_components(labels: np.ndarray, min_area: int, border: int) -> List[np.ndarray]:
    """``get_CC``: boolean masks of the surviving components, in the script's order."""
    from skimage import measure

    h, w = labels.shape
    out = []
    for k in np.unique(labels):
        mc = measure.label((labels == k).astype(np.uint8), connectivity=1)
        for j in range(1, int(mc.max()) + 1):
            m = mc == j
            if m.sum() > min_area:
                out.append(m)
    kept = []
    for m in out:
        m = m.copy()
        if border > 0:  # the script's fixed 14; ``[-0:]`` would zero everything, not meant
            m[:, :border] = False
            m[:, w - border:] = False
            m[:border, :] = False
            m[h - border:, :] = False
        if m.sum() > 0:
            kept.append(m)
    return kept


def authors_boxes(mask: np.ndarray) -> Tuple[List[int], List[int]]:
    """(outer, inner) boxes ``[xmin, ymin, xmax, ymax]`` of one component, as the script."""
    nnz = mask.nonzero()
    outer = [int(nnz[1].min()), int(nnz[0].min()), int(nnz[1].max()), int(nnz[0].max())]
    xs = int(np.median(nnz[1]))
    ys = int(np.median(nnz[0]))
    xd = int(np.min([np.abs(xs - nnz[1].min()), np.abs(xs - nnz[1].max())]))
    yd = int(np.min([np.abs(ys - nnz[0].min()), np.abs(ys - nnz[0].max())]))
    inner = [
        int(np.clip(xs - xd, 0, mask.shape[1])),
        int(np.clip(ys - yd, 0, mask.shape[0])),
        int(np.clip(xs + xd, 0, mask.shape[1])),
        int(np.clip(ys + yd, 0, mask.shape[0])),
    ]
    return outer, inner


def authors_reference(
    labels: np.ndarray, gt: np.ndarray, min_area: int, border: int, threshold: float = 0.5
) -> Dict[str, Dict[str, Any]]:
    """Per strategy: component index, ground-truth index, reported IoU and hit."""
    gt = np.asarray(gt)
    masks = authors_components(labels, min_area, border)
    n_cc = len(masks)
    res: Dict[str, Dict[str, Any]] = {}
    if n_cc == 0:
        for s in ("inner", "outer"):
            res[s] = {"component": -1, "gt_index": -1, "iou": 0.0, "correct": False, "n_components": 0}
        return res
    boxes = [authors_boxes(m) for m in masks]
    # inner (--centered_boxes): (n_gt, n_cc) matrix, flat argmax
    all_ious = np.zeros((len(gt), n_cc), dtype=np.float32)
    for ic in range(n_cc):
        all_ious[:, ic] = authors_iou(np.array(boxes[ic][1]), gt)
    ax = int(all_ious.argmax())
    ib, ic = ax // n_cc, ax % n_cc
    iou = float(authors_iou(np.array(boxes[ic][0]), gt[ib][None])[0])
    res["inner"] = {"component": ic, "gt_index": ib, "iou": iou, "correct": bool(iou > threshold),
                    "n_components": n_cc, "inner_box": boxes[ic][1], "outer_box": boxes[ic][0]}
    # outer (default path): best IoU per component, argmax over components
    ious = np.array([[float(v) for v in authors_iou(np.array(b[0]), gt)] for b in boxes])
    best = ious.max(-1)
    ic = int(np.argmax(best))
    res["outer"] = {"component": ic, "gt_index": int(np.argmax(ious[ic])), "iou": float(best[ic]),
                    "correct": bool(best[ic] >= threshold), "n_components": n_cc,
                    "outer_box": boxes[ic][0]}
    return res


# --------------------------------------------------------------------------- cases
def nearest_floor(grid: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """cv2 INTER_NEAREST: destination pixel d takes source floor(d * src / dst)."""
    gh, gw = grid.shape
    h, w = size
    rows = np.minimum((np.arange(h) * gh) // h, gh - 1)
    cols = np.minimum((np.arange(w) * gw) // w, gw - 1)
    return grid[rows][:, cols]


def render(case: Dict[str, Any]) -> np.ndarray:
    """Label map (H, W) int64 of a case: a resized grid, then painted rectangles."""
    h, w = case["size"]
    lab = nearest_floor(np.asarray(case["grid"], dtype=np.int64), (h, w))
    for k, y0, y1, x0, x1 in case.get("rects", []):
        lab[y0:y1, x0:x1] = k
    return lab


def _rand_box(rng, h: int, w: int, lo: int = 4) -> List[int]:
    bw = int(rng.integers(lo, max(lo + 1, w)))
    bh = int(rng.integers(lo, max(lo + 1, h)))
    x0 = int(rng.integers(0, max(1, w - bw + 1)))
    y0 = int(rng.integers(0, max(1, h - bh + 1)))
    return [x0, y0, x0 + bw, y0 + bh]


def _constants(rng, h: int, w: int) -> Tuple[int, int]:
    if min(h, w) >= 150 and rng.random() < 0.6:
        return 784, 14  # the paper's
    return int(rng.choice([0, 4, 16, 40, 100])), int(rng.choice([0, 1, 2, 3, 5]))


def _jitter(rng, box: List[int], amount: int) -> List[int]:
    return [int(v + rng.integers(-amount, amount + 1)) for v in box]


def generate_case(rng: np.random.Generator, kind: str) -> Dict[str, Any]:
    """One case of ``kind`` in ``KINDS``; see the module docstring."""
    rects: List[List[int]] = []
    gt: List[List[int]] = []
    if kind in ("grid", "outside", "empty"):
        p = int(rng.choice([8, 14, 16]))
        gh, gw = (int(v) for v in rng.integers(3, 12, size=2))
        h, w = gh * p, gw * p
        if rng.random() < 0.4:  # a non-integer resize factor: irregular components
            h, w = h + int(rng.integers(1, p)), w - int(rng.integers(1, p))
        grid = rng.integers(0, int(rng.integers(2, 6)), size=(gh, gw))
        img_h, img_w = h - int(rng.integers(0, p)), w - int(rng.integers(0, p))  # unpadded image
    else:
        h, w = (int(v) for v in rng.integers(40, 260, size=2))
        grid = np.zeros((1, 1), dtype=np.int64)
        img_h, img_w = h, w
    min_area, border = _constants(rng, h, w)
    if kind == "empty":
        min_area = h * w  # nothing survives
    if kind in ("objects", "exact", "ties", "thin"):
        n_obj = int(rng.integers(1, 5))
        for _ in range(n_obj):
            x0, y0, x1, y1 = _rand_box(rng, h, w, lo=6)
            if kind == "thin":
                y1 = y0 + 2  # 2-row bars: outer height 1, where the script's eps shows
            rects.append([int(rng.integers(1, 5)), y0, y1, x0, x1])
            gt.append(_jitter(rng, [x0, y0, x1, y1], int(rng.integers(0, 4))))
        if kind == "ties":  # a mirrored twin of the first object, and duplicated GT
            k, y0, y1, x0, x1 = rects[0]
            rects.append([int(rng.integers(1, 5)), y0, y1, w - x1, w - x0])
            mid = [min(x1, w - x1), y0, max(x0, w - x0), y1]
            gt = [mid, list(gt[0]), list(gt[0])] + gt[1:]
    case: Dict[str, Any] = {
        "kind": kind, "size": [h, w], "image_size": [img_h, img_w], "grid": np.asarray(grid).tolist(),
        "rects": rects, "min_area": int(min_area), "border": int(border),
    }
    masks = authors_components(render(case), min_area, border)
    outers = [authors_boxes(m)[0] for m in masks]
    if kind in ("grid", "outside", "empty"):
        for _ in range(int(rng.integers(1, 4))):
            if outers and rng.random() < 0.6:
                gt.append(_jitter(rng, outers[int(rng.integers(len(outers)))], int(rng.integers(0, 3))))
            else:
                gt.append(_rand_box(rng, img_h, img_w))
    if kind == "outside":  # boxes leaving the image on one or two sides
        for b in gt:
            if rng.random() < 0.5:
                b[0] = -int(rng.integers(1, 6))
            if rng.random() < 0.5:
                b[2] = img_w + int(rng.integers(1, 8))
    if kind in ("exact", "thin") and outers:
        # GT of twice the width of an outer box: IoU exactly 0.5 with that box
        x0, y0, x1, y1 = outers[int(rng.integers(len(outers)))]
        half = [x0, y0, x0 + 2 * (x1 - x0), y1]
        if rng.random() < 0.5:  # alone: the selected component is then often the one at 0.5
            gt = [half]
        else:
            gt.insert(int(rng.integers(0, len(gt) + 1)), half)
    gt = [g for g in gt if g[2] > g[0] and g[3] > g[1]] or [_rand_box(rng, img_h, img_w)]
    case["gt"] = gt
    return case


KINDS = ("grid", "objects", "exact", "ties", "thin", "outside", "empty")


def generate_cases(seed: int, n: int, kinds: Optional[Tuple[str, ...]] = None) -> List[Dict[str, Any]]:
    """``n`` cases cycling through ``kinds`` (default: all)."""
    rng = np.random.default_rng(seed)
    kinds = kinds or KINDS
    return [generate_case(rng, kinds[i % len(kinds)]) for i in range(n)]
