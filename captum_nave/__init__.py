"""captum-nave: NAVE (Neuro-Activated Vision Explanations) for Captum.

Cluster the activations of chosen layers of a frozen CNN or ViT into a segmentation
of the input that shows which parts of the image the network processes alike.

The public classes are imported on first use (PEP 562), so that ``import captum_nave``
and the ``captum-nave`` command start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

__all__ = ["LayerClusterExplainer", "NaveResult", "ConceptClusters", "__version__"]

__version__ = "0.1.0"

#: Public name -> module that defines it.
_LAZY = {
    "LayerClusterExplainer": "captum_nave.explainer",
    "NaveResult": "captum_nave.explainer",
    "ConceptClusters": "captum_nave.concepts",
}

if TYPE_CHECKING:  # pragma: no cover
    from .concepts import ConceptClusters
    from .explainer import LayerClusterExplainer, NaveResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'captum_nave' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
