"""Finding the adapter of a model: by type, user adapters first, the fallback last."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Type

from torch import Tensor, nn

from .base import ModelAdapter, unwrap_output
from .generic import GenericAdapter
from .hf import HFVisionAdapter
from .hub import HubDinov2Adapter
from .layout import ViTLayout
from .timm import TimmCNNAdapter, TimmViTAdapter
from .torchvision import TorchvisionCNNAdapter, TorchvisionViTAdapter

__all__ = [
    "adapter_classes",
    "get_adapter",
    "logits_function",
    "output_logits",
    "register_adapter",
    "unregister_adapter",
]

_BUILTIN: List[Type[ModelAdapter]] = [
    TimmViTAdapter,
    TimmCNNAdapter,
    TorchvisionViTAdapter,
    TorchvisionCNNAdapter,
    HFVisionAdapter,
    HubDinov2Adapter,
]
_USER: List[Type[ModelAdapter]] = []


def register_adapter(adapter_cls: Type[ModelAdapter]) -> Type[ModelAdapter]:
    """Add a model family: ``adapter_cls.matches(model)`` decides, before the built-in ones.

    Usable as a class decorator. Registering the same class twice keeps one entry.

    Parameters
    ----------
    adapter_cls : subclass of ModelAdapter
        Implements at least :meth:`ModelAdapter.matches` and whatever differs from the
        base class (usually ``_read_layout`` and ``classifier_head``).

    Returns
    -------
    The class itself.

    Raises
    ------
    TypeError
        If ``adapter_cls`` is not a ``ModelAdapter`` subclass.
    """
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, ModelAdapter)):
        raise TypeError(f"adapter_cls: expected a subclass of ModelAdapter, got {adapter_cls!r}")
    if adapter_cls not in _USER:
        _USER.insert(0, adapter_cls)
    return adapter_cls


def unregister_adapter(adapter_cls: Type[ModelAdapter]) -> None:
    """Remove an adapter added with :func:`register_adapter` (no error if absent)."""
    if adapter_cls in _USER:
        _USER.remove(adapter_cls)


def adapter_classes() -> List[Type[ModelAdapter]]:
    """Adapter classes in lookup order (user ones first; the generic fallback is not listed)."""
    return list(_USER) + list(_BUILTIN)


def get_adapter(
    model: nn.Module, layout: Optional[ViTLayout] = None, **overrides: Any
) -> ModelAdapter:
    """The adapter describing ``model``.

    Parameters
    ----------
    model : nn.Module
    layout : ViTLayout, optional
        A hand-written description; it replaces what would be read from the model (module
        paths included), while family knowledge that no path expresses (how to read
        attention probabilities, the classifier head) still comes from the family adapter.
    **overrides
        :class:`ViTLayout` fields to set (``num_prefix_tokens=``, ``patch_size=``, ...);
        ``None`` values are ignored.

    Returns
    -------
    ModelAdapter
        The first registered adapter whose ``matches(model)`` is true, else the generic
        fallback (:class:`~captum_nave.adapters.generic.GenericAdapter`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if layout is not None and not isinstance(layout, ViTLayout):
        raise TypeError(f"layout: expected a ViTLayout or None, got {type(layout).__name__}")
    cls: Type[ModelAdapter] = GenericAdapter
    for candidate in adapter_classes():
        if candidate.matches(model):
            cls = candidate
            break
    adapter = cls(model, layout)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return adapter.with_overrides(**overrides) if overrides else adapter


def output_logits(model: Any, output: Any) -> Tensor:
    """Class scores ``(N, K)`` inside ``model``'s output (a ``ModelOutput`` is unwrapped)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(model, nn.Module):
        return get_adapter(model).logits(output)
    return unwrap_output(output)


def logits_function(model: Any) -> Callable[..., Tensor]:
    """A forward function returning class scores, for Captum.

    For an ``nn.Module``: ``f(*args) = adapter.logits(model(*args))`` (a Hugging Face
    ``ModelOutput`` becomes its logits; a tensor passes unchanged); for any other callable
    its non-tensor output is unwrapped by :func:`~captum_nave.adapters.base.unwrap_output`.
    """
    if isinstance(model, nn.Module):
        return get_adapter(model).forward_logits()
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")

    def forward(*args: Any, **kwargs: Any) -> Tensor:
        return unwrap_output(model(*args, **kwargs))

    return forward
