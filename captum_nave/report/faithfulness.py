"""The report's "Faithfulness" section: compute it for one model, and render it.

:func:`collect_faithfulness` runs :func:`captum_nave.evaluation.faithfulness.faithfulness_audit`
on the maps a report computed (every attribution method, NAVE segments ranked by each
map's relevance mass and by segment importance, SLIC, a grid, a random map; pointing
game and energy in box when boxes are given) and
:func:`~captum_nave.evaluation.faithfulness.randomisation_check` for every method, NAVE
included. :func:`render_faithfulness` draws the tables, the curves and the
randomisation figure, with a plain sentence on how to read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor, nn

from .escaping import Markup, tag

if TYPE_CHECKING:  # pragma: no cover
    from .data import ModelRun, ReportData

__all__ = ["DEFAULT_FAITHFULNESS", "check_faithfulness_options", "collect_faithfulness", "render_faithfulness"]

#: Seed of the random reference map of the report's audit.
RANDOM_STATE = 0
#: Defaults of ``faithfulness_options`` (:func:`captum_nave.report.build_report`).
DEFAULT_FAITHFULNESS: Dict[str, Any] = {
    "n_steps": 20,
    "baseline": "blur",
    "blur_sigma": None,
    "output": "probability",
    "rankings": ("pixels", "segments", "slic", "grid"),
    "slic_segments": 50,
    "grid": (4, 4),
    "tolerance": 0.0,
    "batch_size": 32,
    "randomisation_stages": 4,
}

READING = (
    "How to read this: a deletion curve follows the probability of the explained class while the pixels (or units) "
    "a map ranks most relevant are replaced first by the baseline (the settings below say which); an insertion "
    "curve starts from the baseline image and puts them back first. A map that points at what the model uses makes the probability fall "
    "fast under deletion (low deletion AUC) and rise fast under insertion (high insertion AUC); it is only "
    "informative where it beats the random map. The randomisation check re-initialises the model from the "
    "classifier downwards and compares each method's map with the trained model's: the similarity should fall "
    "towards 0; a method whose map stays similar shows the image, not the model. NAVE segments (compared by ARI) "
    "stay unchanged until NAVE's own layers are randomised: they describe what those layers represent, by design."
)


def check_faithfulness_options(options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Defaults filled in; unknown keys raise a ``ValueError`` naming them."""
    out = dict(DEFAULT_FAITHFULNESS)
    if options is None:
        return out
    if not isinstance(options, Mapping):
        raise TypeError(f"faithfulness_options: expected a mapping, got {type(options).__name__}")
    unknown = sorted(set(options) - set(out))
    if unknown:
        raise ValueError(f"faithfulness_options: unknown keys {unknown}; expected some of {sorted(out)}")
    out.update(options)
    return out


def collect_faithfulness(
    run: "ModelRun",
    model: nn.Module,
    x: Tensor,
    x01: Tensor,
    *,
    image_names: Sequence[str],
    n_clusters: int,
    seed: int,
    nave_options: Mapping[str, Any],
    method_options: Mapping[str, Mapping[str, Any]],
    boxes: Optional[Sequence[Any]],
    options: Mapping[str, Any],
    progress: bool = False,
    indices: Optional[Sequence[int]] = None,
) -> Tuple[Any, Any, Dict[str, float]]:
    """The audit and the randomisation result of one model of a report.

    Parameters
    ----------
    run : ModelRun
        The model's results on all N images (maps, NAVE segments, segment importance, targets).
    model : nn.Module
    x : Tensor (N, 3, H, W)
        The normalised images on the model's device.
    x01 : Tensor (N, 3, H, W)
        The same images in [0, 1] (for SLIC).
    image_names : sequence of N str
    n_clusters, seed : int
        NAVE's settings in the randomisation check (the report's first k-means seed).
    nave_options, method_options : mapping
        The report's method options.
    boxes : sequence of N arrays (M_i, 4), optional
    options : mapping
        :func:`check_faithfulness_options`'s result.
    progress : bool, default False
    indices : sequence of int, optional
        Compute only for these images of the N (a torchrun rank's share); the results
        are those images' rows of the results over all N images: every measure of an
        image depends on that image only, and the random reference map is drawn for
        all N images and then cut. :func:`captum_nave.report.shards.merge_faithfulness`
        puts the shares back together.

    Returns
    -------
    (FaithfulnessAudit, RandomisationResult or None, timings in seconds)
        Over all N images, or over ``indices`` (in their order).
    """
    import time

    from captum_nave.evaluation.faithfulness import faithfulness_audit, random_maps, randomisation_check

    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    maps = {m: res.maps for m, res in run.attributions.items()}
    segments, targets, importance = run.nave.segments, run.targets, run.importance
    random_map: Any = True
    if indices is not None:  # a share of the images: their rows of every per-image input and of the random map
        rows = [int(i) for i in indices]
        random_map = random_maps((x.shape[0], 1) + tuple(x.shape[2:]), RANDOM_STATE)[rows]
        x, x01, image_names = x[rows], x01[rows], [image_names[i] for i in rows]
        boxes = None if boxes is None else [boxes[i] for i in rows]
        maps = {m: v[rows] for m, v in maps.items()}
        segments, targets = segments[rows], targets[rows]
        importance = None if importance is None else importance[rows]
    scores = {"segment_importance": importance.to(x.device)} if importance is not None else None
    audit = faithfulness_audit(
        model, x, maps, targets.to(x.device), segments=segments.to(x.device), segment_scores=scores,
        rankings=options["rankings"], images=x01.to(x.device), slic_segments=options["slic_segments"],
        grid=tuple(options["grid"]), n_steps=options["n_steps"], baseline=options["baseline"],
        blur_sigma=options["blur_sigma"], output=options["output"], boxes=boxes, tolerance=options["tolerance"],
        image_names=image_names, model_name=run.name, batch_size=options["batch_size"], progress=progress,
        random_map=random_map, random_state=RANDOM_STATE,
    )
    timings["faithfulness curves"] = time.perf_counter() - t0
    sanity = None
    stages = options["randomisation_stages"]
    if stages not in (0, False):
        t0 = time.perf_counter()
        methods = ["nave"] + list(maps)
        mopts: Dict[str, Dict[str, Any]] = {
            "nave": {"layers": list(run.layers), "n_clusters": n_clusters, "random_state": seed, **dict(nave_options)}
        }
        for m in maps:
            mopts[m] = dict(method_options.get(m, {}))
        refs = dict(maps)
        refs["nave"] = segments  # the first seed's map, computed with the same options (per-image k-means seeds)
        sanity = randomisation_check(
            model, x, targets.to(x.device), methods=methods, method_options=mopts,
            stages=None if stages is True else stages, reference_maps=refs, progress=progress,
        )
        timings["randomisation"] = time.perf_counter() - t0
    return audit, sanity, timings


# --------------------------------------------------------------------------- render
def render_faithfulness(data: "ReportData", dpi: float) -> Markup:
    """The section (id ``faithfulness``)."""
    from captum_nave.evaluation.faithfulness.audit import ranking_text

    from .sections import _fig_uri, _figure, _num, _pct, _section, _table, _td, _title

    runs = [r for r in data.runs if getattr(r, "faithfulness", None) is not None]
    first = runs[0].faithfulness
    cfg = first.config
    base = cfg.get("baseline")
    base_text = {"blur": f"a Gaussian blur of the image (sigma {_num(cfg.get('blur_sigma'), 1)} px)",
                 "mean": "each image's mean colour", "zeros": "zero (the normalisation mean)"}.get(base, str(base))
    parts: List[Any] = [
        tag("p", READING),
        tag("p", f"Settings: {cfg.get('n_steps')} pixel steps; perturbed pixels take {base_text}; score: "
                 f"{'softmax probability' if cfg.get('output') == 'probability' else 'logit'} of the explained class; "
                 f"units: NAVE segments (ranked by each map's relevance mass, and by segment importance = the drop "
                 f"of the score when the segment is ablated), {cfg.get('slic_segments')} SLIC superpixels, a "
                 f"{'x'.join(str(v) for v in cfg.get('grid') or [])} grid. AUCs are over the fraction of pixels (or "
                 "units) perturbed, means over the images. The random map is a seeded uniform-noise map.",
            class_="note"),
    ]
    with_boxes = any(r.faithfulness.localisation for r in runs)
    head = ["model", "method", "ranking", "deletion AUC (lower is better)", "insertion AUC (higher is better)",
            "insertion - deletion"]
    if with_boxes:
        head += ["pointing game", "energy in box"]
    rows = []
    for run in runs:
        for r in run.faithfulness.rows():
            cells = [_td(run.name, "text"), _td(_method_text(r["method"]), "text"), _td(ranking_text(r["ranking"]), "text"),
                     _td(_num(r["deletion_auc"])), _td(_num(r["insertion_auc"])), _td(_num(r["insertion_minus_deletion"]))]
            if with_boxes:
                cells += [_td(_pct(r["pointing_game"]) if r["ranking"] == "pixels" else ""),
                          _td(_num(r["energy_in_box"]) if r["ranking"] == "pixels" else "")]
            rows.append(cells)
    parts.append(_table(head, rows, caption="Deletion and insertion AUC per model, method and ranking"
                        + (" (pointing game and energy in box from the pixel maps)" if with_boxes else "") + ".",
                        text_cols=(0, 1, 2), id_="faithfulness-table"))
    rrows = []
    for run in runs:
        res = run.randomisation
        if res is None:
            continue
        for m in res.methods:
            for key, vals in res.similarity(m).items():
                mean = np.nanmean(vals.numpy(), axis=1)
                rrows.append([_td(run.name, "text"), _td(_title(m), "text"), _td(_measure_text(key), "text"),
                              _td(", ".join(str(s) for s in res.stages), "text")]
                             + [_td(_num(float(mean[0]))), _td(_num(float(mean[-1])))])
    if rrows:
        parts.append(_table(["model", "method", "similarity to the trained model's map", "stages (randomised down to)",
                             "after the first stage", "after the last stage (all randomised)"], rrows,
                            caption="Cascading model randomisation (Adebayo et al. 2018), means over the images.",
                            text_cols=(0, 1, 2, 3), id_="randomisation-table"))
    for run in runs:
        parts.append(tag("h3", f"Model: {run.name}"))
        aud = run.faithfulness
        shown = [r for r in ("pixels", "segments") if r in aud.rankings] or aud.rankings[:1]
        fig, _ = aud.plot(rankings=shown)
        parts.append(_figure(_fig_uri(fig, dpi), f"deletion and insertion curves ({run.name})",
                             "Mean deletion (left) and insertion (right) curves per method; dashed grey: the random map."))
        if run.randomisation is not None:
            fig, _ = run.randomisation.plot()
            parts.append(_figure(_fig_uri(fig, dpi), f"model randomisation ({run.name})",
                                 "Similarity of each method's map to the trained model's map as more of the model is "
                                 "re-initialised (left: Spearman of |map|, right: SSIM; NAVE: ARI of the segments)."))
    return _section("faithfulness", "Faithfulness", *parts)


def _method_text(method: str) -> str:
    from .sections import _title

    return {"random": "random map (reference)", "segment_importance": "segment importance (ablation)"}.get(
        method, _title(method))


def _measure_text(key: str) -> str:
    return {"spearman": "Spearman of |map|", "ssim": "SSIM of |map|", "ari": "ARI of the segments"}.get(key, key)
