"""One model's part of a report: prediction, NAVE over seeds, attributions, segment scores, faithfulness."""

from __future__ import annotations

import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn


from .data import ModelRun
from .inputs import _class_namer


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


#: Errors of a method or of the faithfulness measures that ``on_error="record"`` records instead of raising.
RECORDABLE = (ValueError, TypeError, RuntimeError, NotImplementedError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


# --------------------------------------------------------------------------- collect
def _add_faithfulness(
    run: ModelRun,
    model: nn.Module,
    x: Tensor,
    x01: Tensor,
    names: List[str],
    *,
    n_clusters: int,
    seed: int,
    opts: Dict[str, Dict[str, Any]],
    boxes: Optional[List[np.ndarray]],
    faith_opts: Dict[str, Any],
    on_error: str,
    warnings_out: List[str],
    indices: Optional[Sequence[int]] = None,
) -> None:
    """The faithfulness audit and randomisation check of ``run``'s maps (in place, all images).

    ``x`` (N, 3, H, W): the normalised images on the model's device; ``x01``: the same in [0, 1].
    With ``indices`` (torchrun: this rank's images, :func:`captum_nave.data.shard_indices`)
    a collective: every rank computes the measures of its images only and the parts are
    merged in image order on every rank (:func:`~captum_nave.report.shards.gather_faithfulness`),
    into what one process computes; an error on any rank is raised on every rank
    (``on_error="raise"``) or recorded with the same text on every rank (``"record"``).
    """
    from .faithfulness import collect_faithfulness
    from .shards import gather_faithfulness

    def compute(rows: Optional[Sequence[int]]) -> Tuple[Any, Any, Dict[str, float]]:
        return collect_faithfulness(
            run, model, x, x01, image_names=names, n_clusters=n_clusters, seed=seed,
            nave_options=dict(opts.get("nave", {})), method_options=opts, boxes=boxes, options=faith_opts,
            indices=rows,
        )

    msg: Optional[str] = None
    if indices is None:
        try:
            result: Optional[Tuple[Any, Any, Dict[str, float]]] = compute(None)
        except RECORDABLE as exc:
            if on_error == "raise":
                raise
            result, msg = None, _one_line(exc)
    else:
        result, msg = gather_faithfulness(lambda: compute(indices), indices, len(names),
                                          recordable=RECORDABLE if on_error == "record" else ())
    if result is not None:
        run.faithfulness, run.randomisation, faith_times = result
        run.timings.update(faith_times)
        return
    run.errors["faithfulness"] = msg or ""
    text = f"report: the faithfulness measures failed on model {run.name!r}: {msg}"
    warnings_out.append(text)
    warnings.warn(text, RuntimeWarning, stacklevel=3)


def _model_run(
    name: str,
    model: nn.Module,
    info: Dict[str, Any],
    x01: Tensor,
    names: List[str],
    target: Any,
    *,
    layers: Any,
    methods: List[str],
    opts: Dict[str, Dict[str, Any]],
    seeds: List[int],
    n_clusters: int,
    class_names: Any,
    importance: bool,
    on_error: str,
    bar: Any,
    warnings_out: List[str],
) -> ModelRun:
    """Everything the report computes for one model on the images ``x01`` (N, 3, H, W) in [0, 1].

    Each image's results depend on that image only (per-image NAVE seeds, per-image
    attributions and ablations), so the images may be split over processes and the
    parts merged (:func:`~captum_nave.report.shards.gather_model_run`).
    """
    from captum_nave import LayerClusterExplainer
    from captum_nave.attribution import attribute, segment_importance, segment_relevance
    from captum_nave.adapters import logits_function
    from captum_nave.attribution.registry import resolve_target
    from captum_nave.models import normalize, state_dict_sha256
    from captum_nave.visualization import stability_ari

    timings: Dict[str, float] = {}
    device = _model_device(model)
    sha_before = state_dict_sha256(model)
    x = normalize(x01, info).to(device)
    explainer = LayerClusterExplainer(model, layers)

    t0 = time.perf_counter()
    with torch.no_grad():
        logits = logits_function(model)(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"models[{name!r}]: expected class scores of shape (N, K), got {getattr(logits, 'shape', type(logits))}")
    targets = resolve_target(target, logits)
    probs = logits.float().softmax(-1).gather(1, targets[:, None])[:, 0].cpu()
    namer = _class_namer(class_names, int(logits.shape[1]), info.get("pretrained"))
    target_names = [namer(int(k)) for k in targets.cpu()]
    timings["prediction"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nave_opts = dict(opts.get("nave", {}))
    results = [
        explainer.explain(x, n_clusters, random_state=s, **nave_opts) for s in seeds
    ]
    seed_maps = torch.stack([r.segments.cpu() for r in results])  # (R, N, 1, H, W)
    timings["nave"] = time.perf_counter() - t0
    stability = (
        [stability_ari(seed_maps[:, i]) for i in range(len(names))] if len(seeds) >= 2 else None
    )
    bar.update(1)
    run = ModelRun(
        name=name,
        info={k: info.get(k) for k in ("mean", "std", "source", "pretrained", "num_classes", "input_size")},
        layers=list(explainer.layer_names),
        weights_sha256=sha_before,
        weights_unchanged=True,
        targets=targets.cpu(),
        target_names=target_names,
        target_probs=probs,
        nave=results[0],
        seed_maps=seed_maps,
        stability=stability,
        timings=timings,
    )
    seg = results[0].segments
    for method in methods:
        if method == "nave":
            continue
        t0 = time.perf_counter()
        method_opts = dict(opts.get(method, {}))
        if method == "lrp" and "input_bounds" not in method_opts:
            # the z^B rule (epsilon-gamma-box) needs the range of the normalised pixels
            from captum_nave.attribution.lrp import normalisation_bounds

            method_opts["input_bounds"] = normalisation_bounds(info["mean"], info["std"])
        try:
            res = attribute(method, model, x, target=targets, **method_opts)
        except RECORDABLE as exc:
            if on_error == "raise":
                raise
            msg = _one_line(exc)
            run.errors[method] = msg
            text = f"report: method {method!r} failed on model {name!r}: {msg}"
            warnings_out.append(text)
            warnings.warn(text, RuntimeWarning, stacklevel=3)
            bar.update(1)
            continue
        timings[method] = time.perf_counter() - t0
        run.attributions[method] = res
        t0 = time.perf_counter()
        run.relevance[method] = segment_relevance(
            seg.cpu(), res.maps.cpu(), method=method, image_names=names
        )
        timings["relevance"] = timings.get("relevance", 0.0) + time.perf_counter() - t0
        bar.update(1)
    if importance:
        t0 = time.perf_counter()
        run.importance = segment_importance(model, x, seg, target=targets).cpu()
        timings["importance"] = time.perf_counter() - t0
        bar.update(1)
    run.weights_unchanged = state_dict_sha256(model) == sha_before
    if not run.weights_unchanged:  # pragma: no cover - a bug in a method
        text = f"report: the weights of model {name!r} changed during the run"
        warnings_out.append(text)
        warnings.warn(text, RuntimeWarning, stacklevel=3)
    return run
