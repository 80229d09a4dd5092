"""Tiny Hugging Face vision models built from config classes (random weights, no downloads)."""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

#: Input size of every tiny model (8-pixel patches: a 4x4 grid).
SIZE = 32


def _small(**kw) -> dict:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=SIZE, patch_size=8)
    base.update(kw)
    return base


def builders() -> Dict[str, Callable[..., nn.Module]]:
    """Class name -> ``build(**config_overrides)`` for every supported class."""
    import transformers as T

    return {
        "ViTModel": lambda **kw: T.ViTModel(T.ViTConfig(**_small(**kw))),
        "ViTForImageClassification": lambda **kw: T.ViTForImageClassification(T.ViTConfig(**_small(num_labels=5, **kw))),
        "DeiTForImageClassificationWithTeacher": lambda **kw: T.DeiTForImageClassificationWithTeacher(
            T.DeiTConfig(**_small(num_labels=5, **kw))
        ),
        "Dinov2Model": lambda **kw: T.Dinov2Model(T.Dinov2Config(**_small(**kw))),
        "Dinov2ForImageClassification": lambda **kw: T.Dinov2ForImageClassification(
            T.Dinov2Config(**_small(num_labels=5, **kw))
        ),
        "Dinov2WithRegistersModel": lambda **kw: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**_small(num_register_tokens=4, **kw))
        ),
        "CLIPVisionModel": lambda **kw: T.CLIPVisionModel(T.CLIPVisionConfig(**_small(**kw))),
        "SiglipVisionModel": lambda **kw: T.SiglipVisionModel(T.SiglipVisionConfig(**_small(**kw))),
    }


#: The classes of issue 10, in table order.
CLASSES = (
    "ViTModel",
    "ViTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "Dinov2Model",
    "Dinov2ForImageClassification",
    "Dinov2WithRegistersModel",
    "CLIPVisionModel",
    "SiglipVisionModel",
)

#: Prefix tokens (CLS, distillation, registers) and CLS index per class.
LAYOUT = {
    "ViTModel": (1, 0, ()),
    "ViTForImageClassification": (1, 0, ()),
    "DeiTForImageClassificationWithTeacher": (2, 0, ()),
    "Dinov2Model": (1, 0, ()),
    "Dinov2ForImageClassification": (1, 0, ()),
    "Dinov2WithRegistersModel": (5, 0, (1, 2, 3, 4)),
    "CLIPVisionModel": (1, 0, ()),
    "SiglipVisionModel": (0, None, ()),
}


def build(name: str, seed: int = 0, **kw) -> nn.Module:
    """A tiny model of class ``name`` in eval mode."""
    torch.manual_seed(seed)
    return builders()[name](**kw).eval()
