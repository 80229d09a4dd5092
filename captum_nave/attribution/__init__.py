"""Pixel attributions to put next to NAVE: Grad-CAM, Integrated Gradients, LRP.

One entry point, :func:`attribute`, runs a method registered by name and returns an
:class:`AttributionResult` with ``maps`` of shape (N, 1, H, W) at input resolution
(plus the method's raw output and convergence delta). Built-in methods:

* ``"gradcam"``: Captum ``LayerGradCam`` on a documented default layer per model
  family; ViT tokens are mapped to the patch grid with all prefix tokens (class,
  registers) removed (:mod:`.gradcam`);
* ``"ig"``: Captum ``IntegratedGradients`` with zero, blurred, uniform-noise or
  user baselines (:mod:`.integrated_gradients`);
* ``"lrp"``: LRP on a canonical copy of the model (ResNets, VGG, EfficientNet-Lite,
  ViTs) with named composites (default: ``epsilon-plus-flat`` for CNNs, CP-LRP for
  transformers), rule maps by module name and type, and a stabiliser relative to each
  layer's activations (:mod:`.lrp`).

More methods can be added with :func:`register_method`.

:func:`segment_relevance` splits any map over the segments of a NAVE map
(:class:`SegmentRelevanceTable`), and :func:`segment_importance` scores segments by
ablation or Shapley sampling with the NAVE map as Captum ``feature_mask``.

Examples
--------
>>> from captum_nave import LayerClusterExplainer
>>> from captum_nave.attribution import attribute, segment_relevance
>>> seg = LayerClusterExplainer(model, ["layer3", "layer4"]).attribute(x, n_clusters=5)
>>> cam = attribute("gradcam", model, x, target="auto")
>>> table = segment_relevance(seg, cam.maps)
>>> print(table.to_markdown())
"""

from .registry import (
    AttributionResult,
    attribute,
    available_methods,
    register_method,
    unregister_method,
)
from . import gradcam as _gradcam  # noqa: F401  (registers "gradcam")
from . import integrated_gradients as _ig  # noqa: F401  (registers "ig")
from . import _lrp_adapter  # noqa: F401  (registers "lrp")
from .gradcam import default_gradcam_layer
from .segment_scores import SegmentRelevanceTable, segment_importance, segment_relevance

__all__ = [
    "AttributionResult",
    "SegmentRelevanceTable",
    "attribute",
    "available_methods",
    "default_gradcam_layer",
    "register_method",
    "segment_importance",
    "segment_relevance",
    "unregister_method",
]
