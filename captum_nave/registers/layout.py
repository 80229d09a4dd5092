"""Token layout of a ViT for the register measures: CLS, registers, other prefix tokens, grid.

The layout itself is :class:`captum_nave.adapters.ViTLayout`; every model adapter
reports one (:attr:`captum_nave.adapters.ModelAdapter.layout`), and a hand-written one
describes any other ViT-like module. This module keeps the register package's
entry points.
"""

from __future__ import annotations

from typing import Any, List, Union

from torch import nn

from captum_nave.adapters import ModelAdapter, ViTLayout, get_adapter
from captum_nave.adapters.layout import get_submodule

__all__ = ["ViTLayout", "vit_adapter", "vit_layout", "resolve_blocks", "get_submodule"]


def vit_adapter(model: nn.Module, layout: Union[ViTLayout, ModelAdapter, None] = None) -> ModelAdapter:
    """The adapter of a ViT: its own, the given one, or its family's with a hand-written layout.

    Raises
    ------
    ValueError
        If the model has no token layout (describe it with ``ViTLayout(...)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(layout, ModelAdapter):
        if layout.model is not model:
            raise ValueError("layout: the adapter describes another model")
        adapter = layout
    elif layout is None or isinstance(layout, ViTLayout):
        adapter = get_adapter(model, layout)
    else:
        raise TypeError(f"layout: expected a ViTLayout, a ModelAdapter or None, got {type(layout).__name__}")
    if adapter.layout is None:
        raise ValueError(
            f"model: cannot read the token layout of {type(model).__name__} (no timm "
            "num_prefix_tokens, torch-hub num_register_tokens or Hugging Face config); describe it "
            "with captum_nave.adapters.ViTLayout(num_prefix_tokens=..., cls_index=..., "
            "register_indices=..., patch_size=..., blocks=...)"
        )
    return adapter


def vit_layout(model: nn.Module, **overrides: Any) -> ViTLayout:
    """Read the token layout and block structure of a ViT from its adapter.

    Recognised: timm ViTs (``num_prefix_tokens``, registers, CLS or not), Hugging Face
    ViT / DeiT / DINOv2 / DINOv2 with registers / CLIP / SigLIP, torch-hub DINOv2, and
    models following those conventions (see :mod:`captum_nave.adapters`).

    Parameters
    ----------
    model : nn.Module
        The ViT.
    **overrides
        Any :class:`ViTLayout` field to set explicitly (e.g. ``patch_size=14``).

    Returns
    -------
    ViTLayout

    Raises
    ------
    ValueError
        If the model is not recognised; describe it with ``ViTLayout(...)`` instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    adapter = get_adapter(model)
    if adapter.layout is None and "num_prefix_tokens" in overrides:
        return adapter.with_overrides(**overrides).layout  # type: ignore[return-value]
    layout = vit_adapter(model).layout
    assert layout is not None
    return layout.with_overrides(**overrides) if overrides else layout


def resolve_blocks(model: nn.Module, layout: ViTLayout) -> List[nn.Module]:
    """The transformer blocks of ``model`` in execution order (chunks flattened)."""
    return [m for _, m in get_adapter(model, layout).blocks()]
