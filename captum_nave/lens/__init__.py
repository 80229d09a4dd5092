"""The class-embedding lens for ViTs (Vilas, Schaumlöffel & Roig, NeurIPS 2023).

Every block's tokens are projected through the model's final norm and classifier head
onto the classes (:func:`class_lens`), which shows from which layer image tokens, the
CLS token and register tokens carry the explained class, and from which layer each
NAVE segment does (:class:`LensResult`). :class:`LensSpec` documents which norm and
head are used for CLS, average-pool and register models.

Examples
--------
>>> from captum_nave import LayerClusterExplainer
>>> from captum_nave.lens import class_lens
>>> seg = LayerClusterExplainer(vit, [-1]).attribute(x, n_clusters=5)
>>> lens = class_lens(vit, x)
>>> lens.identifiability("patches"), lens.identifiability("cls")     # (L,) each
>>> lens.segment_first_layer(seg)                                      # (N, 5)
>>> fig, axes = lens.plot_identifiability()
"""

from ._spec import POOLINGS, LensSpec, lens_spec
from .plots import plot_identifiability, plot_layer_tokens, plot_lens_overview, plot_segment_layers
from .projection import LensResult, class_lens, segments_on_grid

__all__ = [
    "POOLINGS",
    "LensResult",
    "LensSpec",
    "class_lens",
    "lens_spec",
    "plot_identifiability",
    "plot_layer_tokens",
    "plot_lens_overview",
    "plot_segment_layers",
    "segments_on_grid",
]
