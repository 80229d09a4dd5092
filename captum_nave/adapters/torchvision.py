"""Adapters for torchvision classification models: CNNs and the Vision Transformer.

CNNs: ResNet (``layer1..4``), VGG (``features`` with max pooling), EfficientNet /
MobileNet (``features``: stem, stages, 1x1 head conv), ConvNeXt (``features``: stem, then
stage / downsample pairs) and any other ``torchvision.models`` CNN (structural rules).

ViT (``torchvision.models.VisionTransformer``): ``[CLS, patches...]``, ``patch_size``,
blocks ``encoder.layers``; the attention is an ``nn.MultiheadAttention`` whose q / k / v
projections run inside the module, so attention access (register measures) and LRP are
not available for it.
"""

from __future__ import annotations

from typing import List, Optional

from torch import nn

from .base import AttentionAccess, ClassifierHead, LRPKit, ModelAdapter, Pool
from .generic import GenericAdapter, cnn_default_layers, vgg_gradcam_layer
from .layout import ViTLayout

__all__ = ["TorchvisionCNNAdapter", "TorchvisionViTAdapter"]


def _is_torchvision(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


class TorchvisionViTAdapter(ModelAdapter):
    """``torchvision.models.VisionTransformer``."""

    family = "torchvision-vit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        from torchvision.models import VisionTransformer

        return isinstance(model, VisionTransformer)

    def _read_layout(self) -> Optional[ViTLayout]:
        return ViTLayout(
            num_prefix_tokens=1,
            cls_index=0,
            patch_size=int(self.model.patch_size),
            blocks="encoder.layers",
            attn="self_attention",
            qkv="self_attention",  # inside nn.MultiheadAttention (see attention())
            proj="self_attention.out_proj",
            q_norm=None,
            k_norm=None,
            layer_scale=None,
            num_heads=int(self.model.encoder.layers[0].num_heads),
            source=self.family,
        )

    def input_size(self) -> Optional[tuple]:  # noqa: D102
        s = int(self.model.image_size)
        return (s, s)

    def attention(self, index: int) -> AttentionAccess:  # noqa: D102
        raise ValueError(
            "model: torchvision VisionTransformer computes q, k and v inside nn.MultiheadAttention, "
            "where hooks cannot read them; use a timm or Hugging Face ViT for attention measures"
        )

    def classifier_head(self) -> Optional[ClassifierHead]:  # noqa: D102
        heads = [m for m in self.model.heads.children()]
        return ClassifierHead(final_norm=self.model.encoder.ln, pools=(Pool("token", index=0),), post=tuple(heads))

    def _pre_attention_norm(self, block: nn.Module) -> Optional[str]:
        return "ln_1"


class TorchvisionCNNAdapter(GenericAdapter):
    """torchvision CNNs (see the module docstring)."""

    family = "torchvision-cnn"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        return _is_torchvision(model) and not TorchvisionViTAdapter.matches(model)

    def _read_layout(self) -> Optional[ViTLayout]:
        return None

    def _kind(self) -> str:
        from torchvision import models as tvm

        m = self.model
        for kind, types in (
            ("resnet", (tvm.ResNet,)),
            ("vgg", (tvm.VGG,)),
            ("efficientnet", (tvm.EfficientNet,)),
            ("mobilenet", (tvm.MobileNetV2, tvm.MobileNetV3)),
            ("convnext", (tvm.ConvNeXt,)),
        ):
            if isinstance(m, types):
                return kind
        return "other"

    def default_layers(self) -> List[str]:
        """ResNet ``layer3``/``layer4``; VGG: the outputs before the last two pools;
        EfficientNet ``features.{n-4}``, ``features.{n-3}`` (stride 16 and 32 stages, as for
        timm; ``features.{n-1}`` is the 1x1 head conv); ConvNeXt ``features.5``, ``features.7``
        (the last two stages)."""
        kind = self._kind()
        features = getattr(self.model, "features", None)
        if kind == "efficientnet" and isinstance(features, nn.Sequential) and len(features) >= 5:
            n = len(features)
            return [f"features.{n - 4}", f"features.{n - 3}"]
        if kind == "convnext" and isinstance(features, nn.Sequential) and len(features) == 8:
            return ["features.5", "features.7"]
        return cnn_default_layers(self.model)

    def default_gradcam_layer(self) -> Optional[str]:
        """ResNet ``layer4``; VGG: the last ReLU in ``features``; EfficientNet / MobileNet:
        ``features.{n-1}`` (the 1x1 head conv block)."""
        kind = self._kind()
        features = getattr(self.model, "features", None)
        if kind == "resnet":
            return "layer4"
        if kind == "vgg" and isinstance(features, nn.Sequential):
            return vgg_gradcam_layer(features)
        if kind in ("efficientnet", "mobilenet") and isinstance(features, nn.Sequential):
            return f"features.{len(features) - 1}"
        return super().default_gradcam_layer()

    @classmethod
    def lrp_rewrite(cls, module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:
        """ResNet blocks as residual blocks with fused BatchNorm and one ReLU per use."""
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        kind = type(module)
        if kind in (BasicBlock, Bottleneck):
            return _resnet_block(module, name, kit)
        if kind is ResNet:
            module.conv1 = kit.fuse(module.conv1, module.bn1, f"{name}.bn1" if name else "bn1")
            module.bn1 = nn.Identity()
            module.relu = nn.ReLU()
            return module
        return None


def _resnet_block(block: nn.Module, name: str, kit: LRPKit) -> nn.Module:
    """BasicBlock / Bottleneck -> residual block with fused BN and unshared ReLUs."""
    pairs = [("conv1", "bn1"), ("conv2", "bn2")]
    if hasattr(block, "conv3"):
        pairs.append(("conv3", "bn3"))
    layers: List[nn.Module] = []
    for i, (c, b) in enumerate(pairs):
        layers.append(kit.fuse(getattr(block, c), getattr(block, b), f"{name}.{b}"))
        if i < len(pairs) - 1:
            layers.append(nn.ReLU())
    shortcut = None
    if block.downsample is not None:
        ds = block.downsample
        if not (isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[1], nn.BatchNorm2d)):
            raise TypeError(
                f"LRP canonicalisation: unsupported downsample at '{name}.downsample' "
                f"({ds!r}); expected Sequential(Conv2d, BatchNorm2d)"
            )
        shortcut = kit.fuse(ds[0], ds[1], f"{name}.downsample")
    return kit.residual(layers, shortcut, nn.ReLU())
