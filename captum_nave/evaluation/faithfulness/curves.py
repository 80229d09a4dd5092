"""Deletion and insertion curves of an attribution map, with their area under the curve.

A faithful map ranks first what the model relies on most. Perturbing the input in
the map's order and recording the target score measures that:

* **deletion** (Samek et al. 2017 "most relevant first", Petsiuk et al. 2018): start
  from the input and replace the highest-ranked pixels (or units) by a baseline,
  step by step; the faster the score falls, the more faithful the map. Lower area
  under the curve (AUC) is better;
* **insertion** (Petsiuk et al. 2018): start from the baseline and put back the
  highest-ranked pixels (or units) of the input; the faster the score rises, the
  better. Higher AUC is better.

``order="least"`` perturbs the least relevant first instead (LeRF): a faithful map then
keeps the score high under deletion.

What is ranked (``units``):

* pixels (``units=None``): every pixel is ranked by the map's value (signed, largest
  first; ties by pixel index). Step ``s`` of ``n_steps`` perturbs the top
  ``round(s * H * W / n_steps)`` pixels;
* units (a label map ``(N, 1, H, W)``: NAVE segments, SLIC superpixels, a grid, see
  :mod:`.units`): every unit is ranked by the map's relevance mass inside it
  (``unit_aggregate="sum"``, default) or by its mean (``"mean"``), or by scores given
  per unit (``unit_scores``, e.g. :func:`captum_nave.attribution.segment_importance`);
  one unit per step (``K_i + 1`` points for an image with ``K_i`` units), or, for an
  image with more than ``n_steps`` units, the top ``round(s * K_i / n_steps)`` units at
  step ``s`` (at most ``n_steps + 1`` forward passes per image either way).

The x-axis of a curve and of its AUC is the fraction of units perturbed (pixels: the
fraction of pixels; the convention of Petsiuk et al. and of Quantus'
``PixelFlipping``). The fraction of the image *area* perturbed at every point is kept
as well (``fractions``), and ``auc(axis="area")`` integrates over it.

Baselines (the value a perturbed pixel takes, all channels):

* ``"blur"`` (default): the input blurred with a Gaussian of ``blur_sigma`` pixels
  (default ``max(H, W) / 10``, as the IG baseline of :mod:`captum_nave.attribution`);
  Petsiuk et al.'s insertion baseline; removes detail, keeps colours;
* ``"mean"``: each image's per-channel mean;
* ``"zeros"``: zero, i.e. the data set mean for normalised inputs;
* a number, or a Tensor broadcastable to the inputs.

The score is the softmax probability of the target class (``output="probability"``,
default) or its logit (``"logit"``). Perturbed copies are evaluated in batches of
``batch_size`` on the inputs' device; the model is never modified.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_nave.adapters import logits_function

__all__ = [
    "BASELINES",
    "MODES",
    "PerturbationCurves",
    "perturbation_baseline",
    "perturbation_curve",
    "pixel_order",
    "unit_order",
    "trapezoid_auc",
]

#: Named baselines of :func:`perturbation_baseline`.
BASELINES: Tuple[str, ...] = ("blur", "mean", "zeros")
#: Curve kinds.
MODES: Tuple[str, ...] = ("deletion", "insertion")
_ORDERS = ("most", "least")
_OUTPUTS = ("probability", "logit")

BaselineLike = Union[str, float, int, Tensor]


# --------------------------------------------------------------------------- result
@dataclass
class PerturbationCurves:
    """Deletion or insertion curves of one attribution map for a batch of images.

    Curves can have different lengths (unit rankings: ``K_i + 1`` points for ``K_i``
    units); shorter rows are padded with NaN.

    Attributes
    ----------
    mode : {"deletion", "insertion"}
    order : {"most", "least"}
        Most relevant first (MoRF) or least relevant first (LeRF).
    ranking : str
        ``"pixels"``, ``"units"`` or ``"unit scores"``.
    scores : Tensor of shape (N, P), float64
        Target score after each step (column 0: nothing perturbed for deletion, the
        baseline for insertion); NaN padding after ``n_points[i]``.
    fractions : Tensor of shape (N, P), float64
        Fraction of the image area perturbed at each point (deletion: replaced by the
        baseline; insertion: taken from the input); NaN padding.
    unit_fractions : Tensor of shape (N, P), float64
        Fraction of the units (pixels) perturbed at each point: the x-axis; NaN padding.
    n_points : LongTensor of shape (N,)
        Points per curve.
    n_units : LongTensor of shape (N,)
        Units ranked per image (``H * W`` for pixels).
    target : LongTensor of shape (N,)
        The class whose score was recorded.
    baseline : str
        The baseline's name (``"tensor"`` / ``"number"`` for user values).
    output : {"probability", "logit"}
    config : dict
        Settings used (``n_steps``, ``blur_sigma``, ``unit_aggregate``, ...).
    """

    mode: str
    order: str
    ranking: str
    scores: Tensor
    fractions: Tensor
    unit_fractions: Tensor
    n_points: Tensor
    n_units: Tensor
    target: Tensor
    baseline: str
    output: str
    config: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def curve(self, i: int, axis: str = "units") -> Tuple[Tensor, Tensor]:
        """``(x, y)`` of image ``i`` without padding; ``axis`` = ``"units"`` or ``"area"``."""
        if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= int(i) < len(self):
            raise ValueError(f"i: expected an image index in [0, {len(self) - 1}], got {i!r}")
        k = int(self.n_points[i])
        x = self._x(axis)[i, :k]
        return x, self.scores[i, :k]

    def auc(self, axis: str = "units") -> Tensor:
        """Area under every curve, (N,) float64, by the trapezoidal rule.

        Parameters
        ----------
        axis : {"units", "area"}
            Integrate over the fraction of units perturbed (default; pixels: fraction of
            pixels) or over the fraction of the image area.
        """
        x = self._x(axis)
        out = torch.empty(len(self), dtype=torch.float64)
        for i in range(len(self)):
            k = int(self.n_points[i])
            out[i] = trapezoid_auc(x[i, :k], self.scores[i, :k])
        return out

    def mean_curve(self, n_grid: int = 101, axis: str = "units") -> Tuple[Tensor, Tensor]:
        """The curves linearly interpolated on ``n_grid`` points of [0, 1] and averaged.

        For display; :meth:`auc` integrates each curve exactly.
        """
        if isinstance(n_grid, bool) or not isinstance(n_grid, Integral) or n_grid < 2:
            raise ValueError(f"n_grid: expected an int >= 2, got {n_grid!r}")
        grid = torch.linspace(0.0, 1.0, int(n_grid), dtype=torch.float64)
        x = self._x(axis)
        ys = []
        for i in range(len(self)):
            k = int(self.n_points[i])
            ys.append(_interp(grid, x[i, :k], self.scores[i, :k]))
        return grid, torch.stack(ys).mean(dim=0)

    def _x(self, axis: str) -> Tensor:
        if axis == "units":
            return self.unit_fractions
        if axis == "area":
            return self.fractions
        raise ValueError(f"axis: expected 'units' or 'area', got {axis!r}")


def _interp(grid: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (x, y) (x non-decreasing) at ``grid``."""
    idx = torch.searchsorted(x.contiguous(), grid, right=True).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
    w = torch.where(x1 > x0, (grid - x0) / (x1 - x0).clamp_min(1e-300), torch.ones_like(grid))
    return y0 + w.clamp(0, 1) * (y1 - y0)


def trapezoid_auc(x: Tensor, y: Tensor) -> float:
    """``sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2`` in float64 (0 for fewer than 2 points)."""
    x = x.detach().to("cpu", torch.float64).reshape(-1)
    y = y.detach().to("cpu", torch.float64).reshape(-1)
    if x.numel() != y.numel():
        raise ValueError(f"x, y: expected the same number of points, got {x.numel()} and {y.numel()}")
    if x.numel() < 2:
        return 0.0
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1])).sum() / 2.0)


# --------------------------------------------------------------------------- checks
def _check_choice(value: Any, choices: Tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value.strip().lower()


def _check_int(value: Any, name: str, low: int) -> int:
    from captum_nave._validation import check_int

    return int(check_int(value, name, low=low))  # type: ignore[arg-type]


def check_inputs(inputs: Any, name: str = "inputs") -> Tensor:
    """A finite float tensor (N, C, H, W) with N >= 1 (:func:`captum_nave._validation.check_images`)."""
    from captum_nave._validation import check_images

    return check_images(inputs, name)


def check_map(maps: Any, inputs: Tensor, name: str = "attributions") -> Tensor:
    """A finite float map (N, 1, H, W) matching the inputs (N, C, H, W)."""
    n, _, h, w = inputs.shape
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name}: expected a float Tensor of shape ({n}, 1, {h}, {w}), got {type(maps).__name__}")
    if tuple(maps.shape) != (n, 1, h, w) or not maps.is_floating_point():
        raise ValueError(
            f"{name}: expected a float tensor of shape ({n}, 1, {h}, {w}) matching the inputs, got "
            f"shape {tuple(maps.shape)} and dtype {maps.dtype}"
        )
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return maps


def check_units(units: Any, inputs: Tensor, name: str = "units") -> Tensor:
    """A non-negative integer label map (N, 1, H, W) matching the inputs."""
    n, _, h, w = inputs.shape
    if not isinstance(units, Tensor):
        raise TypeError(f"{name}: expected a LongTensor of shape ({n}, 1, {h}, {w}), got {type(units).__name__}")
    if units.is_floating_point() or units.is_complex() or units.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer unit ids, got dtype {units.dtype}")
    if tuple(units.shape) != (n, 1, h, w):
        raise ValueError(f"{name}: expected shape ({n}, 1, {h}, {w}) matching the inputs, got {tuple(units.shape)}")
    if int(units.min()) < 0:
        raise ValueError(f"{name}: expected non-negative unit ids, got minimum {int(units.min())}")
    return units


def warn_training(model: Optional[nn.Module]) -> None:
    """Warn when the model is in training mode (dropout and batch statistics make scores random)."""
    if model is not None and model.training:
        warnings.warn(
            "the model is in training mode: dropout and batch statistics make the scores random; "
            "call model.eval() first (the model's state is restored afterwards)",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- baselines
def perturbation_baseline(
    inputs: Tensor, baseline: BaselineLike = "blur", *, blur_sigma: Optional[float] = None
) -> Tensor:
    """The values perturbed pixels take: a Tensor like ``inputs`` (N, C, H, W).

    Parameters
    ----------
    inputs : Tensor of shape (N, C, H, W)
    baseline : "blur", "mean", "zeros", number or Tensor broadcastable to the inputs
        See the module docstring.
    blur_sigma : float, optional
        Standard deviation of the Gaussian blur in pixels (default ``max(H, W) / 10``).
    """
    from captum_nave.attribution.integrated_gradients import make_baseline

    x = check_inputs(inputs).detach()
    if isinstance(baseline, str):
        kind = _check_choice(baseline, BASELINES, "baseline")
        if kind == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
        return make_baseline(x, kind, blur_sigma=blur_sigma)
    if isinstance(baseline, bool) or not isinstance(baseline, (Real, Tensor)):
        raise TypeError(
            f"baseline: expected one of {', '.join(map(repr, BASELINES))}, a number or a Tensor, got "
            f"{type(baseline).__name__}"
        )
    try:
        return make_baseline(x, baseline)
    except ValueError as exc:
        raise ValueError(str(exc).replace("baselines:", "baseline:", 1)) from None


def _baseline_name(baseline: BaselineLike) -> str:
    if isinstance(baseline, str):
        return baseline.strip().lower()
    return "tensor" if isinstance(baseline, Tensor) else "number"


# --------------------------------------------------------------------------- orderings
def pixel_order(attributions: Tensor, order: str = "most") -> Tensor:
    """Rank of every pixel in the perturbation order: LongTensor (N, H, W), 0 = first.

    Pixels are sorted by value (largest first for ``order="most"``, smallest first for
    ``"least"``); ties keep pixel (row-major) order.
    """
    order = _check_choice(order, _ORDERS, "order")
    n, _, h, w = attributions.shape
    v = attributions.detach().reshape(n, h * w)
    idx = torch.sort(v, dim=1, descending=(order == "most"), stable=True).indices
    rank = torch.empty_like(idx)
    rank.scatter_(1, idx, torch.arange(h * w, device=idx.device).expand(n, h * w))
    return rank.reshape(n, h, w)


def unit_order(
    units: Tensor,
    attributions: Optional[Tensor] = None,
    *,
    unit_scores: Optional[Tensor] = None,
    unit_aggregate: str = "sum",
    order: str = "most",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Rank units by relevance and give every pixel its unit's rank.

    Parameters
    ----------
    units : LongTensor of shape (N, 1, H, W)
        Unit ids >= 0 (gaps allowed: only the ids present in an image are ranked).
    attributions : Tensor of shape (N, 1, H, W), optional
        Pixel relevance; a unit's score is its ``sum`` (relevance mass) or ``mean``.
    unit_scores : Tensor of shape (N, K), optional
        Scores per unit id instead (``K > units.max()``; NaN for absent ids), e.g.
        :func:`captum_nave.attribution.segment_importance`.
    unit_aggregate : {"sum", "mean"}
    order : {"most", "least"}

    Returns
    -------
    rank : LongTensor of shape (N, H, W)
        Position of each pixel's unit in the order (0 = perturbed first).
    n_units : LongTensor of shape (N,)
        Units present in each image.
    scores : Tensor of shape (N, K), float64
        The unit scores used (NaN for absent ids).
    """
    order = _check_choice(order, _ORDERS, "order")
    agg = _check_choice(unit_aggregate, ("sum", "mean"), "unit_aggregate")
    n, _, h, w = units.shape
    ids = units.detach().reshape(n, h * w).long()
    k = int(ids.max()) + 1
    counts = torch.zeros(n, k, dtype=torch.float64, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float64))
    present = counts > 0
    if unit_scores is not None:
        if not isinstance(unit_scores, Tensor) or unit_scores.dim() != 2 or unit_scores.shape[0] != n or unit_scores.shape[1] < k:
            got = tuple(unit_scores.shape) if isinstance(unit_scores, Tensor) else type(unit_scores).__name__
            raise ValueError(f"unit_scores: expected a tensor of shape ({n}, K) with K >= {k} (one score per unit id), got {got}")
        scores = unit_scores.detach().to(ids.device, torch.float64)[:, :k].clone()
        if not bool(torch.isfinite(scores[present]).all()):
            raise ValueError("unit_scores: expected finite scores for every unit present in the label map, got NaN or inf")
    else:
        if attributions is None:
            raise ValueError("attributions: expected a map (N, 1, H, W) or unit_scores, got neither")
        vals = attributions.detach().reshape(n, h * w).to(ids.device, torch.float64)
        scores = torch.zeros(n, k, dtype=torch.float64, device=ids.device)
        scores.scatter_add_(1, ids, vals)
        if agg == "mean":
            scores = scores / counts.clamp_min(1)
    key = scores if order == "most" else -scores
    key = torch.where(present, key, torch.full_like(key, float("-inf")))
    sorted_ids = torch.sort(key, dim=1, descending=True, stable=True).indices
    unit_rank = torch.empty_like(sorted_ids)
    unit_rank.scatter_(1, sorted_ids, torch.arange(k, device=ids.device).expand(n, k))
    rank = torch.gather(unit_rank, 1, ids).reshape(n, h, w)
    scores = torch.where(present, scores, torch.full_like(scores, float("nan")))
    return rank, present.sum(dim=1), scores.cpu()


# --------------------------------------------------------------------------- evaluation
def _batch_args(args: Tuple[Any, ...], idx: Tensor, n: int) -> Tuple[Any, ...]:
    """Index tensors whose first dimension is the batch (Captum's convention); keep others."""
    return tuple(a[idx] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in args)


def _as_tuple(args: Any) -> Tuple[Any, ...]:
    if args is None:
        return ()
    return args if isinstance(args, tuple) else (args,)


def score_perturbations(
    model: Any,
    inputs: Tensor,
    baseline: Tensor,
    rank: Tensor,
    thresholds: List[Tensor],
    target: Union[Tensor, Callable[[Tensor], Tensor]],
    *,
    mode: str,
    output: str,
    batch_size: int,
    additional_forward_args: Any = None,
    bar: Any = None,
) -> Tuple[List[Tensor], List[Tensor], Tensor]:
    """Scores and area fractions of every (image, threshold) perturbation.

    Image ``i`` at threshold ``t``: pixels with ``rank[i] < t`` come from ``baseline``
    (deletion) or from the input (insertion), the others from the other tensor.
    ``target`` is a LongTensor (N,) or a function of the first batch's logits returning
    one (to check a user's target without an extra forward pass).

    Returns
    -------
    scores, fractions : lists of N float64 CPU tensors, one value per threshold
    target : LongTensor (N,)
    """
    n = inputs.shape[0]
    args = _as_tuple(additional_forward_args)
    jobs = [(i, int(t)) for i in range(n) for t in thresholds[i].tolist()]
    out_s: List[List[float]] = [[] for _ in range(n)]
    out_f: List[List[float]] = [[] for _ in range(n)]
    hw = rank.shape[1] * rank.shape[2]
    with torch.no_grad():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            idx = torch.tensor([j[0] for j in chunk], device=inputs.device)
            thr = torch.tensor([j[1] for j in chunk], device=inputs.device)
            mask = (rank[idx] < thr[:, None, None])[:, None]  # (B, 1, H, W): perturbed pixels
            if mode == "deletion":
                xp = torch.where(mask, baseline[idx], inputs[idx])
            else:
                xp = torch.where(mask, inputs[idx], baseline[idx])
            logits = model(xp, *_batch_args(args, idx, n))
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise TypeError(
                    f"model: expected the forward pass to return class scores (N, K), got "
                    f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
                )
            if callable(target):
                target = target(logits).to(inputs.device)
            vals = logits.softmax(dim=1) if output == "probability" else logits
            s = vals.gather(1, target[idx][:, None])[:, 0].to("cpu", torch.float64)
            frac = mask.reshape(len(chunk), -1).sum(dim=1).to("cpu", torch.float64) / hw
            for (i, _), sv, fv in zip(chunk, s.tolist(), frac.tolist()):
                out_s[i].append(sv)
                out_f[i].append(fv)
            if bar is not None:
                bar.update(len(chunk))
    return (
        [torch.tensor(v, dtype=torch.float64) for v in out_s],
        [torch.tensor(v, dtype=torch.float64) for v in out_f],
        target,  # type: ignore[return-value]
    )


def _unit_thresholds(k: int, n_steps: int) -> Tensor:
    """Units perturbed at each point: 0..k one by one, or ``round(s k / n_steps)`` for k > n_steps."""
    if k <= n_steps:
        return torch.arange(k + 1)
    s = torch.arange(n_steps + 1)
    return (s * k + n_steps // 2) // n_steps


def _pad(rows: List[Tensor]) -> Tensor:
    p = max(len(r) for r in rows)
    out = torch.full((len(rows), p), float("nan"), dtype=torch.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def perturbation_curve(
    model: Union[nn.Module, Any],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    target: Any = "auto",
    *,
    mode: str = "deletion",
    units: Optional[Tensor] = None,
    unit_scores: Optional[Tensor] = None,
    unit_aggregate: str = "sum",
    order: str = "most",
    n_steps: int = 20,
    baseline: BaselineLike = "blur",
    blur_sigma: Optional[float] = None,
    output: str = "probability",
    batch_size: int = 32,
    additional_forward_args: Any = None,
    progress: bool = False,
) -> PerturbationCurves:
    """Deletion or insertion curve of an attribution map (see the module docstring).

    Parameters
    ----------
    model : nn.Module or callable returning class scores (N, K)
        Used as it is (call ``.eval()`` first); never modified (mode, ``requires_grad``
        and buffers restored).
    inputs : Tensor of shape (N, C, H, W)
        Model inputs (normalised images), on the model's device.
    attributions : Tensor of shape (N, 1, H, W), optional
        The map ranked (e.g. ``attribute(...).maps``); not needed with ``unit_scores``.
    target : "auto", None, int, sequence of int or integer Tensor (N,)
        The class whose score is recorded; ``"auto"``: the prediction on ``inputs``.
    mode : {"deletion", "insertion"}
    units : LongTensor of shape (N, 1, H, W), optional
        Rank units (segments, superpixels, grid cells) instead of pixels.
    unit_scores : Tensor of shape (N, K), optional
        Scores per unit id (needs ``units``); replaces the map's relevance mass.
    unit_aggregate : {"sum", "mean"}, default "sum"
        A unit's score: its relevance mass or its mean relevance.
    order : {"most", "least"}, default "most"
        Perturb the most relevant first (MoRF) or the least relevant first (LeRF).
    n_steps : int, default 20
        Number of steps (``n_steps + 1`` points); a unit ranking takes one step per
        unit when an image has at most ``n_steps`` units.
    baseline : "blur", "mean", "zeros", number or Tensor, default "blur"
    blur_sigma : float, optional
        For ``baseline="blur"``; default ``max(H, W) / 10``.
    output : {"probability", "logit"}, default "probability"
    batch_size : int, default 32
        Perturbed images per forward pass.
    additional_forward_args : any, optional
        Extra model arguments; tensors whose first dimension is N are indexed with the
        batch, others are passed unchanged.
    progress : bool, default False
        Show a tqdm progress bar over forward passes.

    Returns
    -------
    PerturbationCurves

    Examples
    --------
    >>> from captum_nave.attribution import attribute
    >>> from captum_nave.evaluation.faithfulness import perturbation_curve
    >>> maps = attribute("gradcam", model, x).maps
    >>> deletion = perturbation_curve(model, x, maps, mode="deletion", baseline="blur")
    >>> deletion.auc()                               # (N,), lower is better
    >>> ins = perturbation_curve(model, x, maps, mode="insertion", units=seg)   # NAVE segments
    """
    from captum_nave.activations import preserve_model_state
    from captum_nave.attribution.registry import resolve_target

    x = check_inputs(inputs).detach()
    mode = _check_choice(mode, MODES, "mode")
    output = _check_choice(output, _OUTPUTS, "output")
    order = _check_choice(order, _ORDERS, "order")
    n_steps = _check_int(n_steps, "n_steps", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    from captum_nave._validation import check_bool

    check_bool(progress, "progress")
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    if unit_scores is not None and units is None:
        raise ValueError("unit_scores: scores per unit need units= (a label map), got units=None")
    if attributions is not None:
        check_map(attributions, x)
    elif unit_scores is None:
        raise ValueError("attributions: expected a map (N, 1, H, W) (or units= with unit_scores=), got None")
    n, _, h, w = x.shape
    base = perturbation_baseline(x, baseline, blur_sigma=blur_sigma)
    if units is not None:
        check_units(units, x)
        rank, n_units, used_scores = unit_order(
            units.to(x.device), attributions, unit_scores=unit_scores, unit_aggregate=unit_aggregate, order=order
        )
        counts = n_units.tolist()
        thresholds = [_unit_thresholds(int(k), n_steps) for k in counts]
        ranking = "unit scores" if unit_scores is not None else "units"
    else:
        rank = pixel_order(attributions, order).to(x.device)  # type: ignore[arg-type]
        thresholds = [_unit_thresholds(h * w, n_steps)] * n
        counts = [h * w] * n
        ranking = "pixels"
        used_scores = None
    module = model if isinstance(model, nn.Module) else None
    warn_training(module)
    forward = logits_function(model)  # a Hugging Face ModelOutput becomes its logits
    from tqdm import tqdm

    total = sum(len(t) for t in thresholds)
    with preserve_model_state(module) if module is not None else nullcontext():
        if target is None or (isinstance(target, str) and target.strip().lower() == "auto"):
            with torch.no_grad():
                logits = forward(x, *_as_tuple(additional_forward_args))
            if not isinstance(logits, Tensor):
                raise TypeError(f"model: expected the forward pass to return a Tensor (N, K), got {type(logits).__name__}")
            t: Any = resolve_target(target, logits).to(x.device)
        else:  # checked against the first batch's logits (no extra forward pass)
            t = lambda logits: resolve_target(target, logits[:1].expand(n, -1))  # noqa: E731
        with tqdm(total=total, desc=f"{mode} curves", unit="image", disable=not progress) as bar:
            scores, fracs, t = score_perturbations(
                forward, x, base, rank, thresholds, t, mode=mode, output=output, batch_size=batch_size,
                additional_forward_args=additional_forward_args, bar=bar,
            )
    config: Dict[str, Any] = {
        "n_steps": n_steps,
        "unit_aggregate": unit_aggregate if units is not None and unit_scores is None else None,
        "blur_sigma": (blur_sigma if blur_sigma is not None else max(h, w) / 10.0) if _baseline_name(baseline) == "blur" else None,
        "batch_size": batch_size,
    }
    if used_scores is not None:
        config["unit_scores"] = used_scores
    return PerturbationCurves(
        mode=mode, order=order, ranking=ranking, scores=_pad(scores), fractions=_pad(fracs),
        unit_fractions=_pad([th.to(torch.float64) / max(k, 1) for th, k in zip(thresholds, counts)]),
        n_points=torch.tensor([len(v) for v in scores], dtype=torch.long),
        n_units=torch.tensor(counts, dtype=torch.long), target=t.cpu(),
        baseline=_baseline_name(baseline), output=output, config=config,
    )
