"""A report's per-image work split over processes (torchrun), merged in image order.

Under ``torchrun`` every rank computes a :class:`~captum_nave.report.data.ModelRun`
for its images (``i % world == rank``, :func:`captum_nave.data.shard_indices`); the
parts are gathered on every rank and merged here into the run over all images, in
image order, as one process would have computed it: every per-image tensor is
concatenated along the image dimension and put back in order, relevance tables get
their global image indices, timings are the slowest rank's. Per-image results depend
on that image only (NAVE seeds are per image), so the merge is exact; a NAVE setting
that clusters a batch jointly (``shared=True``) cannot be split and is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import distributed as dist_utils

__all__ = ["shard_target", "gather_model_run", "merge_model_runs"]


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
    first = results[0]
    return replace(
        first,
        segments=_cat([r.segments for r in results], order),
        grid_labels=_cat([r.grid_labels for r in results], order),
        centroids=_cat([r.centroids for r in results], order),
        inertia=_cat([r.inertia for r in results], order),
        n_clusters=_cat([r.n_clusters for r in results], order),
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
