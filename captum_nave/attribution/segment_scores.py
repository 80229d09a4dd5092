"""How much of an attribution map falls into each NAVE segment, and what ablating a segment does.

* :func:`segment_relevance` splits a pixel attribution map (Grad-CAM, IG, LRP, ...)
  over the segments of a label map: per image and segment, its area share and its
  positive, negative and absolute relevance mass and share, and the density
  (absolute relevance share / area share; 1 = as much relevance as area, > 1 = the
  segment is more relevant than its size). Everything is computed in float64, and the
  per-segment masses add up to the map's totals.
* :func:`segment_importance` measures each segment by perturbation with Captum's
  ``FeatureAblation`` (the drop of the target score when the segment is replaced by the
  baseline) or ``ShapleyValueSampling`` (its sampled Shapley value), using the NAVE map
  as ``feature_mask``.
"""

from __future__ import annotations

import csv
import math
import os
from numbers import Integral, Real
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_nave.adapters import logits_function

from captum_nave._validation import check_images, check_int, check_seed, model_float_dtype
from .registry import TargetLike, _forward_args, _Guard, resolve_target

__all__ = ["SegmentRelevanceTable", "segment_relevance", "segment_importance"]

#: Column order of :class:`SegmentRelevanceTable` rows.
COLUMNS: List[str] = [
    "image",
    "image_name",
    "method",
    "segment",
    "pixels",
    "area_share",
    "positive",
    "negative",
    "absolute",
    "net",
    "positive_share",
    "negative_share",
    "absolute_share",
    "density",
]

_MASSES = ("pixels", "positive", "negative", "absolute", "net")


class SegmentRelevanceTable:
    """Per-image, per-segment relevance of one or more attribution maps.

    Attributes
    ----------
    rows : list of dict
        One dict per (image, segment[, method]) with the keys of :data:`COLUMNS`:
        ``image`` (index in the batch), ``image_name``, ``method`` (or None),
        ``segment`` (id), ``pixels``, ``area_share``, ``positive`` (sum of the positive
        values, >= 0), ``negative`` (sum of the negative values, <= 0), ``absolute``
        (sum of ``|value|``), ``net`` (sum of the values), ``positive_share`` /
        ``negative_share`` / ``absolute_share`` (fraction of the image's total of that
        mass; NaN when the total is 0) and ``density`` (``absolute_share /
        area_share``). Rows are ordered by image, then segment id.
    totals : list of dict
        One dict per (image[, method]): ``image``, ``image_name``, ``method`` and the
        map totals ``pixels``, ``positive``, ``negative``, ``absolute``, ``net``.
    """

    def __init__(self, rows: List[Dict[str, Any]], totals: List[Dict[str, Any]]) -> None:
        self.rows = rows
        self.totals = totals

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.rows)

    def __repr__(self) -> str:
        images = len({r["image"] for r in self.rows})
        return f"SegmentRelevanceTable({len(self.rows)} rows, {images} images)"

    def column(self, name: str) -> List[Any]:
        """Values of one column, in row order."""
        if name not in COLUMNS:
            raise ValueError(f"name: expected one of {', '.join(COLUMNS)}, got {name!r}")
        return [r[name] for r in self.rows]

    def for_image(self, i: int) -> "SegmentRelevanceTable":
        """The rows (and totals) of image ``i`` only."""
        if isinstance(i, bool) or not isinstance(i, Integral):
            raise TypeError(f"i: expected an int image index, got {type(i).__name__}")
        present = sorted({r["image"] for r in self.totals})
        if int(i) not in present:
            raise ValueError(f"i: expected an image index in {present}, got {i}")
        return SegmentRelevanceTable(
            [r for r in self.rows if r["image"] == i], [t for t in self.totals if t["image"] == i]
        )

    def for_method(self, method: str) -> "SegmentRelevanceTable":
        """The rows (and totals) of one method (see :meth:`concat`)."""
        methods = sorted({str(t["method"]) for t in self.totals})
        if method not in methods:
            raise ValueError(f"method: expected one of {methods}, got {method!r}")
        return SegmentRelevanceTable(
            [r for r in self.rows if r["method"] == method], [t for t in self.totals if t["method"] == method]
        )

    @staticmethod
    def concat(tables: Sequence["SegmentRelevanceTable"]) -> "SegmentRelevanceTable":
        """One table with the rows of several (e.g. one per method), in the given order."""
        if not all(isinstance(t, SegmentRelevanceTable) for t in tables):
            raise TypeError("tables: expected a sequence of SegmentRelevanceTable")
        return SegmentRelevanceTable(
            [r for t in tables for r in t.rows], [s for t in tables for s in t.totals]
        )

    # ----------------------------------------------------------------- export
    def to_csv(self, path: Union[str, "os.PathLike[str]"]) -> str:
        """Write the rows as CSV (header = :data:`COLUMNS`, floats with full precision).

        A share whose total is 0 (``negative_share`` of a non-negative map such as
        Grad-CAM: there is no negative relevance to share) is NaN in :attr:`rows` and an
        empty cell in the file, as are missing names. Written atomically
        (:func:`captum_nave.files.atomic_write`).

        Returns
        -------
        str
            The path written.
        """
        from captum_nave.files import atomic_write

        def cell(v: Any) -> Any:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return ""
            return repr(v) if isinstance(v, float) else v

        path = os.fspath(path)
        with atomic_write(path, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: cell(r[k]) for k in COLUMNS})
        return path

    def to_markdown(self, digits: int = 4) -> str:
        """A GitHub-flavoured Markdown table of the rows (columns that are all empty omitted)."""
        digits = check_int(digits, "digits", low=0)
        cols = [c for c in COLUMNS if any(r[c] is not None for r in self.rows)] or COLUMNS

        def fmt(v: Any) -> str:
            if v is None:
                return ""
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.{digits}g}"
            return str(v).replace("|", "\\|")

        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in self.rows]
        return "\n".join(lines)


def _share(part: float, total: float) -> float:
    return part / total if total != 0 else float("nan")


def _check_maps(segments: Any, attributions: Any) -> None:
    if not isinstance(segments, Tensor):
        raise TypeError(f"segments: expected a LongTensor of shape (N, 1, H, W), got {type(segments).__name__}")
    if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool:
        raise TypeError(f"segments: expected integer segment ids, got dtype {segments.dtype}")
    if segments.dim() != 4 or segments.shape[1] != 1 or segments.shape[0] == 0:
        raise ValueError(f"segments: expected shape (N, 1, H, W) with N >= 1, got {tuple(segments.shape)}")
    if segments.numel() and int(segments.min()) < 0:
        raise ValueError(f"segments: expected non-negative segment ids, got minimum {int(segments.min())}")
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions: expected a float Tensor of shape (N, 1, H, W), got {type(attributions).__name__}")
    if not attributions.is_floating_point():
        raise TypeError(f"attributions: expected a floating point tensor, got dtype {attributions.dtype}")
    if tuple(attributions.shape) != tuple(segments.shape):
        raise ValueError(
            f"attributions: expected the segments' shape {tuple(segments.shape)} (N, 1, H, W), "
            f"got {tuple(attributions.shape)}"
        )
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions: expected finite values, got NaN or inf")


def segment_relevance(
    segments: Tensor,
    attributions: Tensor,
    *,
    method: Optional[str] = None,
    image_names: Optional[Sequence[str]] = None,
) -> SegmentRelevanceTable:
    """Split attribution maps over the segments of label maps.

    Parameters
    ----------
    segments : LongTensor of shape (N, 1, H, W)
        Segment ids >= 0 (e.g. ``LayerClusterExplainer.attribute``); only the ids present
        in an image get a row.
    attributions : Tensor of shape (N, 1, H, W), floating point
        Pixel relevance (e.g. ``attribute(...).maps``), finite.
    method : str, optional
        Stored in the ``method`` column (to combine several methods with
        :meth:`SegmentRelevanceTable.concat`).
    image_names : sequence of N str, optional
        Stored in the ``image_name`` column.

    Returns
    -------
    SegmentRelevanceTable

    Examples
    --------
    >>> seg = torch.tensor([[[[0, 0], [1, 1]]]])
    >>> rel = torch.tensor([[[[3.0, -1.0], [0.5, 0.5]]]])
    >>> t = segment_relevance(seg, rel)
    >>> [(r["segment"], r["positive"], r["negative"], r["absolute_share"]) for r in t.rows]
    [(0, 3.0, -1.0, 0.8), (1, 1.0, 0.0, 0.2)]
    """
    _check_maps(segments, attributions)
    n = segments.shape[0]
    if image_names is not None:
        if isinstance(image_names, str) or len(image_names) != n:
            raise ValueError(f"image_names: expected {n} names (one per image), got {image_names!r}")
    if method is not None and not isinstance(method, str):
        raise TypeError(f"method: expected a str or None, got {type(method).__name__}")
    seg = segments.detach().to("cpu", torch.long).reshape(n, -1)
    val = attributions.detach().to("cpu", torch.float64).reshape(n, -1)
    rows: List[Dict[str, Any]] = []
    totals: List[Dict[str, Any]] = []
    for i in range(n):
        s, v = seg[i], val[i]
        k = int(s.max()) + 1
        pos_v, neg_v = v.clamp(min=0), v.clamp(max=0)
        sums = {
            "pixels": torch.bincount(s, minlength=k),
            "positive": torch.bincount(s, weights=pos_v, minlength=k),
            "negative": torch.bincount(s, weights=neg_v, minlength=k),
            "absolute": torch.bincount(s, weights=v.abs(), minlength=k),
            "net": torch.bincount(s, weights=v, minlength=k),
        }
        tot = {
            "pixels": int(s.numel()),
            "positive": float(pos_v.sum()),
            "negative": float(neg_v.sum()),
            "absolute": float(v.abs().sum()),
            "net": float(v.sum()),
        }
        name = str(image_names[i]) if image_names is not None else None
        totals.append({"image": i, "image_name": name, "method": method, **tot})
        for seg_id in range(k):
            pixels = int(sums["pixels"][seg_id])
            if pixels == 0:
                continue
            pos = float(sums["positive"][seg_id])
            neg = float(sums["negative"][seg_id])
            ab = float(sums["absolute"][seg_id])
            area = pixels / tot["pixels"]
            abs_share = _share(ab, tot["absolute"])
            rows.append({
                "image": i,
                "image_name": name,
                "method": method,
                "segment": seg_id,
                "pixels": pixels,
                "area_share": area,
                "positive": pos,
                "negative": neg,
                "absolute": ab,
                "net": float(sums["net"][seg_id]),
                "positive_share": _share(pos, tot["positive"]),
                "negative_share": _share(neg, tot["negative"]),
                "absolute_share": abs_share,
                "density": abs_share / area,
            })
    return SegmentRelevanceTable(rows, totals)


# --------------------------------------------------------------------------- perturbation
def segment_importance(
    model: Union[nn.Module, Any],
    inputs: Tensor,
    segments: Tensor,
    target: TargetLike = "auto",
    *,
    method: str = "ablation",
    baselines: Union[float, Tensor] = 0.0,
    n_samples: int = 25,
    perturbations_per_eval: int = 1,
    random_state: Optional[int] = 0,
    additional_forward_args: Any = None,
) -> Tensor:
    """Importance of each segment for the target score, by perturbing whole segments.

    Parameters
    ----------
    model : nn.Module or callable returning (N, K) scores
        Never modified (mode, ``requires_grad``, buffers restored).
    inputs : Tensor of shape (N, C, H, W)
    segments : LongTensor of shape (N, 1, H, W)
        Segment ids >= 0, used as Captum's ``feature_mask`` (shared over channels).
    target : "auto", None, int, sequence of int or integer Tensor
        Class per image; ``"auto"``: the predicted class.
    method : {"ablation", "shapley"}
        ``"ablation"``: Captum ``FeatureAblation``, score = ``F(x) - F(x with the
        segment set to the baseline)``. ``"shapley"``: Captum ``ShapleyValueSampling``
        with ``n_samples`` random segment orderings.
    baselines : float or Tensor broadcastable to (N, C, H, W), default 0
        Replacement values of an ablated segment.
    n_samples : int, default 25
        Orderings for ``"shapley"``.
    perturbations_per_eval : int, default 1
        Perturbed copies evaluated per forward pass (Captum).
    random_state : int or None, default 0
        Seed of the Shapley orderings (the global torch RNG is left as it was).
    additional_forward_args : any, optional

    Returns
    -------
    Tensor of shape (N, K), float
        ``K = segments.max() + 1``; entry ``[i, k]`` is the score of segment ``k`` of image
        ``i``, NaN when image ``i`` has no segment ``k``.
    """
    from captum.attr import FeatureAblation, ShapleyValueSampling

    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    inputs = check_images(inputs, "inputs", dtype=model_float_dtype(model))
    _check_maps(segments, torch.zeros(segments.shape) if isinstance(segments, Tensor) else segments)
    if segments.shape[0] != inputs.shape[0] or segments.shape[-2:] != inputs.shape[-2:]:
        raise ValueError(
            f"segments: expected shape ({inputs.shape[0]}, 1, {inputs.shape[2]}, {inputs.shape[3]}) "
            f"to match the inputs, got {tuple(segments.shape)}"
        )
    if method not in ("ablation", "shapley"):
        raise ValueError(f"method: expected 'ablation' or 'shapley', got {method!r}")
    n_samples = check_int(n_samples, "n_samples", low=1)
    perturbations_per_eval = check_int(perturbations_per_eval, "perturbations_per_eval", low=1)
    random_state = check_seed(random_state, allow_generator=False)
    if isinstance(baselines, bool) or not isinstance(baselines, (Real, Tensor)):
        raise TypeError(f"baselines: expected a number or a Tensor, got {type(baselines).__name__}")
    if isinstance(baselines, Tensor):
        try:
            torch.broadcast_shapes(baselines.shape, inputs.shape)
        except RuntimeError:
            raise ValueError(
                f"baselines: expected a tensor broadcastable to {tuple(inputs.shape)}, got {tuple(baselines.shape)}"
            ) from None
    module = model if isinstance(model, nn.Module) else None
    forward = logits_function(model)
    x = inputs.detach()
    mask = segments.detach().to(device=x.device, dtype=torch.long)
    with _Guard(module):
        with torch.no_grad():
            logits = forward(x, *_forward_args(additional_forward_args))
        t = resolve_target(target, logits)
        if method == "ablation":
            attr = FeatureAblation(forward).attribute(
                x, baselines=baselines, target=t, additional_forward_args=additional_forward_args,
                feature_mask=mask, perturbations_per_eval=int(perturbations_per_eval),
            )
        else:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                if random_state is not None:
                    torch.manual_seed(int(random_state))
                attr = ShapleyValueSampling(forward).attribute(
                    x, baselines=baselines, target=t, additional_forward_args=additional_forward_args,
                    feature_mask=mask, n_samples=int(n_samples),
                    perturbations_per_eval=int(perturbations_per_eval), show_progress=False,
                )
    # every pixel of a segment carries the segment's score: read it back per segment
    n = x.shape[0]
    k = int(mask.max()) + 1
    flat_ids = mask[:, 0].reshape(n, -1).cpu()
    flat_val = attr.detach()[:, 0].reshape(n, -1).to("cpu", torch.float64)
    out = torch.full((n, k), float("nan"), dtype=torch.float64)
    for i in range(n):
        counts = torch.bincount(flat_ids[i], minlength=k)
        sums = torch.bincount(flat_ids[i], weights=flat_val[i], minlength=k)
        present = counts > 0
        out[i, present] = sums[present] / counts[present]
    return out.to(inputs.dtype)
