"""What the lens needs to know about a ViT: its blocks, token layout, final norm and head.

:class:`LensSpec` is the small interface the lens is written against; :func:`lens_spec`
reads it from the model's adapter (:func:`captum_nave.adapters.get_adapter`): the blocks
and token layout, and the classifier head (final norm, pooling, classifier) of
:meth:`~captum_nave.adapters.ModelAdapter.classifier_head`, so every family the adapters
know (timm, Hugging Face ``ViTForImageClassification`` / ``DeiTForImageClassification``,
...) works the same way. Families without a readable classifier can be described by
hand with ``LensSpec(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from torch import Tensor, nn

from captum_nave.adapters import ViTLayout

__all__ = ["LensSpec", "lens_spec", "POOLINGS"]

#: How the model turns tokens into its class scores.
POOLINGS = ("token", "avg")


@dataclass
class LensSpec:
    """How every token of a ViT is projected onto the classes.

    The projection of a token ``z`` (``D`` features) is
    ``head(head_norm(norm(z)))``, the path the model's own pooled feature takes:

    * ``pooling="token"`` (CLS models): the model reads the CLS token after the final
      ``norm`` and feeds it to ``head`` (``head_norm`` is an identity), so the
      projection of the last block's CLS token *is* the model's logits;
    * ``pooling="avg"`` (average-pool models): the model averages the patch tokens,
      then applies ``head_norm`` (timm ``fc_norm``) and ``head``. Each token is
      projected as if it were the average. With an identity ``head_norm`` the mean of
      the last block's patch-token projections equals the model's logits (the head is
      linear); with a LayerNorm there it does not (a LayerNorm of a mean is not the
      mean of LayerNorms).

    Register tokens and other prefix tokens are projected the same way.

    Attributes
    ----------
    blocks : list of nn.Module
        Transformer blocks in execution order; the lens reads each block's output.
    norm : nn.Module
        The final normalisation applied to every token (timm ``norm``, Hugging Face
        ``layernorm``).
    head_norm : nn.Module
        Normalisation between pooling and the classifier (timm ``fc_norm``), or identity.
    head : nn.Module
        The classifier (``D`` -> ``K`` class scores).
    pooling : {"token", "avg"}
    layout : ViTLayout
        Prefix tokens (CLS, registers), patch size.
    source : str
        Where the description came from.
    """

    blocks: List[nn.Module]
    norm: nn.Module
    head_norm: nn.Module
    head: nn.Module
    pooling: str
    layout: ViTLayout
    source: str = "hand"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "token" and not self.layout.has_cls:
            raise ValueError("pooling: 'token' pooling needs a CLS token, but the layout has none (cls_index=None)")
        if not self.blocks:
            raise ValueError("blocks: expected at least one transformer block, got none")

    def project(self, tokens: Tensor) -> Tensor:
        """Class scores of tokens: (..., D) -> (..., K)."""
        return self.head(self.head_norm(self.norm(tokens)))


def _one_module(modules: List[nn.Module]) -> nn.Module:
    if not modules:
        return nn.Identity()
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def lens_spec(model: nn.Module) -> LensSpec:
    """Read the :class:`LensSpec` of a ViT classifier from its adapter.

    Raises
    ------
    ValueError
        The model is not a ViT, has no classifier head (``num_classes=0``, a backbone),
        pools with attention (MAP heads) or concatenates several pooled features
        (DINOv2 classifiers: CLS and patch mean), or its head is not known (describe it
        with ``LensSpec(...)``).
    """
    from captum_nave.registers.layout import vit_adapter

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    try:
        adapter = vit_adapter(model)
    except ValueError as exc:
        raise ValueError(f"model: the lens needs a ViT ({str(exc).splitlines()[0]})") from None
    layout = adapter.layout
    assert layout is not None  # vit_adapter refuses models without one
    head = adapter.classifier_head()
    name = type(model).__name__
    if head is None or not head.pools:
        raise ValueError(
            f"model: cannot find the final norm and classifier head of {name}; describe them with "
            "captum_nave.lens.LensSpec(blocks=..., norm=..., head_norm=..., head=..., pooling=..., layout=...)"
        )
    if any(p.kind == "map" for p in head.pools):
        raise ValueError("model: attention-pooling (MAP) heads mix all tokens; a per-token projection is not defined")
    classifier = head.classifier
    if classifier is None or head.post[-1] is not classifier:
        raise ValueError(f"model: {name} has no classifier head (num_classes=0); the lens projects onto classes")
    if len(head.pools) != 1 or head.pools[0].kind not in POOLINGS:
        raise ValueError(
            f"model: the head of {name} pools {', '.join(p.kind for p in head.pools)} and concatenates them; "
            f"the lens supports one pooled feature ({' or '.join(POOLINGS)})"
        )
    # modules between pooling and the classifier (timm fc_norm); dropout is a no-op in eval
    between = [m for m in head.post[:-1] if not isinstance(m, nn.Dropout)]
    return LensSpec(
        blocks=[m for _, m in adapter.blocks()],
        norm=head.final_norm if head.final_norm is not None else nn.Identity(),
        head_norm=_one_module(between),
        head=classifier,
        pooling=head.pools[0].kind,
        layout=layout,
        source=layout.source,
    )
