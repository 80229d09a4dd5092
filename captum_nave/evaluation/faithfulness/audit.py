"""All faithfulness measures of several attribution maps on one model, as one table.

:func:`faithfulness_audit` runs deletion and insertion curves for every map with
every ranking (pixels, NAVE segments by each map's relevance mass, NAVE segments by
given segment scores such as :func:`captum_nave.attribution.segment_importance`, SLIC
superpixels, a grid), adds a seeded random map as the reference every method should
beat, and the pointing game / energy in box when boxes are given. The result
(:class:`FaithfulnessAudit`) gives per-image and mean rows, CSV and Markdown, and the
curves figure. The report's "Faithfulness" section and ``captum-nave compare`` use it.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_nave.adapters import logits_function

from .curves import MODES, PerturbationCurves, check_inputs, check_map, check_units, perturbation_curve
from .localisation import energy_in_box, pointing_game

__all__ = ["RANKINGS", "FaithfulnessAudit", "faithfulness_audit", "CSV_COLUMNS", "RANDOM_METHOD"]

#: Rankings of :func:`faithfulness_audit`, in table order.
RANKINGS: Tuple[str, ...] = ("pixels", "segments", "slic", "grid")
#: Name of the reference random map.
RANDOM_METHOD = "random"
#: Columns of :meth:`FaithfulnessAudit.rows` / the CSV.
CSV_COLUMNS: List[str] = [
    "model", "image", "image_name", "method", "ranking", "units", "deletion_auc", "insertion_auc",
    "insertion_minus_deletion", "pointing_game", "energy_in_box", "baseline", "output",
]

_RANKING_TEXT = {
    "pixels": "pixels",
    "segments": "NAVE segments",
    "slic": "SLIC superpixels",
    "grid": "grid cells",
}


@dataclass
class FaithfulnessAudit:
    """Result of :func:`faithfulness_audit`.

    Attributes
    ----------
    curves : dict of (method, ranking, mode) -> PerturbationCurves
        ``ranking`` in :data:`RANKINGS`; ``mode`` ``"deletion"`` / ``"insertion"``;
        methods include :data:`RANDOM_METHOD` and the names of ``segment_scores``
        (ranking ``"segments"`` only).
    localisation : dict of method -> {"pointing_game": (N,), "energy_in_box": (N,)}
        Only with boxes.
    units : dict of ranking -> LongTensor (N, 1, H, W)
        The units used (not for ``"pixels"``).
    target : LongTensor (N,)
    image_names : list of str
    model_name : str
    config : dict
    """

    curves: Dict[Tuple[str, str, str], PerturbationCurves]
    localisation: Dict[str, Dict[str, Tensor]]
    units: Dict[str, Tensor]
    target: Tensor
    image_names: List[str]
    model_name: str = ""
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> List[str]:
        """Methods in first-seen order."""
        out: List[str] = []
        for m, _, _ in self.curves:
            if m not in out:
                out.append(m)
        return out

    @property
    def rankings(self) -> List[str]:
        """Rankings present, in :data:`RANKINGS` order."""
        present = {r for _, r, _ in self.curves}
        return [r for r in RANKINGS if r in present]

    def auc(self, method: str, ranking: str, mode: str) -> Tensor:
        """Per-image AUC (N,) float64 (NaN when that combination was not run)."""
        c = self.curves.get((method, ranking, mode))
        return c.auc() if c is not None else torch.full((len(self.image_names),), math.nan, dtype=torch.float64)

    def rows(self, per_image: bool = False) -> List[Dict[str, Any]]:
        """Table rows (keys :data:`CSV_COLUMNS`): means over images, or one row per image.

        ``image`` is ``"mean"`` in mean rows; ``units`` is the mean number of units
        (pixels for the pixel ranking).
        """
        out: List[Dict[str, Any]] = []
        n = len(self.image_names)
        for method in self.methods:
            for ranking in self.rankings:
                if not any((method, ranking, m) in self.curves for m in MODES):
                    continue
                dele = self.auc(method, ranking, "deletion")
                ins = self.auc(method, ranking, "insertion")
                any_curve = next(self.curves[(method, ranking, m)] for m in MODES if (method, ranking, m) in self.curves)
                units = any_curve.n_units.to(torch.float64)
                loc = self.localisation.get(method, {}) if ranking == "pixels" else {}
                pg = loc.get("pointing_game", torch.full((n,), math.nan, dtype=torch.float64))
                en = loc.get("energy_in_box", torch.full((n,), math.nan, dtype=torch.float64))
                base = {"model": self.model_name, "method": method, "ranking": ranking,
                        "baseline": any_curve.baseline, "output": any_curve.output}
                if per_image:
                    for i in range(n):
                        out.append({**base, "image": i, "image_name": self.image_names[i], "units": float(units[i]),
                                    "deletion_auc": float(dele[i]), "insertion_auc": float(ins[i]),
                                    "insertion_minus_deletion": float(ins[i] - dele[i]),
                                    "pointing_game": float(pg[i]), "energy_in_box": float(en[i])})
                else:
                    out.append({**base, "image": "mean", "image_name": "", "units": _nanmean(units),
                                "deletion_auc": _nanmean(dele), "insertion_auc": _nanmean(ins),
                                "insertion_minus_deletion": _nanmean(ins - dele),
                                "pointing_game": _nanmean(pg), "energy_in_box": _nanmean(en)})
        return out

    def to_csv(self, path: Union[str, "os.PathLike[str]"], per_image: bool = True) -> str:
        """Write :meth:`rows` as CSV (written to a temporary file in the same folder, then renamed)."""
        return write_csv(path, CSV_COLUMNS, self.rows(per_image=per_image))

    def to_markdown(self, digits: int = 3) -> str:
        """The mean rows as a Markdown table (lower deletion AUC and higher insertion AUC are better)."""
        cols = ["method", "ranking", "deletion_auc", "insertion_auc", "insertion_minus_deletion"]
        if self.localisation:
            cols += ["pointing_game", "energy_in_box"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in self.rows():
            cells = [_fmt(r[c], digits) for c in cols]
            cells[1] = ranking_text(r["ranking"])
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, rankings: Optional[Sequence[str]] = None, plt_fig_axis: Any = None, show: bool = False) -> Tuple[Any, Any]:
        """Mean deletion and insertion curves per method (rows: rankings, columns: modes)."""
        from .plots import plot_perturbation_curves

        return plot_perturbation_curves(self, rankings=rankings, plt_fig_axis=plt_fig_axis, show=show)


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def write_csv(path: Union[str, "os.PathLike[str]"], columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """Write rows as CSV atomically (floats with full precision, NaN as an empty cell); returns the path."""
    import io
    from pathlib import Path

    from captum_nave.evaluation.record_files import _atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns))
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else
                             repr(r[k]) if isinstance(r.get(k), float) else r.get(k, "")) for k in columns})
    target = Path(os.fspath(path))
    _atomic_write_text(target, buf.getvalue())
    return str(target)


def _nanmean(v: Tensor) -> float:
    a = v.detach().to("cpu", torch.float64).numpy()
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def ranking_text(ranking: str) -> str:
    """Display name of a ranking."""
    return _RANKING_TEXT.get(ranking, ranking)


def random_maps(shape: Sequence[int], random_state: int = 0, device: Any = None) -> Tensor:
    """A seeded uniform-noise map (N, 1, H, W): the reference ranking."""
    g = torch.Generator().manual_seed(int(random_state))
    n, _, h, w = (int(v) for v in shape)
    return torch.rand(n, 1, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=torch.float32)


def faithfulness_audit(
    model: Union[nn.Module, Any],
    inputs: Tensor,
    maps: Mapping[str, Tensor],
    target: Any = "auto",
    *,
    segments: Optional[Tensor] = None,
    segment_scores: Optional[Mapping[str, Tensor]] = None,
    rankings: Sequence[str] = RANKINGS,
    images: Optional[Tensor] = None,
    slic_segments: int = 50,
    grid: Tuple[int, int] = (4, 4),
    modes: Sequence[str] = MODES,
    n_steps: int = 20,
    baseline: Any = "blur",
    blur_sigma: Optional[float] = None,
    output: str = "probability",
    random_map: Union[bool, Tensor] = True,
    random_state: int = 0,
    boxes: Optional[Sequence[Any]] = None,
    tolerance: float = 0.0,
    image_names: Optional[Sequence[str]] = None,
    model_name: str = "",
    batch_size: int = 32,
    progress: bool = False,
) -> FaithfulnessAudit:
    """Deletion / insertion AUCs of several maps with several rankings, and localisation.

    Parameters
    ----------
    model : nn.Module or callable returning class scores (N, K)
        Never modified.
    inputs : Tensor of shape (N, C, H, W)
    maps : mapping method name -> Tensor (N, 1, H, W)
        Attribution maps of the same target (e.g. ``{"gradcam": res.maps, ...}``).
    target : "auto", int, sequence of int or integer Tensor (N,)
        The class the maps explain (``"auto"``: the prediction).
    segments : LongTensor of shape (N, 1, H, W), optional
        NAVE segments; needed for the ``"segments"`` ranking.
    segment_scores : mapping name -> Tensor (N, K), optional
        Scores per NAVE segment (e.g. ``{"segment_importance": segment_importance(...)}``),
        each evaluated as one more method with the ``"segments"`` ranking.
    rankings : sequence of {"pixels", "segments", "slic", "grid"}
        ``"segments"`` is skipped without ``segments``; ``"slic"`` needs ``images``.
    images : Tensor of shape (N, 3, H, W) in [0, 1], optional
        The images before normalisation, for SLIC.
    slic_segments : int, default 50
        Approximate SLIC superpixels per image.
    grid : (int, int), default (4, 4)
        Rows and columns of the grid ranking.
    modes : sequence of {"deletion", "insertion"}
    n_steps, baseline, blur_sigma, output, batch_size
        See :func:`~captum_nave.evaluation.faithfulness.perturbation_curve`.
    random_map : bool or Tensor (N, 1, H, W), default True
        Add a seeded uniform-noise map (method :data:`RANDOM_METHOD`,
        :func:`random_maps` of the inputs' shape and ``random_state``) as the reference.
        A Tensor is used as that reference map instead: e.g. the rows of
        ``random_maps((N_all, 1, H, W), random_state)`` of the images of a shard, so
        that an image split off from a larger batch (a torchrun report) gets the noise
        it gets in the whole batch.
    random_state : int, default 0
        Seed of the random map (only recorded in ``config`` when ``random_map`` is a
        Tensor).
    boxes : sequence of N arrays (M_i, 4), optional
        Boxes in input pixels: adds the pointing game and the energy in box per map.
    tolerance : float, default 0
        Pointing-game tolerance in pixels.
    image_names : sequence of str, optional
    model_name : str, optional
        Stored in the rows (to combine several models in one table).
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    FaithfulnessAudit

    Examples
    --------
    >>> maps = {m: attribute(m, model, x, target=t).maps for m in ("gradcam", "ig", "lrp")}
    >>> audit = faithfulness_audit(model, x, maps, t, segments=seg, images=x01,
    ...                            segment_scores={"segment_importance": segment_importance(model, x, seg, t)})
    >>> print(audit.to_markdown())
    """
    from tqdm import tqdm

    from captum_nave.activations import preserve_model_state
    from captum_nave.attribution.registry import resolve_target

    from .units import grid_units, slic_units

    x = check_inputs(inputs).detach()
    n, _, h, w = x.shape
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps: expected a mapping method name -> Tensor (N, 1, H, W), got {type(maps).__name__}")
    all_maps: Dict[str, Tensor] = {}
    for k, v in maps.items():
        all_maps[str(k)] = check_map(v, x, name=f"maps[{k!r}]").to(x.device)
    if not isinstance(random_map, (bool, Tensor)):
        raise TypeError(f"random_map: expected True, False or a Tensor (N, 1, H, W), got {type(random_map).__name__}")
    if isinstance(random_map, Tensor) or random_map:
        if RANDOM_METHOD in all_maps:
            raise ValueError(f"maps: the name {RANDOM_METHOD!r} is reserved for the reference map (random_map=True)")
        all_maps[RANDOM_METHOD] = (
            check_map(random_map, x, name="random_map").to(x.device) if isinstance(random_map, Tensor)
            else random_maps(x.shape, random_state, x.device)
        )
    if not all_maps:
        raise ValueError("maps: expected at least one map, got none")
    if isinstance(rankings, str) or not all(r in RANKINGS for r in rankings):
        raise ValueError(f"rankings: expected a sequence of {', '.join(map(repr, RANKINGS))}, got {rankings!r}")
    if isinstance(modes, str) or not modes or not all(m in MODES for m in modes):
        raise ValueError(f"modes: expected a non-empty sequence of {', '.join(map(repr, MODES))}, got {modes!r}")
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in grid)):
        raise ValueError(f"grid: expected (rows, cols) of positive ints, got {grid!r}")
    names = [str(s) for s in image_names] if image_names is not None else [f"image {i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"image_names: expected {n} names (one per image), got {image_names!r}")

    units: Dict[str, Tensor] = {}
    if "segments" in rankings and segments is not None:
        units["segments"] = check_units(segments, x, name="segments").to(x.device)
    if "slic" in rankings and images is not None:
        units["slic"] = slic_units(images, slic_segments, device=x.device)
    if "grid" in rankings:
        units["grid"] = grid_units(x.shape, int(grid[0]), int(grid[1]), device=x.device)
    scores_of: Dict[str, Tensor] = {}
    if segment_scores:
        if "segments" not in units:
            raise ValueError("segment_scores: scores per NAVE segment need segments= and the 'segments' ranking")
        for k, v in segment_scores.items():
            if str(k) in all_maps:
                raise ValueError(f"segment_scores: the name {k!r} is already used by a map")
            scores_of[str(k)] = v

    module = model if isinstance(model, nn.Module) else None
    if module is not None:
        with preserve_model_state(module), torch.no_grad():
            logits = logits_function(model)(x)
    else:
        with torch.no_grad():
            logits = logits_function(model)(x)
    t = resolve_target(target, logits).to(x.device)

    jobs: List[Tuple[str, str, Dict[str, Any]]] = []
    for method in all_maps:
        for ranking in RANKINGS:
            if ranking not in rankings:
                continue
            if ranking == "pixels":
                jobs.append((method, ranking, {"attributions": all_maps[method]}))
            elif ranking in units:
                jobs.append((method, ranking, {"attributions": all_maps[method], "units": units[ranking]}))
    for name, sc in scores_of.items():
        jobs.append((name, "segments", {"units": units["segments"], "unit_scores": sc}))

    common = dict(baseline=baseline, blur_sigma=blur_sigma, output=output, n_steps=n_steps, batch_size=batch_size)
    curves: Dict[Tuple[str, str, str], PerturbationCurves] = {}
    with tqdm(total=len(jobs) * len(modes), desc="faithfulness", unit="curve", disable=not progress) as bar:
        for method, ranking, kw in jobs:
            for mode in modes:
                curves[(method, ranking, mode)] = perturbation_curve(model, x, target=t, mode=mode, **kw, **common)
                bar.update(1)

    localisation: Dict[str, Dict[str, Tensor]] = {}
    if boxes is not None:
        for method, m in all_maps.items():
            localisation[method] = {
                "pointing_game": pointing_game(m, boxes, tolerance=tolerance),
                "energy_in_box": energy_in_box(m, boxes),
            }
    return FaithfulnessAudit(
        curves=curves, localisation=localisation, units={k: v.cpu() for k, v in units.items()},
        target=t.cpu(), image_names=names, model_name=str(model_name),
        config={"pixels": h * w, "n_steps": n_steps, "baseline": curves[next(iter(curves))].baseline,
                "blur_sigma": curves[next(iter(curves))].config.get("blur_sigma"), "output": output,
                "slic_segments": slic_segments if "slic" in units else None,
                "grid": list(grid) if "grid" in units else None, "random_state": random_state,
                "tolerance": tolerance if boxes is not None else None, "modes": list(modes)},
    )
