"""captum-nave: NAVE (Neuro-Activated Vision Explanations) for Captum.

Cluster the activations of chosen layers of a frozen CNN or ViT into a segmentation
of the input that shows which parts of the image the network processes alike.
"""

from .concepts import ConceptClusters
from .explainer import LayerClusterExplainer, NaveResult

__all__ = ["LayerClusterExplainer", "NaveResult", "ConceptClusters", "__version__"]

__version__ = "0.1.0"
