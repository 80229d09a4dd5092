"""What the lens needs to know about a ViT: its blocks, token layout, final norm and head.

:class:`LensSpec` is the small interface the lens is written against; :func:`lens_spec`
reads it from a model. The facts come from the model's own structure: the token
layout from :func:`captum_nave.registers.layout.vit_layout`, the classifier from
timm's ``VisionTransformer`` attributes (``norm``, ``fc_norm``, ``head``,
``global_pool``, ``attn_pool``). Families without a readable classifier can be
described by hand with ``LensSpec(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from torch import Tensor, nn

from captum_nave.registers.layout import ViTLayout, resolve_blocks, vit_layout

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


def _identity_if_none(m: object) -> nn.Module:
    return m if isinstance(m, nn.Module) else nn.Identity()


def lens_spec(model: nn.Module) -> LensSpec:
    """Read the :class:`LensSpec` of a ViT classifier.

    Raises
    ------
    ValueError
        The model has no classifier head (``num_classes=0``), pools with attention
        (MAP heads) or by max, or its structure is not recognised (describe it with
        ``LensSpec(...)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    try:
        layout = vit_layout(model)
    except ValueError as exc:
        raise ValueError(f"model: the lens needs a ViT ({str(exc).splitlines()[0]})") from None
    head = getattr(model, "head", None)
    if layout.source != "timm" or not hasattr(model, "global_pool") or not isinstance(head, nn.Module):
        raise ValueError(
            f"model: cannot find the final norm and classifier head of {type(model).__name__}; describe them with "
            "captum_nave.lens.LensSpec(blocks=..., norm=..., head_norm=..., head=..., pooling=..., layout=...)"
        )
    if isinstance(head, nn.Identity):
        raise ValueError(f"model: {type(model).__name__} has no classifier head (num_classes=0); the lens projects onto classes")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("model: attention-pooling (MAP) heads mix all tokens; a per-token projection is not defined")
    pool = getattr(model, "global_pool", "token")
    if pool not in POOLINGS:
        raise ValueError(f"model: global_pool={pool!r} is not supported by the lens (expected one of {POOLINGS})")
    return LensSpec(
        blocks=resolve_blocks(model, layout),
        norm=_identity_if_none(getattr(model, "norm", None)),
        head_norm=_identity_if_none(getattr(model, "fc_norm", None)),
        head=head,
        pooling=pool,
        layout=layout,
        source="timm",
    )
