"""The result of a register comparison: per-image measures, aggregates, CorLoc, exports and figure."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from .attention import attention_map
from .capture import TokenStatistics
from .norms import OutlierReport, norm_map
from .stats import BootstrapCI, McNemarResult, paired_bootstrap_ci

__all__ = ["MEASURES", "PAIR_MEASURES", "RegisterComparison", "AggregateRow", "CorLocComparison"]

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
