"""Render a :class:`~captum_nave.report.data.ReportData` into the report's HTML.

Every section is built with :func:`captum_nave.report.escaping.tag`, which escapes all
text and attribute values, so user-provided strings (titles, image, model and class
names, error messages) can only ever appear as text. Figures are rendered with
matplotlib (imported here, lazily) and embedded as base64 PNG data URIs.
"""

from __future__ import annotations

import io
import json
import math
import string
from importlib import resources
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .escaping import Markup, escape, figure_data_uri, join, png_data_uri, safe_id, tag

if TYPE_CHECKING:  # pragma: no cover
    from .data import ReportData

__all__ = ["SECTION_IDS", "render", "load_template"]

#: Element ids of the sections, in page order (``faithfulness``, ``registers``, ``lens``
#: and ``corloc`` only when computed / their inputs were given).
SECTION_IDS: Tuple[str, ...] = (
    "overview",
    "side-by-side",
    "segment-relevance",
    "faithfulness",
    "stability",
    "registers",
    "lens",
    "corloc",
    "reproducibility",
)

_METHOD_TITLES = {"nave": "NAVE", "gradcam": "Grad-CAM", "ig": "IG", "lrp": "LRP"}


# --------------------------------------------------------------------------- helpers
def load_template(name: str) -> str:
    """Text of a file in ``captum_nave/report/templates``."""
    return resources.files("captum_nave.report").joinpath("templates", name).read_text(encoding="utf-8")


def _title(method: str) -> str:
    return _METHOD_TITLES.get(method, method)


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 10 ** (-digits)):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}f}"


def _pct(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100.0 * float(v):.{digits}f}%"


def _td(value: Any, cls: Optional[str] = None, **attrs: Any) -> Markup:
    return tag("td", value, class_=cls, **attrs)


def _th(value: Any, cls: Optional[str] = None, **attrs: Any) -> Markup:
    return tag("th", value, class_=cls, **attrs)


def _table(head: Sequence[Any], rows: Sequence[Sequence[Markup]], caption: Optional[Any] = None,
           text_cols: Sequence[int] = (0,), cls: Optional[str] = None, id_: Optional[str] = None) -> Markup:
    head_cells = join(_th(h, "text" if i in text_cols else None, scope="col") for i, h in enumerate(head))
    body = join(tag("tr", join(r)) for r in rows)
    return tag(
        "table",
        tag("caption", caption) if caption is not None else None,
        tag("thead", tag("tr", head_cells)),
        tag("tbody", body),
        class_=cls,
        id=id_,
    )


def _figure(uri: str, alt: str, caption: Optional[Any] = None, id_: Optional[str] = None) -> Markup:
    return tag("figure", tag("img", src=uri, alt=alt, loading="lazy"), tag("figcaption", caption) if caption else None, id=id_)


def _rgb(color: Sequence[float]) -> str:
    r, g, b = (int(round(255 * float(c))) for c in color[:3])
    return f"rgb({r}, {g}, {b})"


#: Opacity of the segment overlays next to the relevance tables (and of their swatches).
_RELEVANCE_ALPHA = 0.5


def _swatch(seg_id: int, colors: np.ndarray) -> Markup:
    return join([tag("span", "", class_="swatch", style=f"background: {_rgb(colors[seg_id])}"), str(seg_id)])


def _bar(share: float, scale: float = 80.0) -> Markup:
    if share is None or not math.isfinite(share):
        return Markup("")
    width = max(0.0, min(1.0, float(share))) * scale
    return tag("span", "", class_="bar", style=f"width: {width:.1f}px")


def _array_png(rgb: np.ndarray) -> str:
    from PIL import Image

    arr = (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return png_data_uri(buf.getvalue())


def _fig_uri(fig: Any, dpi: float) -> str:
    return figure_data_uri(fig, dpi=dpi)


def _options_text(options: Dict[str, Any]) -> str:
    from .builder import _plain

    parts = []
    for k, v in options.items():
        if k in ("additional_forward_args",):
            continue
        parts.append(f"{k}={json.dumps(_plain(v), default=repr)}")
    return "; ".join(parts) if parts else "defaults"


def _section(id_: str, heading: str, *content: Any) -> Markup:
    return tag("section", tag("h2", heading), *content, id=id_)


# --------------------------------------------------------------------------- sections
def _overview(data: "ReportData") -> Markup:
    n, runs = len(data.image_names), data.runs
    h, w = data.images.shape[-2:]
    intro = tag(
        "p",
        f"{n} image{'s' if n != 1 else ''} at {h}x{w} pixels, {len(runs)} model{'s' if len(runs) != 1 else ''}; "
        f"methods: {', '.join(_title(m) for m in data.methods)}; NAVE with K = {data.config['n_clusters']} "
        f"segments, k-means seeds {', '.join(str(s) for s in data.config['seeds'])}.",
    )
    head = ["image", "original size"] + [f"{r.name}: explained class (probability)" for r in runs]
    rows = []
    for i, name in enumerate(data.image_names):
        oh, ow = data.image_sizes[i]
        cells = [_td(name, "text"), _td(f"{oh}x{ow}")]
        for r in runs:
            cells.append(_td(f"{r.target_names[i]} ({_pct(float(r.target_probs[i]))})", "text"))
        rows.append(cells)
    table = _table(head, rows, caption="Images and the class each model's maps explain (its prediction unless a target was given).",
                   text_cols=range(len(head)), id_="overview-table")
    thumbs = []
    for i, name in enumerate(data.image_names):
        thumbs.append(tag("figure", tag("img", src=_array_png(data.images[i].permute(1, 2, 0).numpy()), alt=f"image {name}",
                                          style="width: 160px"), tag("figcaption", name)))
    gallery = tag("div", join(thumbs), style="display: flex; flex-wrap: wrap; gap: 12px")
    parts: List[Any] = [intro, gallery, table]
    if data.warnings:
        parts.append(tag("div", tag("strong", "Warnings"), tag("ul", join(tag("li", w) for w in data.warnings)), class_="errors", id="warnings"))
    return _section("overview", "Overview", *parts)


#: What each method's convergence delta should be compared with, and what a large one means.
DELTA_MEANING: Dict[str, Tuple[str, str]] = {
    "ig": ("F(x) - F(baseline)", "too few integration steps: raise --ig-steps (n_steps)"),
    "lrp": ("the target logit", "relevance absorbed by bias terms (and epsilon) never reaches the pixels"),
}


def convergence_text(method: str, raw: Any, delta: Any) -> str:
    """The |convergence delta| cell: absolute, relative to the conserved quantity, meaning.

    For IG and LRP the delta is ``sum(raw) - reference`` (reference: ``F(x) - F(baseline)``,
    the target logit), so ``reference = sum(raw) - delta`` and the relative delta is
    ``|delta| / |reference|`` per image.
    """
    if delta is None:
        return "n/a"
    d = delta.detach().double().cpu().reshape(-1)
    text = f"mean {_num(float(d.abs().mean()))}, max {_num(float(d.abs().max()))}"
    meaning = DELTA_MEANING.get(method)
    if meaning is None or raw is None:
        return text
    total = raw.detach().double().cpu().reshape(d.shape[0], -1).sum(1)
    ref = (total - d).abs()
    rel = d.abs() / ref.clamp_min(1e-12)
    return (f"{text}; relative to |{meaning[0]}| (mean {_num(float(ref.mean()))}): mean {_pct(float(rel.mean()))}, "
            f"max {_pct(float(rel.max()))}. A large value: {meaning[1]}")


def _side_by_side(data: "ReportData", dpi: float) -> Markup:
    from captum_nave.visualization import plot_side_by_side

    parts: List[Any] = [
        tag("p", "Each row is one image: the image, its NAVE segments (categorical colours, boundaries in white), "
                 "and the pixel attribution maps of the class in the Overview. Maps without negative values (Grad-CAM; "
                 "LRP with the z+ rules of its default composite for CNNs, epsilon-plus-flat) are drawn in viridis; "
                 "signed maps (IG; LRP-epsilon) in red (positive) and blue (negative), centred at 0; colour limits "
                 "are at the 99th percentile of |value| of each map.", class_="note"),
    ]
    for m_idx, run in enumerate(data.runs):
        panels: Dict[str, Any] = {"nave": run.nave.segments.cpu()}
        for method in data.methods:
            if method in run.attributions:
                panels[method] = run.attributions[method].maps.cpu().float()
        fig, _ = plot_side_by_side(data.images, {run.name: panels}, image_names=data.image_names)
        uri = _fig_uri(fig, dpi)
        rows = [[_td("NAVE", "text"), _td(f"layers {', '.join(run.layers)}; K = {data.config['n_clusters']}; seed {data.config['seeds'][0]}", "text"),
                 _td("n/a"), _td(_num(run.timings.get("nave")))]]
        for method in data.methods:
            if method == "nave":
                continue
            if method in run.errors:
                rows.append([_td(_title(method), "text"), _td(join([tag("span", "failed: ", class_="fail"), run.errors[method]]), "text"), _td("n/a"), _td("n/a")])
                continue
            res = run.attributions[method]
            delta = convergence_text(method, res.raw, res.delta)
            rows.append([_td(_title(method), "text"), _td(_options_text(res.options), "text"), _td(delta, "text"), _td(_num(run.timings.get(method)))])
        table = _table(["method", "options used", "|convergence delta|", "time (s)"], rows,
                       caption="Options of every panel. The convergence delta is how far the map's total is from "
                               "the quantity it should add up to: IG's sum(attributions) - (F(x) - F(baseline)), "
                               "LRP's sum(relevance) - target logit; it is given relative to that quantity, per image "
                               "(mean and max over the images). For IG a large relative delta means too few "
                               "integration steps (raise --ig-steps); for LRP it is the relevance that the bias terms "
                               "(and epsilon) absorb on the way down, so the map accounts for only part of the logit; the z+ and gamma "
                               "rules of the CNN composites send most of it to the biases of a network with BatchNorm.",
                       text_cols=(0, 1, 2))
        parts.append(tag("h3", f"Model: {run.name}", id=safe_id("sbs-model", m_idx)))
        parts.append(_figure(uri, f"side-by-side maps of model {run.name}",
                             f"Image | NAVE | {' | '.join(_title(m) for m in data.methods if m != 'nave' and m in run.attributions)} for model {run.name}."))
        parts.append(table)
        if run.errors:
            parts.append(tag("div", tag("strong", "Methods that failed on this model"),
                             tag("ul", join(tag("li", f"{_title(k)}: {v}") for k, v in run.errors.items())), class_="errors"))
    return _section("side-by-side", "Side by side: " + ", ".join(_title(m) for m in data.methods), *parts)


def _relevance(data: "ReportData") -> Markup:
    from captum_nave.visualization import legend_colors, overlay_segments

    methods = [m for m in data.methods if m != "nave"]
    parts: List[Any] = [
        tag("p", "For every NAVE segment: its share of the image area; for each attribution map, the segment's "
                 "share of the map's total absolute relevance (bar) and its density = relevance share / area share "
                 "(1: as much relevance as area; above 1: the segment attracts more relevance than its size); and the "
                 "drop of the explained class's score when the segment is replaced by the baseline (0 in normalised "
                 "input space, i.e. the mean colour), measured with Captum's FeatureAblation on the NAVE map as "
                 "feature_mask. Shares of one column add up to 100%.", class_="note"),
    ]
    for m_idx, run in enumerate(data.runs):
        parts.append(tag("h3", f"Model: {run.name}", id=safe_id("rel-model", m_idx)))
        seg_all = run.nave.segments.cpu()
        for i, name in enumerate(data.image_names):
            seg = seg_all[i, 0]
            ids = [int(k) for k in torch.unique(seg)]
            colors = legend_colors(max(ids) + 1, _RELEVANCE_ALPHA)  # swatches match the overlay
            area = {k: float((seg == k).sum()) / seg.numel() for k in ids}
            per_method: Dict[str, Dict[int, Dict[str, Any]]] = {}
            for method in methods:
                if method in run.relevance:
                    per_method[method] = {r["segment"]: r for r in run.relevance[method].for_image(i).rows}
            top = [_th("segment", "text", rowspan=2, scope="col"), _th("area", rowspan=2, scope="col")]
            sub = []
            for method in per_method:
                top.append(_th(_title(method), colspan=2, scope="colgroup"))
                sub += [_th("|R| share", scope="col"), _th("density", scope="col")]
            if run.importance is not None:
                top.append(_th(join(["ablation", tag("br"), "score drop"]), rowspan=2, scope="col"))
            thead = tag("thead", tag("tr", join(top)), tag("tr", join(sub)) if sub else None)
            rows = []
            for k in ids:
                cells = [_td(_swatch(k, colors), "text"), _td(_pct(area[k]))]
                for method, table in per_method.items():
                    r = table.get(k)
                    share = r["absolute_share"] if r else float("nan")
                    cells.append(_td(join([_pct(share), _bar(share)])))
                    cells.append(_td(_num(r["density"] if r else float("nan"), 2)))
                if run.importance is not None:
                    v = float(run.importance[i, k]) if k < run.importance.shape[1] else float("nan")
                    cells.append(_td(_num(v)))
                rows.append(cells)
            overlay = overlay_segments(data.images[i], seg, alpha=_RELEVANCE_ALPHA)
            thumb = tag("figure", tag("img", src=_array_png(overlay), alt=f"NAVE segments of {name} ({run.name})", style="width: 180px"),
                        tag("figcaption", f"NAVE segments, explained class: {run.target_names[i]}"))
            details = []
            for method in per_method:
                full = run.relevance[method].for_image(i).rows
                cols = ["segment", "pixels", "area_share", "positive", "negative", "absolute", "net",
                        "positive_share", "negative_share", "absolute_share", "density"]
                drows = [[_td(r["segment"], "text")] + [_td(_num(r[c], 4) if isinstance(r[c], float) else r[c]) for c in cols[1:]] for r in full]
                details.append(tag("details", tag("summary", f"All {_title(method)} columns"), _table(cols, drows)))
            parts.append(tag("h4", f"{name}", id=safe_id(f"rel-{m_idx}-image", i)))
            parts.append(tag("div", thumb, tag("div", tag("table", thead, tag("tbody", join(tag("tr", join(r)) for r in rows)), class_="relevance"), join(details), class_="tablewrap"), class_="rel"))
    return _section("segment-relevance", "Per-segment relevance", *parts)


def _stability(data: "ReportData", dpi: float, max_figures: int) -> Markup:
    from captum_nave.visualization import plot_stability

    seeds = data.config["seeds"]
    if len(seeds) < 2:
        return _section("stability", "Stability across seeds",
                        tag("p", "Only one k-means seed was run, so stability was not measured (give at least two seeds)."))
    parts: List[Any] = [
        tag("p", f"NAVE maps computed with the k-means seeds {', '.join(str(s) for s in seeds)}. The adjusted Rand "
                 "index (ARI) compares two partitions of the pixels (1: identical up to a renaming of the segments, "
                 "about 0: unrelated); the table gives the mean over all pairs of seeds. The figures show the paper's "
                 "Fig. 4: each pixel painted with the mean colour of its segment, averaged over seeds - stable regions "
                 "stay sharp, unstable ones blur.", class_="note"),
    ]
    head = ["image"] + [f"{r.name}: mean pairwise ARI" for r in data.runs]
    rows = []
    for i, name in enumerate(data.image_names):
        rows.append([_td(name, "text")] + [_td(_num(r.stability[i])) for r in data.runs])
    rows.append([_td(tag("strong", "mean"), "text")] + [_td(tag("strong", _num(float(np.mean(r.stability))))) for r in data.runs])
    parts.append(_table(head, rows, id_="stability-table", text_cols=(0,)))
    for m_idx, run in enumerate(data.runs):
        parts.append(tag("h3", f"Model: {run.name}", id=safe_id("stab-model", m_idx)))
        for i in range(min(max_figures, len(data.image_names))):
            fig, _ = plot_stability(data.images[i], run.seed_maps[:, i])
            parts.append(_figure(_fig_uri(fig, dpi), f"stability of {data.image_names[i]} ({run.name})",
                                 f"{data.image_names[i]}: mean pairwise ARI {_num(run.stability[i])} over {len(seeds)} seeds."))
        if len(data.image_names) > max_figures:
            parts.append(tag("p", f"Figures for the first {max_figures} images; the table covers all.", class_="note"))
    return _section("stability", "Stability across seeds", *parts)


def _registers(data: "ReportData", dpi: float) -> Markup:
    res = data.register
    a, b = res.names
    conf = int(round(100 * float(res.config.get("confidence", 0.95))))
    parts: List[Any] = [
        tag("p", f"Model A = {a} (without registers), model B = {b} (with registers), measured at block "
                 f"{res.layer[0]} (A) and {res.layer[1]} (B) on the same {res.n_images} images. Differences are B - A "
                 f"with a paired bootstrap {conf}% confidence interval; see captum_nave.registers for the definitions.",
            class_="note"),
    ]
    rows = []
    for r in res.aggregated:
        d = r.diff
        rows.append([
            _td(r.measure, "text"), _td(r.description, "text"), _td(_num(r.mean_a)), _td(_num(r.mean_b)),
            _td(_num(d.mean_diff) if d is not None else ""),
            _td(f"[{_num(d.low)}, {_num(d.high)}]" if d is not None else ""),
        ])
    parts.append(_table(["measure", "description", f"A: {a}", f"B: {b}", "B - A", f"{conf}% CI"], rows,
                        caption="Aggregated measures (means over images).", text_cols=(0, 1), id_="registers-table"))
    prow = []
    for name, vals in res.pair.items():
        v = np.asarray(vals, dtype=np.float64)
        prow.append([_td(name, "text"), _td(_num(float(np.nanmean(v)) if v.size else float("nan")))])
    floor_a = float(np.nanmean(res.per_image["nave_seed_ari"][0]))
    floor_b = float(np.nanmean(res.per_image["nave_seed_ari"][1]))
    prow.append([_td("noise floor: ARI between two seeds of A", "text"), _td(_num(floor_a))])
    prow.append([_td("noise floor: ARI between two seeds of B", "text"), _td(_num(floor_b))])
    parts.append(_table(["between the two models", "mean"], prow,
                        caption="Agreement of the NAVE maps of A and B on the common patch grid, next to each model's seed noise floor."))
    if res.corloc is None and data.corloc is not None:
        parts.append(tag("p", "CorLoc with McNemar's test is compared here only when every image has a box "
                              f"({data.corloc.n_without_boxes} image(s) have none); see the CorLoc section.", class_="note"))
    if res.corloc is not None:
        c = res.corloc
        parts.append(tag("p", f"CorLoc ({c.strategy} boxes): A {_pct(c.corloc_a)}, B {_pct(c.corloc_b)}; McNemar "
                              f"n01 = {c.mcnemar.n01}, n10 = {c.mcnemar.n10}, p = {c.mcnemar.pvalue:.4g}."))
    fig, _ = res.plot(list(range(min(4, res.n_images))))
    parts.append(_figure(_fig_uri(fig, dpi), f"register comparison of {a} and {b}",
                         "Image | NAVE A | NAVE B | token-norm map A | B | CLS attention A | B."))
    return _section("registers", "Register comparison", *parts)


def _corloc(data: "ReportData", dpi: float) -> Markup:
    from captum_nave.evaluation.corloc import CorLocProtocol

    c = data.corloc
    p = c.protocol
    methods = list(c.selections)
    parts: List[Any] = [
        tag("p", f"The paper's object-extraction proxy task on the {len(c.image_indices)} images with boxes "
                 f"({c.n_without_boxes} without a box inside the report's crop were left out): NAVE clusters are split "
                 f"into 4-connected components (area > {p.get('min_area')} px, border {p.get('border')} px removed), the "
                 f"component whose inner / outer box best matches a ground-truth box is selected (an oracle), and an image "
                 "is correctly localised when the selected component's outer box reaches the IoU threshold with the "
                 f"matched box; {CorLocProtocol.from_dict(dict(p)).describe()}. "
                 "SLIC superpixels with the same K are the baseline.", class_="note"),
    ]
    rows = []
    for m in methods:
        rows.append([_td(m, "text")] + [_td(v) for s in ("inner", "outer") for v in (_pct(c.corloc(m, s)), _num(c.mean_iou(m, s)))]
                    + [_td(len(c.selections[m]))])
    parts.append(_table(["method", "inner CorLoc", "inner mean IoU", "outer CorLoc", "outer mean IoU", "images"], rows,
                        caption="CorLoc per method and box strategy.", id_="corloc-table"))
    prow = []
    for j, i in enumerate(c.image_indices):
        cells = [_td(data.image_names[i], "text"), _td(len(c.boxes[j]))]
        for m in methods:
            for s in ("inner", "outer"):
                sel = c.selections[m][j][s]
                mark = tag("span", "hit", class_="ok") if sel.correct else tag("span", "miss", class_="fail")
                cells.append(_td(join([_num(sel.iou), " ", mark])))
        prow.append(cells)
    head = ["image", "boxes"] + [f"{m} {s}" for m in methods for s in ("inner", "outer")]
    parts.append(tag("details", tag("summary", "Per-image IoU"), _table(head, prow)))
    parts.append(_figure(_fig_uri(_corloc_figure(data), dpi), "CorLoc selections",
                         "NAVE segments with the ground-truth boxes (white) and the selected component's inner box "
                         "(orange, dashed) and outer box (yellow)."))
    return _section("corloc", "CorLoc (object localisation)", *parts)


def _corloc_figure(data: "ReportData", max_images: int = 6) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from captum_nave.visualization import overlay_segments

    c = data.corloc
    idx = list(range(min(max_images, len(c.image_indices))))
    runs = data.runs
    fig = Figure(figsize=(2.6 * len(runs), 2.6 * max(1, len(idx))), layout="constrained")
    axes = np.asarray(fig.subplots(max(1, len(idx)), len(runs), squeeze=False))
    for r, j in enumerate(idx):
        i = c.image_indices[j]
        for col, run in enumerate(runs):
            ax = axes[r, col]
            ax.imshow(overlay_segments(data.images[i], run.nave.segments[i, 0].cpu(), alpha=0.45))
            for box in c.boxes[j]:
                ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec="white", lw=2))
            sel = c.selections[run.name][j]
            if sel["inner"].selection_box is not None:
                bx = sel["inner"].selection_box
                ax.add_patch(Rectangle((bx[0], bx[1]), bx[2] - bx[0], bx[3] - bx[1], fill=False, ec="#E69F00", lw=2, ls="--"))
            if sel["outer"].outer_box is not None:
                bx = sel["outer"].outer_box
                ax.add_patch(Rectangle((bx[0], bx[1]), bx[2] - bx[0], bx[3] - bx[1], fill=False, ec="#F0E442", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{run.name}\ninner IoU {sel['inner'].iou:.2f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(data.image_names[i], fontsize=8)
    return fig


def _reproducibility(data: "ReportData") -> Markup:
    from .builder import _plain

    parts: List[Any] = [
        tag("p", "Everything needed to reproduce the numbers above: rerun with the same configuration, package "
                 "versions, weights (identified by the SHA-256 of their state dict) and images (SHA-256 of the resized "
                 "[0, 1] tensors).", class_="note"),
        tag("h3", "Configuration"),
        _table(["setting", "value"],
               [[_td(k, "text"), _td(tag("code", json.dumps(v, default=repr, ensure_ascii=False)), "text")]
                for k, v in _plain(data.config).items()],
               text_cols=(0, 1), id_="configuration"),
    ]
    vrows = [[_td(k, "text"), _td(v if v is not None else "not installed", "text")] for k, v in data.versions.items()]
    prows = [[_td(k, "text"), _td(v, "text")] for k, v in data.platform.items()]
    parts.append(tag("div", tag("div", tag("h3", "Package versions"), _table(["package", "version"], vrows, text_cols=(0, 1), id_="versions-table")),
                     tag("div", tag("h3", "Platform"), _table(["", ""], prows, text_cols=(0, 1))), class_="grid2"))
    mrows = []
    for r in data.runs:
        unchanged = tag("span", "yes", class_="ok") if r.weights_unchanged else tag("span", "NO", class_="fail")
        mrows.append([
            _td(r.name, "text"), _td(str(r.info.get("source")), "text"), _td(str(r.info.get("pretrained")), "text"),
            _td(", ".join(r.layers), "text"), _td(r.info.get("num_classes") if r.info.get("num_classes") is not None else "n/a"),
            _td(f"mean {list(r.info.get('mean') or [])}, std {list(r.info.get('std') or [])}", "text"),
            _td(r.weights_sha256, "hash"), _td(unchanged),
        ])
    parts.append(tag("h3", "Models"))
    parts.append(_table(["model", "source", "pretrained", "NAVE layers", "classes", "normalisation", "weights SHA-256 (state dict)", "unchanged after run"],
                        mrows, text_cols=(0, 1, 2, 3, 5, 6), id_="models-table"))
    h, w = data.images.shape[-2:]
    irows = [[_td(n, "text"), _td(f"{s[0]}x{s[1]}"), _td(f"{h}x{w}"), _td(sha, "hash")]
             for n, s, sha in zip(data.image_names, data.image_sizes, data.image_sha256)]
    parts.append(tag("h3", "Images"))
    parts.append(_table(["image", "original size", "report size", "SHA-256 (resized tensor)"], irows, text_cols=(0, 3), id_="images-table"))
    parts.append(tag("h3", "Seeds"))
    parts.append(tag("p", f"k-means seeds {', '.join(str(s) for s in data.config['seeds'])} (the first for the maps shown); "
                          "torch's global RNG is not used by NAVE; IG 'uniform' baselines and Shapley sampling are seeded by their options."))
    stages: List[str] = []
    for r in data.runs:
        for k in r.timings:
            if k not in stages:
                stages.append(k)
    trows = [[_td(r.name, "text")] + [_td(_num(r.timings.get(s), 2)) for s in stages] for r in data.runs]
    parts.append(tag("h3", "Timings (seconds)"))
    parts.append(_table(["model"] + stages, trows, id_="timings-table"))
    parts.append(tag("p", "; ".join(f"{k}: {_num(v, 2)} s" for k, v in data.timings.items())))
    return _section("reproducibility", "Reproducibility", *parts)


# --------------------------------------------------------------------------- page
def render(data: "ReportData", *, dpi: float = 80, max_stability_figures: int = 4) -> str:
    """The full HTML page of ``data``."""
    from captum_nave import __version__

    sections: List[Tuple[str, str, Markup]] = [
        ("overview", "Overview", _overview(data)),
        ("side-by-side", "Side by side", _side_by_side(data, dpi)),
        ("segment-relevance", "Per-segment relevance", _relevance(data)),
    ]
    if any(getattr(r, "faithfulness", None) is not None for r in data.runs):
        from .faithfulness import render_faithfulness

        sections.append(("faithfulness", "Faithfulness", render_faithfulness(data, dpi)))
    sections += [
        ("stability", "Stability", _stability(data, dpi, max_stability_figures)),
    ]
    if data.register is not None:
        sections.append(("registers", "Registers", _registers(data, dpi)))
    if any(getattr(r, "lens", None) is not None for r in data.runs):
        from .lens import render_lens

        sections.append(("lens", "Lens", render_lens(data, dpi)))
    if data.corloc is not None:
        sections.append(("corloc", "CorLoc", _corloc(data, dpi)))
    sections.append(("reproducibility", "Reproducibility", _reproducibility(data)))
    nav = tag("ol", join(tag("li", tag("a", label, href=f"#{sid}")) for sid, label, _ in sections))
    subtitle = (
        f"captum-nave {__version__} - NAVE (Neuro-Activated Vision Explanations) beside pixel attributions - "
        f"generated {data.platform.get('generated (UTC)', '')} UTC"
    )
    footer = tag("p", "Self-contained report: figures embedded as PNG data, no scripts, no external resources. "
                      f"Generated by captum-nave {__version__}.")
    page = string.Template(load_template("report.html")).substitute(
        version=escape(__version__),
        title=escape(data.title),
        style=Markup(load_template("report.css")),
        subtitle=escape(subtitle),
        nav=nav,
        sections=join(s for _, _, s in sections),
        footer=footer,
    )
    return page
