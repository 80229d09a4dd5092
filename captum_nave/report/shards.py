"""A report's per-image work split over processes (torchrun), merged in image order.

Under ``torchrun`` every rank computes a :class:`~captum_nave.report.data.ModelRun`
for its images (``i % world == rank``, :func:`captum_nave.data.shard_indices`); the
parts are gathered on every rank and merged here into the run over all images, in
image order, as one process would have computed it: every per-image tensor is
concatenated along the image dimension and put back in order, relevance tables get
their global image indices, timings are the slowest rank's. Per-image results depend
on that image only (NAVE seeds are per image), so the merge is exact; a NAVE setting
that clusters a batch jointly (``shared=True``) cannot be split and is refused.

The faithfulness measures are split the same way: every rank runs
:func:`~captum_nave.report.faithfulness.collect_faithfulness` on its images of the
merged run (deletion / insertion curves, units, localisation, the randomisation check;
the random reference map is drawn for all images and cut), and
:func:`gather_faithfulness` merges the audits and randomisation results in image order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import distributed as dist_utils

__all__ = ["shard_target", "gather_model_run", "merge_model_runs", "gather_faithfulness", "merge_faithfulness"]


def shard_target(target: Any, indices: Sequence[int], n: int) -> Any:
    """The ``target`` argument for the images ``indices`` of ``n`` (per-image targets are indexed)."""
    if isinstance(target, Tensor) and target.dim() == 1 and target.shape[0] == n:
        return target[list(indices)]
    if isinstance(target, (list, tuple)) and len(target) == n:
        return [target[i] for i in indices]
    return target


def _cpu(x: Any) -> Any:
    """Tensors of a result (nested in dataclasses, dicts, lists) moved to the CPU for gathering."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    fields = getattr(x, "__dataclass_fields__", None)
    if fields is not None:
        return replace(x, **{f: _cpu(getattr(x, f)) for f in fields if getattr(fields[f], "init", True)})
    return x


def gather_model_run(
    part: Any, indices: Sequence[int], n: int, warnings_out: Sequence[str] = ()
) -> Tuple[Any, List[str]]:
    """Every rank's part merged into the run over all ``n`` images, on every rank (a collective).

    Parameters
    ----------
    part : ModelRun or None
        This rank's run over its images (None when it has none).
    indices : sequence of int
        The images of ``part``, in its order.
    n : int
        Images of the report.
    warnings_out : sequence of str
        This rank's warnings; returned merged (in rank order, each once).
    """
    parts = dist_utils.all_gather_object((list(indices), _cpu(part), list(warnings_out)))
    texts: List[str] = []
    for _, _, w in parts:
        texts.extend(t for t in w if t not in texts)
    return merge_model_runs([(idx, p) for idx, p, _ in parts if p is not None], n), texts


def _order(parts: Sequence[Tuple[List[int], Any]], n: int) -> Tensor:
    """Positions in the concatenation of the parts of images 0..n-1."""
    cat = [i for idx, _ in parts for i in idx]
    if sorted(cat) != list(range(n)):
        raise ValueError(f"parts: expected the images 0..{n - 1} once each, got {sorted(cat)}")
    return torch.argsort(torch.tensor(cat))


def _cat(tensors: Sequence[Optional[Tensor]], order: Tensor, dim: int = 0) -> Optional[Tensor]:
    if any(t is None for t in tensors):
        return None
    return torch.cat(list(tensors), dim).index_select(dim, order)  # type: ignore[arg-type]


def _cat_fields(objs: Sequence[Any], order: Tensor, fields: Sequence[str], cat: Callable[..., Any] = _cat) -> Dict[str, Any]:
    """``{field: the objects' per-image tensors of that field, concatenated in image order}``."""
    return {f: cat([getattr(o, f) for o in objs], order) for f in fields}


def _slowest(dicts: Sequence[Dict[str, float]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = max(out.get(k, v), v)
    return out


def _merge_nave(results: Sequence[Any], sizes: Sequence[int], order: Tensor) -> Any:
    for r, m in zip(results, sizes):
        if r.centroids.shape[0] != m:
            raise ValueError(
                "method_options['nave']: the NAVE settings cluster the images jointly (shared=True); "
                "such a report cannot be split over processes; run it in one process"
            )
    return replace(
        results[0],
        **_cat_fields(results, order, ("segments", "grid_labels", "centroids", "inertia", "n_clusters")),
        timings=_slowest([r.timings for r in results]),
    )


def _merge_relevance(tables: Sequence[Any], parts: Sequence[Tuple[List[int], Any]]) -> Any:
    rows: List[Dict[str, Any]] = []
    totals: List[Dict[str, Any]] = []
    for table, (idx, _) in zip(tables, parts):
        rows += [dict(r, image=idx[r["image"]]) for r in table.rows]
        totals += [dict(t, image=idx[t["image"]]) for t in table.totals]
    rows.sort(key=lambda r: r["image"])  # stable: segments stay in their order within an image
    totals.sort(key=lambda t: t["image"])
    return type(tables[0])(rows, totals)


def merge_model_runs(parts: Sequence[Tuple[List[int], Any]], n: int) -> Any:
    """Merge ``(indices, ModelRun)`` parts over disjoint images into the run over images 0..n-1."""
    if not parts:
        raise ValueError("parts: expected at least one part, got none")
    order = _order(parts, n)
    runs = [p for _, p in parts]
    sizes = [len(idx) for idx, _ in parts]
    first = runs[0]
    errors: Dict[str, str] = {}
    for r in runs:
        for m, msg in r.errors.items():
            errors.setdefault(m, msg)
    names = [t for r in runs for t in r.target_names]
    stability = [v for r in runs for v in (r.stability or [])]
    merged = replace(
        first,
        weights_unchanged=all(r.weights_unchanged for r in runs),
        targets=_cat([r.targets for r in runs], order),
        target_names=[names[int(i)] for i in order],
        target_probs=_cat([r.target_probs for r in runs], order),
        nave=_merge_nave([r.nave for r in runs], sizes, order),
        seed_maps=_cat([r.seed_maps for r in runs], order, dim=1),
        stability=None if first.stability is None else [stability[int(i)] for i in order],
        attributions={},
        errors=errors,
        relevance={},
        importance=_cat([r.importance for r in runs], order),
        timings=_slowest([r.timings for r in runs]),
    )
    for m, res in first.attributions.items():
        if m in errors:  # failed on some rank's images: reported as failed, as one process would
            continue
        parts_m = [r.attributions[m] for r in runs]
        merged.attributions[m] = replace(
            res,
            maps=_cat([a.maps for a in parts_m], order),
            raw=_cat([a.raw for a in parts_m], order),
            delta=_cat([a.delta for a in parts_m], order),
            target=_cat([a.target for a in parts_m], order),
        )
        merged.relevance[m] = _merge_relevance([r.relevance[m] for r in runs], parts)
    return merged


# --------------------------------------------------------------------------- faithfulness
def gather_faithfulness(
    compute: Callable[[], Tuple[Any, Any, Dict[str, float]]],
    indices: Sequence[int],
    n: int,
    recordable: Tuple[type, ...] = (),
) -> Tuple[Optional[Tuple[Any, Any, Dict[str, float]]], Optional[str]]:
    """Every rank's faithfulness part merged over all ``n`` images, on every rank (a collective).

    Parameters
    ----------
    compute : callable
        This rank's work on its images (``indices``): returns ``(FaithfulnessAudit,
        RandomisationResult or None, timings)`` as
        :func:`~captum_nave.report.faithfulness.collect_faithfulness`. Not called for a
        rank without images.
    indices : sequence of int
        The images of this rank, in the order of its results.
    n : int
        Images of the report.
    recordable : tuple of exception types
        Errors recorded instead of raised (the report's ``on_error="record"``).

    Returns
    -------
    (merged result or None, error text or None)
        When a rank's ``compute`` raised a ``recordable`` error, every rank returns
        ``(None, text)`` with the same text (the first failed rank's
        ``"Type: first line"``). Any other error is raised on the rank that had it and
        as :class:`~captum_nave.distributed.RemoteError` on the others.
    """
    from .model_run import _one_line

    part, error, text = None, None, None
    try:
        if indices:
            part = compute()
    except recordable as exc:  # recorded on every rank below
        text = _one_line(exc)
    except Exception as exc:  # raised on every rank by check_all_ok
        error = exc
    dist_utils.check_all_ok(error)
    parts = dist_utils.all_gather_object((list(indices), _cpu(part), text))
    texts = [t for _, _, t in parts if t is not None]
    if texts:
        return None, texts[0]
    return merge_faithfulness([(idx, p) for idx, p, _ in parts if p is not None], n), None


def _same(values: Sequence[Any], what: str) -> Any:
    """The value all parts share (a ValueError naming ``what`` when they differ)."""
    first = values[0]
    for v in values[1:]:
        if v != first:
            raise ValueError(f"parts: expected the same {what} in every part, got {first!r} and {v!r}")
    return first


def _cat_padded(tensors: Sequence[Tensor], order: Tensor) -> Tensor:
    """Rows (N_i, P_i) padded with NaN to the widest, concatenated and put in image order."""
    width = max(t.shape[1] for t in tensors)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=float("nan")) for t in tensors]
    return torch.cat(padded).index_select(0, order)


def _merge_curves(curves: Sequence[Any], order: Tensor) -> Any:
    """:class:`PerturbationCurves` of disjoint images merged (scores padded as one batch pads them)."""
    first = curves[0]
    for key in ("mode", "order", "ranking", "baseline", "output"):
        _same([getattr(c, key) for c in curves], f"curve {key}")
    config = {k: v for k, v in first.config.items() if k != "unit_scores"}
    _same([{k: v for k, v in c.config.items() if k != "unit_scores"} for c in curves], "curve settings")
    if "unit_scores" in first.config:  # (N_i, K_i): K_i = the largest unit id of the part + 1, NaN for absent ids
        config["unit_scores"] = _cat_padded([c.config["unit_scores"] for c in curves], order)
    return replace(
        first,
        **_cat_fields(curves, order, ("scores", "fractions", "unit_fractions"), _cat_padded),
        **_cat_fields(curves, order, ("n_points", "n_units", "target")),
        config=config,
    )


def _merge_audit(audits: Sequence[Any], order: Tensor) -> Any:
    first = audits[0]
    _same([list(a.curves) for a in audits], "curves")
    _same([a.config for a in audits], "audit settings")
    _same([{m: sorted(v) for m, v in a.localisation.items()} for a in audits], "localisation measures")
    _same([sorted(a.units) for a in audits], "unit rankings")
    names = [s for a in audits for s in a.image_names]
    return replace(
        first,
        curves={k: _merge_curves([a.curves[k] for a in audits], order) for k in first.curves},
        localisation={m: {k: _cat([a.localisation[m][k] for a in audits], order) for k in v}
                      for m, v in first.localisation.items()},
        units={k: _cat([a.units[k] for a in audits], order) for k in first.units},
        target=_cat([a.target for a in audits], order),
        image_names=[names[int(i)] for i in order],
    )


def _merge_randomisation(results: Sequence[Any], order: Tensor) -> Any:
    first = results[0]
    for key in ("stages", "randomised", "cascading", "methods"):
        _same([getattr(r, key) for r in results], f"randomisation {key}")

    def cat(field: str) -> Dict[str, Tensor]:  # (S, N_i) per method -> (S, N)
        return {m: _cat([getattr(r, field)[m] for r in results], order, dim=1) for m in getattr(first, field)}

    maps = None
    if first.maps is not None:  # (S + 1, N_i, 1, H, W) per method
        maps = {m: _cat([r.maps[m] for r in results], order, dim=1) for m in first.maps}
    return replace(first, spearman=cat("spearman"), ssim=cat("ssim"), ari=cat("ari"),
                   target=_cat([r.target for r in results], order), maps=maps)


def merge_faithfulness(
    parts: Sequence[Tuple[List[int], Tuple[Any, Any, Dict[str, float]]]], n: int
) -> Tuple[Any, Any, Dict[str, float]]:
    """Merge ``(indices, (audit, randomisation, timings))`` parts over disjoint images into the result over 0..n-1.

    Every per-image tensor (curves, unit fractions, unit scores, localisation, units,
    targets, randomisation similarities) is concatenated and put in image order; curves
    of different lengths are padded with NaN as one batch pads them; settings must agree;
    timings are the slowest part's.
    """
    if not parts:
        raise ValueError("parts: expected at least one part, got none")
    order = _order([(idx, None) for idx, _ in parts], n)
    audits = [p[0] for _, p in parts]
    sanities = [p[1] for _, p in parts]
    if any(s is None for s in sanities) and not all(s is None for s in sanities):
        raise ValueError("parts: expected a randomisation result in every part or in none")
    sanity = None if sanities[0] is None else _merge_randomisation(sanities, order)
    return _merge_audit(audits, order), sanity, _slowest([p[2] for _, p in parts])
