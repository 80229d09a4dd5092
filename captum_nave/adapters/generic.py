"""The fallback adapter for models of no known family: read what the model exposes.

Custom models often follow a library's conventions without being its classes. The
fallback recognises them by what they expose, in this order:

* ``num_prefix_tokens`` (int, timm convention), with ``num_reg_tokens`` /
  ``reg_token`` and ``cls_token`` / ``has_class_token``;
* ``num_register_tokens`` (int) and ``cls_token`` (torch-hub DINOv2 convention):
  ``[CLS, registers..., patches...]``;
* a ``config`` with ``patch_size`` (Hugging Face convention): ``[CLS, registers...,
  patches...]`` with ``config.num_register_tokens`` registers, blocks in
  ``*.encoder.layer(s)`` and separate q / k / v projections found by name;

and otherwise treats the model as a CNN. Default layers follow the structure (ResNet-like
``layer3``/``layer4``, staged ``stages``, VGG-like ``features`` with pooling).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from torch import nn

from .base import ModelAdapter, discover_attention_paths
from .layout import ViTLayout

__all__ = ["GenericAdapter", "cnn_default_layers", "patch_size_pair", "timm_style_tokens"]


def patch_size_pair(value: Any) -> Optional[Tuple[int, int]]:
    """``int`` or a pair -> ``(ph, pw)``; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def timm_style_tokens(model: nn.Module) -> Tuple[Optional[int], Tuple[int, ...]]:
    """CLS index and register positions of a model with timm's ``num_prefix_tokens``.

    timm concatenates ``[CLS?, registers..., others...]``: the CLS token (``cls_token`` /
    ``has_class_token``) first, then ``num_reg_tokens`` (or ``reg_token.shape[1]``) registers.
    """
    npt = int(model.num_prefix_tokens)
    n_reg = getattr(model, "num_reg_tokens", None)
    if not isinstance(n_reg, int):
        reg = getattr(model, "reg_token", None)
        n_reg = int(reg.shape[1]) if reg is not None and hasattr(reg, "shape") else 0
    has_cls = getattr(model, "has_class_token", None)
    if has_cls is None:
        has_cls = getattr(model, "cls_token", None) is not None
    has_cls = bool(has_cls) and npt > 0
    start = 1 if has_cls else 0
    return (0 if has_cls else None), tuple(range(start, min(start + n_reg, npt)))


def cnn_default_layers(model: nn.Module) -> List[str]:
    """Structural NAVE defaults of CNNs (ResNet-like, staged, VGG-like), or an empty list."""
    children = dict(model.named_children())
    if "layer3" in children and "layer4" in children:
        return ["layer3", "layer4"]
    stages = children.get("stages")
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) >= 2:
        n = len(stages)
        return [f"stages.{n - 2}", f"stages.{n - 1}"]
    features = children.get("features")
    if isinstance(features, nn.Sequential):
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) >= 2:
            return [f"features.{pools[-2] - 1}", f"features.{pools[-1] - 1}"]
    return []


class GenericAdapter(ModelAdapter):
    """Fallback for any ``nn.Module``: conventions read from attributes (see module docstring)."""

    family = "generic"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        return isinstance(model, nn.Module)

    def _read_layout(self) -> Optional[ViTLayout]:
        m = self.model
        npt = getattr(m, "num_prefix_tokens", None)
        if isinstance(npt, int) and not isinstance(npt, bool):
            cls_index, registers = timm_style_tokens(m)
            found = self._find_block_container()
            return ViTLayout(
                num_prefix_tokens=npt,
                cls_index=cls_index,
                register_indices=registers,
                patch_size=patch_size_pair(getattr(getattr(m, "patch_embed", None), "patch_size", None))
                or patch_size_pair(getattr(m, "patch_size", None)),
                blocks=found[0] if found else "blocks",
                source=self.family,
            )
        n_reg = getattr(m, "num_register_tokens", None)
        if isinstance(n_reg, int) and not isinstance(n_reg, bool) and hasattr(m, "cls_token"):
            found = self._find_block_container()
            return ViTLayout(
                num_prefix_tokens=1 + n_reg,
                cls_index=0,
                register_indices=tuple(range(1, 1 + n_reg)),
                patch_size=patch_size_pair(getattr(m, "patch_size", None)),
                blocks=found[0] if found else "blocks",
                source=self.family,
            )
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "patch_size", None) is not None:
            n_reg = int(getattr(cfg, "num_register_tokens", 0) or 0)
            blocks = self._hf_style_blocks()
            paths: dict = {}
            if blocks is not None:
                container = m.get_submodule(blocks)
                paths = discover_attention_paths(container[0]) or {}
            return ViTLayout(
                num_prefix_tokens=1 + n_reg,
                cls_index=0,
                register_indices=tuple(range(1, 1 + n_reg)),
                patch_size=patch_size_pair(cfg.patch_size),
                blocks=blocks or "encoder.layer",
                num_heads=getattr(cfg, "num_attention_heads", None),
                q_norm=None,
                k_norm=None,
                layer_scale="layer_scale1",
                source=self.family,
                **paths,
            )
        return None

    def _hf_style_blocks(self) -> Optional[str]:
        for name, mod in self.model.named_modules():
            if name.endswith(("encoder.layer", "encoder.layers")) and isinstance(mod, nn.ModuleList) and len(mod):
                return name
        return None

    def _find_block_container(self) -> Optional[Tuple[str, nn.Module]]:
        hf = self._hf_style_blocks() if getattr(getattr(self.model, "config", None), "patch_size", None) else None
        if hf is not None:
            return hf, self.model.get_submodule(hf)
        return super()._find_block_container()

    def default_layers(self) -> List[str]:  # noqa: D102
        if self.layout is not None:
            return super().default_layers()
        return cnn_default_layers(self.model)

    def default_gradcam_layer(self) -> Optional[str]:  # noqa: D102
        if self.layout is None:
            children = dict(self.model.named_children())
            if "layer4" in children:
                return "layer4"
            stages = children.get("stages")
            if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) > 0:
                return f"stages.{len(stages) - 1}"
            features = children.get("features")
            if isinstance(features, nn.Sequential) and any(isinstance(m, nn.MaxPool2d) for m in features):
                return vgg_gradcam_layer(features)
            return None
        return super().default_gradcam_layer()

    def _head_reads_only_prefix(self) -> bool:
        # timm convention: global_pool == "token", or no global_pool and a CLS token
        pool = getattr(self.model, "global_pool", None)
        return pool == "token" or (pool is None and getattr(self.model, "cls_token", None) is not None)


def vgg_gradcam_layer(features: nn.Sequential, prefix: str = "features") -> Optional[str]:
    """The last ReLU in a VGG-like ``features`` (else the last convolution)."""
    for kind in (nn.ReLU, nn.Conv2d):
        for i in range(len(features) - 1, -1, -1):
            if isinstance(features[i], kind):
                return f"{prefix}.{i}"
    return None
