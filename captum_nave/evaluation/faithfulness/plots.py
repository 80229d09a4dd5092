"""Figures of the faithfulness measures; each returns ``(Figure, Axes)`` and takes ``plt_fig_axis``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import numpy as np

from captum_nave.visualization._base import _finish, _setup

if TYPE_CHECKING:  # pragma: no cover
    from .audit import FaithfulnessAudit
    from .randomisation import RandomisationResult

__all__ = ["plot_perturbation_curves", "plot_randomisation"]

_TITLES = {"nave": "NAVE", "gradcam": "Grad-CAM", "ig": "IG", "lrp": "LRP", "random": "random map",
           "segment_importance": "segment importance"}


def _label(method: str) -> str:
    return _TITLES.get(method, method)


def plot_perturbation_curves(
    audit: "FaithfulnessAudit",
    *,
    rankings: Optional[Sequence[str]] = None,
    plt_fig_axis: Any = None,
    show: bool = False,
) -> Tuple[Any, Any]:
    """Mean deletion and insertion curves of every method, one row per ranking.

    Parameters
    ----------
    audit : FaithfulnessAudit
    rankings : sequence of str, optional
        Rows (default: every ranking in the audit).
    plt_fig_axis : (Figure, Axes array of shape (R, M)), optional
    show : bool, default False

    Returns
    -------
    (Figure, ndarray of Axes of shape (R, M))
        ``R`` rankings, ``M`` modes (deletion, insertion).
    """
    from .audit import RANDOM_METHOD, ranking_text
    from .curves import MODES

    rows = list(rankings) if rankings is not None else audit.rankings
    bad = [r for r in rows if r not in audit.rankings]
    if not rows or bad:
        raise ValueError(f"rankings: expected some of {audit.rankings}, got {list(rankings or [])}")
    modes = [m for m in MODES if any(k[2] == m for k in audit.curves)]
    fig, axes = _setup(plt_fig_axis, (len(rows), len(modes)), (4.2 * len(modes), 2.9 * len(rows)), show)
    for r, ranking in enumerate(rows):
        for c, mode in enumerate(modes):
            ax = axes[r, c]
            for method in audit.methods:
                cur = audit.curves.get((method, ranking, mode))
                if cur is None:
                    continue
                grid, mean = cur.mean_curve()
                auc = float(np.nanmean(cur.auc().numpy()))
                style = dict(color="grey", ls="--") if method == RANDOM_METHOD else {}
                ax.plot(grid.numpy(), mean.numpy(), label=f"{_label(method)} (AUC {auc:.3f})", lw=1.6, **style)
            better = "lower" if mode == "deletion" else "higher"
            ax.set_title(f"{mode}, {ranking_text(ranking)} ({better} AUC is better)", fontsize=9)
            unit = "pixels" if ranking == "pixels" else "units"
            ax.set_xlabel(f"fraction of {unit} {'removed' if mode == 'deletion' else 'inserted'}", fontsize=8)
            cur0 = next((audit.curves[k] for k in audit.curves if k[2] == mode), None)
            ax.set_ylabel("target probability" if cur0 is not None and cur0.output == "probability" else "target logit",
                          fontsize=8)
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
    _finish(fig, show)
    return fig, axes


def plot_randomisation(
    result: "RandomisationResult",
    *,
    plt_fig_axis: Any = None,
    show: bool = False,
) -> Tuple[Any, Any]:
    """Mean similarity to the trained model's maps per randomisation stage.

    Two panels: Spearman rank correlation of the absolute maps, and SSIM (NAVE: the
    adjusted Rand index of its segments, in both panels' place on the right).

    Returns
    -------
    (Figure, ndarray of Axes of shape (1, 2))
    """
    fig, axes = _setup(plt_fig_axis, (1, 2), (9.0, 3.2), show)
    x = np.arange(1, len(result.stages) + 1)
    for method in result.methods:
        sim = result.similarity(method)
        for j, key in enumerate(("spearman", "ssim")):
            vals = sim.get(key, sim.get("ari"))
            label = _label(method) + (" (ARI of segments)" if key not in sim else "")
            axes[0, j].plot(x, np.nanmean(vals.numpy(), axis=1), marker="o", ms=3, label=label)
    for j, title in enumerate(("Spearman rank correlation of |map|", "SSIM of |map|")):
        ax = axes[0, j]
        ax.set_title(title + (" (cascading)" if result.cascading else " (independent)"), fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(result.stages, rotation=60, ha="right", fontsize=6)
        ax.set_xlabel("randomised down to" if result.cascading else "randomised module", fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylim(-0.2, 1.05)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    _finish(fig, show)
    return fig, axes
