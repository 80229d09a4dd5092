"""Figures for NAVE explanations and the attribution maps shown beside them.

Every plotting function returns ``(Figure, Axes)`` (or ``(Figure, ndarray of Axes)``),
accepts ``plt_fig_axis=(fig, axes)`` to draw into existing axes (Captum's convention) and
never opens a window unless ``show=True``. Without ``plt_fig_axis`` the figure is a plain
:class:`matplotlib.figure.Figure` that pyplot does not track (nothing to close, safe
headless); save it with ``fig.savefig(path)``. matplotlib is imported inside the functions.

Colours
-------
Segment ids use one categorical palette everywhere (:func:`segment_colors`), so the same
id has the same colour in every panel of every figure:

* ids 0-7: the Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008), which
  stays distinguishable under the common colour-vision deficiencies; black is last
  because it is the weakest overlay;
* ids 8-16: Paul Tol's "muted" qualitative scheme (https://personal.sron.nl/~pault/);
* ids 17 and above: the 17 colours again, mixed 40 % towards white, then towards black,
  and so on. They remain distinct from each other but are no longer guaranteed to be
  colour-blind safe; prefer K <= 17.

Continuous maps use ``viridis`` (non-negative maps such as Grad-CAM) or ``RdBu_r``
centred at 0 (signed maps such as Integrated Gradients and LRP), both readable with
colour-vision deficiencies, with symmetric limits at the 99th percentile of ``|value|``
of each map so that a few extreme pixels do not wash the map out.
"""

from __future__ import annotations

from ._base import (
    OKABE_ITO,
    TOL_MUTED,
    legend_colors,
    overlay_segments,
    segment_boundaries,
    segment_colors,
)
from .concepts import concept_top_images, plot_concept_gallery
from .maps import plot_segment_relevance, plot_segments, plot_side_by_side
from .stability import plot_stability, stability_ari, stability_image

__all__ = [
    "OKABE_ITO",
    "TOL_MUTED",
    "segment_colors",
    "legend_colors",
    "segment_boundaries",
    "overlay_segments",
    "plot_segments",
    "plot_side_by_side",
    "plot_segment_relevance",
    "stability_ari",
    "stability_image",
    "plot_stability",
    "concept_top_images",
    "plot_concept_gallery",
]
