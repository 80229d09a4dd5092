"""Model adapters: one place that knows each model family.

Every consumer (the NAVE explainer, Grad-CAM, IG, LRP, the register measures, the
CLI) asks a :class:`ModelAdapter` where the blocks are, how the tokens are laid out,
where each block's attention lives, how to get class scores from the output and which
layers to use by default; none of them tests module or class names itself.

=====================================  =====================================================
family (adapter)                       models
=====================================  =====================================================
``timm-vit`` (:class:`TimmViTAdapter`)  timm ``VisionTransformer`` (CLS / registers / no CLS,
                                       DeiT distilled), ``Eva`` and other timm ViTs
``timm-cnn`` (:class:`TimmCNNAdapter`)  timm EfficientNet / MobileNet, ResNet, ConvNeXt, ...
``torchvision-cnn``                    torchvision ResNet, VGG, EfficientNet, MobileNet,
                                       ConvNeXt, ...
``torchvision-vit``                    ``torchvision.models.VisionTransformer``
``hf`` (:class:`HFVisionAdapter`)       Hugging Face ViT, DeiT, DINOv2, DINOv2 with registers,
                                       CLIP and SigLIP vision towers
``torch-hub-dinov2``                   ``torch.hub.load("facebookresearch/dinov2", ...)``
``generic``                            anything else: conventions read from attributes
``hand``                               ``ModelAdapter(model, ViTLayout(...))``
=====================================  =====================================================

Adding a family: subclass :class:`ModelAdapter`, implement ``matches`` (by type) and
what differs (``_read_layout``, ``classifier_head``, ``default_layers``, ...), and
register it with :func:`register_adapter`.
"""

from .base import (
    AttentionAccess,
    BlockParts,
    ClassifierHead,
    EagerSwitch,
    LRPKit,
    MapParts,
    MlpParts,
    ModelAdapter,
    Pool,
    TransformerParts,
    unwrap_output,
)
from .generic import GenericAdapter
from .hf import HFVisionAdapter
from .hub import HubDinov2Adapter
from .layout import ViTLayout
from .registry import (
    adapter_classes,
    get_adapter,
    logits_function,
    output_logits,
    register_adapter,
    unregister_adapter,
)
from .timm import TimmCNNAdapter, TimmViTAdapter
from .torchvision import TorchvisionCNNAdapter, TorchvisionViTAdapter

__all__ = [
    "AttentionAccess",
    "BlockParts",
    "ClassifierHead",
    "EagerSwitch",
    "GenericAdapter",
    "HFVisionAdapter",
    "HubDinov2Adapter",
    "LRPKit",
    "MapParts",
    "MlpParts",
    "ModelAdapter",
    "Pool",
    "TimmCNNAdapter",
    "TimmViTAdapter",
    "TorchvisionCNNAdapter",
    "TorchvisionViTAdapter",
    "TransformerParts",
    "ViTLayout",
    "adapter_classes",
    "get_adapter",
    "logits_function",
    "output_logits",
    "register_adapter",
    "unregister_adapter",
    "unwrap_output",
]
