"""Compare a ViT without registers with one with registers on the same images.

:func:`compare_registers` runs every measure of :mod:`captum_nave.registers` on
both models and returns a :class:`RegisterComparison` with per-image values,
paired aggregates (mean difference with a bootstrap confidence interval), set-level
CKA values, NAVE agreement with its seed noise floor, optional CorLoc with a
McNemar test, and the side-by-side figure.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor, nn

from .agreement import label_agreement, nave_grid_labels, outlier_cluster_share
from .attention import attention_entropy, attention_map, attention_masses
from .capture import TokenStatistics, collect_token_statistics
from .layout import ViTLayout, vit_adapter
from .norms import OutlierReport, detect_outliers, norm_map, outlier_report
from .stats import BootstrapCI, McNemarResult, mcnemar_test, paired_bootstrap_ci

__all__ = ["compare_registers", "RegisterComparison", "AggregateRow", "CorLocComparison"]

#: Per-image measures, in table order, with a short description.
MEASURES: Dict[str, str] = {
    "outlier_fraction": "share of patch tokens with outlier norm (block output)",
    "max_median_ratio": "max / median patch-token norm (block output)",
    "first_outlier_layer": "first block whose output has an outlier (NaN: none)",
    "max_register_ratio": "max register norm / median patch norm (NaN: no registers)",
    "attn_entropy": "normalised entropy of the head-averaged attention over patches",
    "attn_entropy_heads": "mean over heads of the normalised per-head entropy",
    "mass_cls": "attention mass of the query on the CLS token",
    "mass_registers": "attention mass on register tokens",
    "mass_patches": "attention mass on patch tokens",
    "mass_outlier_patches": "attention mass on outlier patches (block input)",
    "norm_skip": "norm of the skip (incoming CLS) contribution",
    "norm_patches": "norm of the patch contribution to the CLS update",
    "norm_registers": "norm of the register contribution to the CLS update",
    "cos_patches_attn": "cosine(patch contribution, attention output)",
    "cos_registers_attn": "cosine(register contribution, attention output)",
    "cos_skip_residual": "cosine(skip, CLS after attention)",
    "cos_patches_residual": "cosine(patch contribution, CLS after attention)",
    "nave_seed_ari": "ARI between two k-means seeds of the same model (noise floor)",
    "outlier_cluster_share": "share of NAVE clusters dominated by outlier tokens",
    "corloc_hit": "object correctly localised (IoU >= threshold)",
    "lens_patches": "class-embedding lens: share of patch tokens with the predicted class on top (block output)",
    "lens_registers": "class-embedding lens: share of register tokens with the predicted class on top",
    "lens_cls_first_layer": "class-embedding lens: first block from which the CLS token keeps the predicted class on top",
}

PAIR_MEASURES: Dict[str, str] = {
    "ari_between_models": "ARI between the NAVE maps of the two models (common grid)",
    "nmi_between_models": "NMI between the NAVE maps of the two models (common grid)",
}


@dataclass(frozen=True)
class AggregateRow:
    """One measure aggregated over images.

    ``mean_a`` / ``mean_b`` are NaN-ignoring means; ``diff`` is the bootstrap result
    for ``b - a`` on complete pairs (``None`` for set-level values).
    """

    measure: str
    mean_a: float
    mean_b: float
    diff: Optional[BootstrapCI]
    description: str = ""


@dataclass(frozen=True)
class CorLocComparison:
    """CorLoc of both models on the same images with McNemar's test."""

    hits_a: np.ndarray
    hits_b: np.ndarray
    corloc_a: float
    corloc_b: float
    mcnemar: McNemarResult
    strategy: str


@dataclass
class RegisterComparison:
    """Result of :func:`compare_registers`.

    Attributes
    ----------
    names : (str, str)
        Display names of model A and model B.
    layer : (int, int)
        Block index (non-negative) measured in each model.
    per_image : dict of str -> (ndarray (N,), ndarray (N,))
        Per-image values of every measure in :data:`MEASURES` for A and B.
    pair : dict of str -> ndarray (N,)
        Per-image values comparing the two models (ARI / NMI between their NAVE maps).
    aggregated : list of AggregateRow
    set_level : dict of str -> (float, float)
        Linear CKA over the image set of CLS contributions (A, B).
    register_high_share : (ndarray or None, ndarray or None)
        Per model, shape (L, R): share of images in which register r has an outlier norm
        at the output of block l (``None`` without registers).
    cls_layer_cosine : (ndarray or None, ndarray or None)
        Per model, shape (L,): mean cosine of the CLS token after each block with the
        final CLS token.
    corloc : CorLocComparison or None
    stats : (TokenStatistics, TokenStatistics)
    outliers : (OutlierReport, OutlierReport)
    nave : (NaveResult, NaveResult)
        NAVE results of the first seed.
    display : Tensor of shape (N, 3, H, W)
        Images in [0, 1] for figures.
    config : dict
    lens : (LensResult or None, LensResult or None)
        The class-embedding lens of each model (:func:`captum_nave.lens.class_lens`,
        the model's predicted class); ``None`` for a model without a classifier head.
    """

    names: Tuple[str, str]
    layer: Tuple[int, int]
    per_image: Dict[str, Tuple[np.ndarray, np.ndarray]]
    pair: Dict[str, np.ndarray]
    aggregated: List[AggregateRow]
    set_level: Dict[str, Tuple[float, float]]
    register_high_share: Tuple[Optional[np.ndarray], Optional[np.ndarray]]
    cls_layer_cosine: Tuple[Optional[np.ndarray], Optional[np.ndarray]]
    corloc: Optional[CorLocComparison]
    stats: Tuple[TokenStatistics, TokenStatistics]
    outliers: Tuple[OutlierReport, OutlierReport]
    nave: Tuple[Any, Any]
    display: Tensor
    config: Dict[str, Any] = field(default_factory=dict)
    lens: Tuple[Any, Any] = (None, None)

    @property
    def n_images(self) -> int:
        """Number of images compared."""
        return int(self.display.shape[0])

    def row(self, measure: str) -> AggregateRow:
        """The aggregate row of one measure."""
        for r in self.aggregated:
            if r.measure == measure:
                return r
        raise KeyError(f"measure: no aggregate row {measure!r}; have {[r.measure for r in self.aggregated]}")

    # ------------------------------------------------------------------ export
    def to_markdown(self, digits: int = 3) -> str:
        """Summary table (aggregated measures, set-level CKA, CorLoc, registers) as Markdown."""
        a, b = self.names
        f = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
        conf = int(round(100 * self.config.get("confidence", 0.95)))
        lines = [
            f"## Register comparison: {a} vs {b}",
            "",
            f"{self.n_images} images; blocks {self.layer[0]} ({a}) and {self.layer[1]} ({b}); "
            f"NAVE K={self.config.get('n_clusters')}, seeds {self.config.get('seeds')}; outliers: "
            f"{self._outlier_rule()}.",
            "",
            f"| measure | {a} | {b} | {b} - {a} | {conf}% CI (bootstrap) |",
            "|---|---|---|---|---|",
        ]
        for r in self.aggregated:
            if r.diff is None:
                lines.append(f"| {r.measure} | {f(r.mean_a)} | {f(r.mean_b)} | | |")
            else:
                lines.append(
                    f"| {r.measure} | {f(r.mean_a)} | {f(r.mean_b)} | {f(r.diff.mean_diff)} | "
                    f"[{f(r.diff.low)}, {f(r.diff.high)}] |"
                )
        lines += ["", f"| between models | mean | {conf}% CI (bootstrap) |", "|---|---|---|"]
        for name, vals in self.pair.items():
            ci = paired_bootstrap_ci(np.zeros_like(vals), vals, n_boot=self.config.get("n_boot", 2000),
                                     confidence=self.config.get("confidence", 0.95),
                                     random_state=self.config.get("random_state", 0))
            lines.append(f"| {name} | {f(ci.mean_diff)} | [{f(ci.low)}, {f(ci.high)}] |")
        lines.append(
            f"\nNoise floor (ARI between seeds): {a} {f(float(np.nanmean(self.per_image['nave_seed_ari'][0])))}, "
            f"{b} {f(float(np.nanmean(self.per_image['nave_seed_ari'][1])))}."
        )
        if self.corloc is not None:
            c = self.corloc
            lines.append(
                f"\nCorLoc ({c.strategy}): {a} {f(c.corloc_a)}, {b} {f(c.corloc_b)}; McNemar "
                f"{'exact binomial' if c.mcnemar.exact else 'chi-square (continuity corrected)'}: "
                f"n01={c.mcnemar.n01}, n10={c.mcnemar.n10}, p={c.mcnemar.pvalue:.4g}."
            )
            proto = self.config.get("corloc_protocol")
            if proto is not None:
                from captum_nave.evaluation.corloc import CorLocProtocol

                lines.append(f"CorLoc {CorLocProtocol.from_dict(dict(proto)).describe()}.")
        for name, share in zip(self.names, self.register_high_share):
            if share is not None:
                last = ", ".join(f"r{i}: {f(float(v))}" for i, v in enumerate(share[-1]))
                lines.append(f"\nRegisters with outlier norm at the last block ({name}, share of images): {last}.")
        for name, curve in zip(self.names, self.cls_layer_cosine):
            if curve is not None:
                lines.append(
                    f"\nCosine of the CLS token after each block with the final CLS ({name}): "
                    + ", ".join(f(float(v)) for v in curve) + "."
                )
        return "\n".join(lines) + "\n"

    def _outlier_rule(self) -> str:
        c = self.config
        if c.get("outlier_method") == "fixed":
            return f"norm > {c.get('outlier_threshold')}"
        rule = f"norm > median + {c.get('outlier_k')} * 1.4826 * MAD"
        if c.get("outlier_min_ratio") is not None:
            rule += f" and >= {c.get('outlier_min_ratio')} * median"
        return rule

    def to_csv(self, path: Union[str, "os.PathLike[str]"], which: str = "per_image") -> str:
        """Write a CSV file and return its path.

        Parameters
        ----------
        path : str or path-like
        which : {"per_image", "aggregated"}, default "per_image"
            ``"per_image"``: long format, columns ``image, model, measure, value``
            (``model`` is a model name, or ``"between"`` for ARI / NMI between models).
            ``"aggregated"``: columns ``measure, mean_a, mean_b, diff, ci_low, ci_high, n``.
        """
        if which not in ("per_image", "aggregated"):
            raise ValueError(f"which: expected 'per_image' or 'aggregated', got {which!r}")
        from captum_nave.files import atomic_write

        p = os.fspath(path)
        with atomic_write(p, newline="") as fh:
            w = csv.writer(fh)
            if which == "per_image":
                w.writerow(["image", "model", "measure", "value"])
                for i in range(self.n_images):
                    for m, (va, vb) in self.per_image.items():
                        w.writerow([i, self.names[0], m, _fmt(va[i])])
                        w.writerow([i, self.names[1], m, _fmt(vb[i])])
                    for m, v in self.pair.items():
                        w.writerow([i, "between", m, _fmt(v[i])])
            else:
                w.writerow(["measure", f"mean_{self.names[0]}", f"mean_{self.names[1]}", "diff", "ci_low", "ci_high", "n"])
                for r in self.aggregated:
                    d = r.diff
                    w.writerow([r.measure, _fmt(r.mean_a), _fmt(r.mean_b)] + (
                        [_fmt(d.mean_diff), _fmt(d.low), _fmt(d.high), d.n] if d is not None else ["", "", "", ""]
                    ))
        return p

    # ------------------------------------------------------------------ figure
    def plot(
        self,
        images: Optional[Sequence[int]] = None,
        *,
        alpha: float = 0.55,
        plt_fig_axis: Optional[Tuple[Any, Any]] = None,
        show: bool = False,
    ):
        """Figure: image | NAVE A | NAVE B | norm map A | norm map B | attention A | attention B.

        Norm maps are the patch-token norms at the output of the measured block;
        attention maps are the head-averaged CLS attention (mean patch-query attention
        without CLS) of that block, on the patches. Both are drawn over the full image.

        Parameters
        ----------
        images : sequence of int, optional
            Image indices, one row each (default: the first four).
        alpha : float
            Weight of the NAVE segment colours over the image.
        plt_fig_axis : (Figure, Axes), optional
            Existing figure and ``len(images) x 7`` axes.
        show : bool, default False
            Show with pyplot; otherwise a pyplot-free :class:`~matplotlib.figure.Figure`.

        Returns
        -------
        (Figure, ndarray of Axes of shape (rows, 7))
        """
        from captum_nave.visualization import overlay_segments

        idx = list(range(min(4, self.n_images))) if images is None else [int(i) for i in images]
        for i in idx:
            if not 0 <= i < self.n_images:
                raise ValueError(f"images: expected indices in [0, {self.n_images - 1}], got {list(images or [])!r}")
        rows, cols = len(idx), 7
        if rows == 0:
            raise ValueError("images: expected at least one image index, got none")
        if plt_fig_axis is None:
            if show:
                import matplotlib.pyplot as plt

                fig = plt.figure(figsize=(2.2 * cols, 2.3 * rows))
            else:
                from matplotlib.figure import Figure

                fig = Figure(figsize=(2.2 * cols, 2.3 * rows))
            axes = fig.subplots(rows, cols, squeeze=False)
        else:
            if not (isinstance(plt_fig_axis, tuple) and len(plt_fig_axis) == 2):
                raise TypeError(f"plt_fig_axis: expected a (Figure, Axes) tuple, got {plt_fig_axis!r}")
            fig, axes = plt_fig_axis
            axes = np.asarray(axes, dtype=object)
            if axes.size != rows * cols:
                raise ValueError(
                    f"plt_fig_axis: expected {rows * cols} axes ({rows} x {cols}), got {axes.size}"
                )
            axes = axes.reshape(rows, cols)
        a, b = self.names
        titles = ["image", f"NAVE {a}", f"NAVE {b}", f"norm {a}", f"norm {b}", f"CLS attn {a}", f"CLS attn {b}"]
        H, W = self.display.shape[-2:]
        extent = (-0.5, W - 0.5, H - 0.5, -0.5)
        for r, i in enumerate(idx):
            img = self.display[i].permute(1, 2, 0).numpy()
            panels: List[Tuple[str, Any]] = [("rgb", img)]
            for k in range(2):
                seg = self.nave[k].segments[i, 0]
                if tuple(seg.shape) != (H, W):
                    from captum_nave.segments import resize_labels

                    seg = resize_labels(seg, (H, W))
                panels.append(("rgb", overlay_segments(self.display[i], seg, alpha=alpha)))
            for k in range(2):
                st = self.stats[k]
                panels.append(("map", norm_map(st.block_norms[i, self.layer[k]], st.layout, st.grid).numpy()))
            for k in range(2):
                st = self.stats[k]
                att = st.attention_at(self.layer[k])[i : i + 1]
                panels.append(("map", attention_map(att, st.layout, st.grid)[0].numpy()))
            for c, (kind, data) in enumerate(panels):
                ax = axes[r, c]
                if kind == "rgb":
                    ax.imshow(data, extent=extent)
                else:
                    ax.imshow(img, extent=extent)
                    ax.imshow(data, cmap="inferno", alpha=0.75, interpolation="nearest", extent=extent)
                ax.set_title(f"{titles[c]} #{i}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return fig, axes


def _fmt(v: Any) -> str:
    v = float(v)
    return "" if math.isnan(v) else repr(v)


# ----------------------------------------------------------------------------- main
def compare_registers(
    model_a: nn.Module,
    model_b: nn.Module,
    images: Tensor,
    *,
    images_b: Optional[Tensor] = None,
    layout_a: Optional[ViTLayout] = None,
    layout_b: Optional[ViTLayout] = None,
    names: Tuple[str, str] = ("without registers", "with registers"),
    layer: int = -1,
    n_clusters: int = 5,
    seeds: Tuple[int, int] = (0, 1),
    outlier_method: str = "robust",
    outlier_k: float = 5.0,
    outlier_threshold: Optional[float] = None,
    outlier_min_ratio: Optional[float] = 2.0,
    outlier_cluster_fraction: float = 0.5,
    boxes: Optional[Sequence[Any]] = None,
    corloc_strategy: str = "inner",
    corloc_protocol: Any = None,
    mcnemar_exact: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    random_state: int = 0,
    attention_method: str = "auto",
    batch_size: int = 16,
    display_images: Optional[Tensor] = None,
    lens: bool = True,
) -> RegisterComparison:
    """Run every register measure on two ViTs and compare them image by image.

    Parameters
    ----------
    model_a, model_b : nn.Module
        Usually a ViT without registers (A) and its counterpart with registers (B); any
        pair of ViTs works (with or without CLS, different patch sizes). Neither model is
        changed (mode, ``requires_grad``, buffers, ``fused_attn``); call ``.eval()`` first.
    images : Tensor of shape (N, 3, H, W)
        Preprocessed input of model A (and of model B unless ``images_b``).
    images_b : Tensor of shape (N, 3, H', W'), optional
        Input of model B when it needs other preprocessing or size.
    layout_a, layout_b : ViTLayout, optional
        Token layouts; read from the models by their adapters when omitted
        (:mod:`captum_nave.adapters`).
    names : (str, str)
        Display names.
    layer : int, default -1
        Block whose output / attention / CLS update is measured (per model; -1 = last).
    n_clusters : int, default 5
        NAVE K (the paper's value).
    seeds : (int, int), default (0, 1)
        k-means seeds; the first gives the maps compared across models, the ARI
        between the two is the noise floor.
    outlier_method, outlier_k, outlier_threshold, outlier_min_ratio
        High-norm token rule, see :func:`captum_nave.registers.norms.detect_outliers`.
    outlier_cluster_fraction : float, default 0.5
        A NAVE cluster is "dominated by outliers" above this share of outlier tokens.
    boxes : sequence of N arrays of shape (M_i, 4), optional
        Ground-truth boxes ``(x_min, y_min, x_max, y_max)`` in pixels of ``images``;
        enables CorLoc with :class:`captum_nave.evaluation.corloc.CorLocProtocol`
        (scaled to ``images_b`` when its size differs).
    corloc_strategy : {"inner", "outer"}, default "inner"
    corloc_protocol : CorLocProtocol or {"authors", "clean"}, optional
        Protocol constants and conventions (default: the paper's constants with the
        authors' conventions; scale ``min_area`` / ``border`` for small images). Recorded
        in ``config["corloc_protocol"]`` and stated in :meth:`to_markdown`.
    mcnemar_exact : bool, default True
        Exact binomial McNemar test, else chi-square with continuity correction.
    n_boot, confidence, random_state
        Bootstrap of the paired differences.
    attention_method : {"auto", "qkv", "eager"}
        See :func:`captum_nave.registers.capture.collect_token_statistics`.
    batch_size : int, default 16
    display_images : Tensor of shape (N, 3, H, W) in [0, 1], optional
        Images for the figure; default: ``images`` min-max scaled per image.
    lens : bool, default True
        Run the class-embedding lens (:func:`captum_nave.lens.class_lens`) on every
        model that has a classifier head and add its ``lens_*`` measures.

    Returns
    -------
    RegisterComparison

    Examples
    --------
    >>> import timm, torch
    >>> kw = dict(pretrained=False, img_size=64, depth=4, embed_dim=64, num_heads=2)
    >>> plain = timm.create_model("vit_small_patch16_224", **kw).eval()
    >>> regs = timm.create_model("vit_small_patch16_224", reg_tokens=4, **kw).eval()
    >>> res = compare_registers(plain, regs, torch.randn(8, 3, 64, 64), n_clusters=3)
    >>> print(res.to_markdown())
    >>> fig, axes = res.plot([0, 1])          # axes.shape == (2, 7)
    """
    for nm, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{nm}: expected an nn.Module, got {type(m).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            "images: expected a tensor of shape (N, C, H, W), got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    xb = images if images_b is None else images_b
    if not isinstance(xb, Tensor) or xb.dim() != 4 or xb.shape[0] != images.shape[0]:
        raise ValueError(
            f"images_b: expected a tensor of shape ({images.shape[0]}, C, H, W) like images, got "
            f"{tuple(xb.shape) if isinstance(xb, Tensor) else type(xb).__name__}"
        )
    if not (isinstance(names, (tuple, list)) and len(names) == 2 and all(isinstance(s, str) for s in names)):
        raise TypeError(f"names: expected two strings, got {names!r}")
    if not (isinstance(seeds, (tuple, list)) and len(seeds) == 2 and all(isinstance(s, int) for s in seeds)) or seeds[0] == seeds[1]:
        raise ValueError(f"seeds: expected two different ints, got {seeds!r}")
    if corloc_strategy not in ("inner", "outer"):
        raise ValueError(f"corloc_strategy: expected 'inner' or 'outer', got {corloc_strategy!r}")
    corloc_protocol = _as_protocol(corloc_protocol)
    n = images.shape[0]
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"boxes: expected one array of boxes per image ({n}), got {len(boxes)}")

    adapters = [vit_adapter(model_a, layout_a), vit_adapter(model_b, layout_b)]
    layouts = [a.layout for a in adapters]
    inputs = [images, xb]
    models = [model_a, model_b]
    okw = dict(method=outlier_method, k=outlier_k, threshold=outlier_threshold, min_ratio=outlier_min_ratio)

    per: Dict[str, List[np.ndarray]] = {m: [] for m in MEASURES}
    stats_l: List[TokenStatistics] = []
    outl_l: List[OutlierReport] = []
    nave_l: List[Any] = []
    layers: List[int] = []
    set_level: Dict[str, List[float]] = {}
    reg_share: List[Optional[np.ndarray]] = []
    cls_cos: List[Optional[np.ndarray]] = []
    hits: List[np.ndarray] = []
    lens_l: List[Any] = []

    for k in range(2):
        model, x, lay = models[k], inputs[k], layouts[k]
        st = collect_token_statistics(
            model, x, adapters[k], attention_layers="all", decompose_layers=(layer,),
            method=attention_method, batch_size=batch_size,
        )
        bl = st.block_index(layer)
        rep = outlier_report(st.block_norms, lay, **okw)
        npfx = lay.num_prefix_tokens
        in_mask = detect_outliers(st.norms[:, bl, npfx:], **okw)  # tokens entering block bl
        att = st.attention_at(bl)
        masses = attention_masses(att, lay, in_mask)
        first = rep.first_layer.double().numpy()
        first[first < 0] = np.nan
        vals: Dict[str, np.ndarray] = {
            "outlier_fraction": rep.fraction[:, bl].numpy(),
            "max_median_ratio": rep.max_median_ratio[:, bl].double().numpy(),
            "first_outlier_layer": first,
            "max_register_ratio": rep.register_ratio[:, bl].max(dim=-1).values.double().numpy()
            if lay.num_registers else np.full(n, np.nan),
            "attn_entropy": attention_entropy(att.mean(dim=1), lay).numpy(),
            "attn_entropy_heads": attention_entropy(att, lay).mean(dim=1).numpy(),
            "mass_cls": masses["cls"].double().numpy() if lay.has_cls else np.full(n, np.nan),
            "mass_registers": masses["registers"].double().numpy(),
            "mass_patches": masses["patches"].double().numpy(),
            "mass_outlier_patches": masses["outlier_patches"].double().numpy(),
        }
        dec = st.decompositions.get(bl)
        if dec is not None:
            nr, co = dec.norms(), dec.cosines()
            vals.update(
                norm_skip=nr["skip"].numpy(), norm_patches=nr["patches"].numpy(),
                norm_registers=nr["registers"].numpy() if lay.num_registers else np.full(n, np.nan),
                cos_patches_attn=co["patches_vs_attn"].numpy(),
                cos_registers_attn=co["registers_vs_attn"].numpy() if lay.num_registers else np.full(n, np.nan),
                cos_skip_residual=co["skip_vs_residual"].numpy(),
                cos_patches_residual=co["patches_vs_residual"].numpy(),
            )
            for key, v in dec.cka().items():
                if "registers" in key and not lay.num_registers:
                    v = float("nan")
                set_level.setdefault(f"cka_{key}", [float("nan"), float("nan")])[k] = v
        r0 = nave_grid_labels(model, x, lay, layer=bl, n_clusters=n_clusters, random_state=seeds[0])
        r1 = nave_grid_labels(model, x, lay, layer=bl, n_clusters=n_clusters, random_state=seeds[1])
        vals["nave_seed_ari"] = label_agreement(r0.grid_labels, r1.grid_labels)["ari"]
        vals["outlier_cluster_share"] = outlier_cluster_share(
            r0.grid_labels, rep.mask[:, bl], min_fraction=outlier_cluster_fraction
        )
        if boxes is not None:
            hits.append(_corloc_hits(r0.segments, boxes, images.shape[-2:], x.shape[-2:],
                                     corloc_strategy, corloc_protocol))
            vals["corloc_hit"] = hits[-1].astype(np.float64)
        lens_l.append(_lens(model, x, batch_size) if lens else None)
        if lens_l[-1] is not None:
            from captum_nave.lens.summary import image_measures

            vals.update(image_measures(lens_l[-1], bl))
        for m in MEASURES:
            per[m].append(np.asarray(vals.get(m, np.full(n, np.nan)), dtype=np.float64))
        reg_share.append(rep.register_high.double().mean(dim=0).numpy() if lay.num_registers else None)
        cc = st.cls_layer_cosine()
        cls_cos.append(None if cc is None else cc.mean(dim=0).numpy())
        stats_l.append(st)
        outl_l.append(rep)
        nave_l.append(r0)
        layers.append(bl)

    agree = label_agreement(nave_l[0].grid_labels, nave_l[1].grid_labels)
    pair = {"ari_between_models": agree["ari"], "nmi_between_models": agree["nmi"]}
    per_image = {m: (v[0], v[1]) for m, v in per.items()}
    aggregated: List[AggregateRow] = []
    for m, (va, vb) in per_image.items():
        if np.all(np.isnan(va)) and np.all(np.isnan(vb)):
            continue
        ci = paired_bootstrap_ci(va, vb, n_boot=n_boot, confidence=confidence, random_state=random_state)
        aggregated.append(AggregateRow(m, _nanmean(va), _nanmean(vb), ci, MEASURES[m]))
    for key, (ca, cb) in set_level.items():
        aggregated.append(AggregateRow(key, ca, cb, None, "linear CKA over the image set"))

    corloc = None
    if boxes is not None:
        corloc = CorLocComparison(
            hits_a=hits[0], hits_b=hits[1], corloc_a=float(hits[0].mean()), corloc_b=float(hits[1].mean()),
            mcnemar=mcnemar_test(hits[0], hits[1], exact=mcnemar_exact), strategy=corloc_strategy,
        )

    display = display_images if display_images is not None else _minmax(images)
    if display.shape[0] != n or display.dim() != 4 or display.shape[1] != 3:
        raise ValueError(
            f"display_images: expected shape ({n}, 3, H, W) with values in [0, 1], got {tuple(display.shape)}"
        )
    config = dict(
        names=tuple(names), layer=layer, n_clusters=n_clusters, seeds=tuple(seeds),
        outlier_method=outlier_method, outlier_k=outlier_k, outlier_threshold=outlier_threshold,
        outlier_min_ratio=outlier_min_ratio, outlier_cluster_fraction=outlier_cluster_fraction,
        corloc_strategy=corloc_strategy if boxes is not None else None,
        corloc_protocol=corloc_protocol.to_dict() if boxes is not None else None,
        mcnemar_exact=mcnemar_exact,
        n_boot=n_boot, confidence=confidence, random_state=random_state,
        attention_method=(stats_l[0].method, stats_l[1].method),
        attention_query=(stats_l[0].attention_query, stats_l[1].attention_query),
        layouts=(layouts[0], layouts[1]),
    )
    return RegisterComparison(
        names=(names[0], names[1]),
        layer=(layers[0], layers[1]),
        per_image=per_image,
        pair=pair,
        aggregated=aggregated,
        set_level={k: (v[0], v[1]) for k, v in set_level.items()},
        register_high_share=(reg_share[0], reg_share[1]),
        cls_layer_cosine=(cls_cos[0], cls_cos[1]),
        corloc=corloc,
        stats=(stats_l[0], stats_l[1]),
        outliers=(outl_l[0], outl_l[1]),
        nave=(nave_l[0], nave_l[1]),
        display=display.detach().float().cpu(),
        config=config,
        lens=(lens_l[0], lens_l[1]),
    )


def _lens(model: nn.Module, x: Tensor, batch_size: int) -> Any:
    """The class-embedding lens of a ViT classifier, or None without a classifier head."""
    from captum_nave.lens import class_lens
    from captum_nave.lens.summary import lens_available

    return class_lens(model, x, batch_size=batch_size) if lens_available(model) else None


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _minmax(x: Tensor) -> Tensor:
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _as_protocol(protocol: Any) -> Any:
    """``corloc_protocol`` as a :class:`CorLocProtocol` (None: the paper's, authors' conventions)."""
    from captum_nave.evaluation.corloc import as_protocol

    return as_protocol(protocol, "corloc_protocol")


def _corloc_hits(
    segments: Tensor,
    boxes: Sequence[Any],
    hw_boxes: Sequence[int],
    hw_model: Sequence[int],
    strategy: str,
    protocol: Any,
) -> np.ndarray:
    proto = _as_protocol(protocol)
    sy = float(hw_model[0]) / float(hw_boxes[0])
    sx = float(hw_model[1]) / float(hw_boxes[1])
    out = np.zeros(segments.shape[0], dtype=bool)
    for i in range(segments.shape[0]):
        gt = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
        sel = proto.evaluate(segments[i, 0].cpu(), gt, strategies=(strategy,))
        out[i] = bool(sel[strategy].correct)
    return out
