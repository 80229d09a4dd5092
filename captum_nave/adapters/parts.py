"""What adapters report about a model's parts: attention access, head, LRP descriptions.

Plain data (frozen dataclasses holding the model's own modules), so that consumers read
a family's facts without knowing the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "AttentionAccess",
    "BlockParts",
    "ClassifierHead",
    "EagerSwitch",
    "LRPKit",
    "MapParts",
    "MlpParts",
    "Pool",
    "TransformerParts",
]


# --------------------------------------------------------------------------- attention
@dataclass(frozen=True)
class EagerSwitch:
    """How to make an attention module compute explicit probabilities, and where to read them.

    While the attribute ``flag`` of ``owner`` is set to ``off_value`` the module takes its
    non-fused path, and the probabilities ``(B, heads, T, T)`` are the first positional
    input of ``probs`` (timm: ``fused_attn = False``, probabilities enter ``attn_drop``).
    """

    owner: nn.Module
    flag: str
    off_value: Any
    probs: nn.Module


@dataclass(frozen=True)
class AttentionAccess:
    """Where one block's attention lives.

    Attributes
    ----------
    index : int
        Block index (0-based, flattened).
    block, attn : nn.Module
        The block and its attention module.
    proj : nn.Module
        Output projection (a ``Linear``); its input is the head-concatenated ``attn @ v``.
    qkv : nn.Module or None
        Fused projection producing ``[q, k, v]`` (timm, DINOv2).
    query, key, value : nn.Module or None
        Separate projections (Hugging Face).
    q_norm, k_norm : nn.Module or None
        Per-head normalisations of queries / keys.
    inner_norm : nn.Module or None
        A transform between ``attn @ v`` and ``proj`` (timm ``attn.norm``); it breaks the
        linear CLS decomposition.
    gated : bool
        The attention output is gated (not a plain ``attn @ v``).
    layer_scale : nn.Module or None
        Layer scale applied to the attention output before the residual addition.
    num_heads : int
    scale : float or None
        Softmax temperature (``None``: ``head_dim ** -0.5``).
    exact : bool
        Whether ``softmax(q k^T * scale)`` recomputed from the projections (with
        ``q_norm`` / ``k_norm``) is the attention the module applies. False for rotary
        embeddings or relative position terms.
    eager : EagerSwitch or None
        How to read the probabilities from the module itself.
    """

    index: int
    block: nn.Module
    attn: nn.Module
    proj: nn.Module
    num_heads: int
    qkv: Optional[nn.Module] = None
    query: Optional[nn.Module] = None
    key: Optional[nn.Module] = None
    value: Optional[nn.Module] = None
    q_norm: Optional[nn.Module] = None
    k_norm: Optional[nn.Module] = None
    inner_norm: Optional[nn.Module] = None
    gated: bool = False
    layer_scale: Optional[nn.Module] = None
    scale: Optional[float] = None
    exact: bool = True
    eager: Optional[EagerSwitch] = None

    @property
    def has_qk(self) -> bool:
        """Query and key projections are reachable by hooks."""
        return self.qkv is not None or (self.query is not None and self.key is not None)

    @property
    def has_v(self) -> bool:
        """The value projection is reachable by hooks."""
        return self.qkv is not None or self.value is not None

    @property
    def decomposable(self) -> bool:
        """``proj(attn @ v)`` is the whole attention output (no norm or gate in between)."""
        return self.inner_norm is None and not self.gated


# --------------------------------------------------------------------------- head / LRP parts
@dataclass(frozen=True)
class MlpParts:
    """``fc2(norm(act(fc1(x))))`` of a transformer MLP.

    ``act`` computes the model's activation function and is a standard module type
    (``nn.GELU``, ``nn.GELU(approximate="tanh")``, ``QuickGELU``, ``nn.SiLU``, ...), so
    rules attach to it by type.
    """

    fc1: nn.Module
    act: nn.Module
    fc2: nn.Module
    norm: Optional[nn.Module] = None


@dataclass(frozen=True)
class MapParts:
    """Multi-head attention pooling (SigLIP, timm ``attn_pool``).

    ``h = attention(probe, x, x)``; ``out = h + mlp(norm(h))``; the pooled feature is
    ``out[:, 0]``.
    """

    probe: Tensor
    attention: nn.MultiheadAttention
    norm: nn.Module
    mlp: MlpParts


@dataclass(frozen=True)
class Pool:
    """One pooled feature of the classifier input.

    ``kind``: ``"token"`` (the token at ``index``), ``"avg"`` (mean of tokens from
    ``start`` on) or ``"map"`` (attention pooling described by ``map``).
    """

    kind: str
    index: int = 0
    start: int = 0
    map: Optional[MapParts] = None
    module: Optional[nn.Module] = None

    def __call__(self, tokens: Tensor) -> Tensor:
        if self.kind == "token":
            return tokens[:, self.index]
        if self.kind == "avg":
            return tokens[:, self.start :].mean(dim=1)
        if self.kind == "map" and self.module is not None:
            return self.module(tokens)
        raise ValueError(f"pool: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class ClassifierHead:
    """What the model computes from the output of its last block.

    ``scores = post(cat([pool(final_norm(tokens)) for pool in pools]))``.

    Attributes
    ----------
    final_norm : nn.Module or None
        Norm applied to every token (timm ``norm``, HF ``layernorm``).
    pools : tuple of Pool
        Pooled features, concatenated along the channels (DINOv2 classifiers: CLS and the
        mean of the patch tokens).
    post : tuple of nn.Module
        Modules applied after pooling, in order (``fc_norm``, ``head``; Hugging Face
        ``classifier``; CLIP ``post_layernorm``). The last ``Linear`` is the classifier
        (:attr:`classifier`); a backbone may have none.
    """

    final_norm: Optional[nn.Module]
    pools: Tuple[Pool, ...]
    post: Tuple[nn.Module, ...] = ()

    @property
    def classifier(self) -> Optional[nn.Linear]:
        """The last ``Linear`` of :attr:`post` (the class embeddings), or None."""
        for m in reversed(self.post):
            if isinstance(m, nn.Linear):
                return m
        return None

    def __call__(self, tokens: Tensor) -> Tensor:
        """Scores ``(N, K)`` from the last block's output tokens ``(N, T, D)``."""
        x = self.final_norm(tokens) if self.final_norm is not None else tokens
        feats = [p(x) for p in self.pools]
        out = torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0]
        for m in self.post:
            out = m(out)
        return out

    def token_logits(self, tokens: Tensor) -> Tensor:
        """Every token projected onto the classes: ``(N, T, D) -> (N, T, K)``.

        Each token goes through ``final_norm`` and takes the place of every pooled
        feature (for a head reading CLS and the patch mean, a token is read as both);
        attention pooling is skipped (the token is its own pooled feature). For a
        token-pooled model the CLS token's row equals the model's scores.
        """
        x = self.final_norm(tokens) if self.final_norm is not None else tokens
        out = torch.cat([x] * len(self.pools), dim=-1) if len(self.pools) > 1 else x
        for m in self.post:
            out = m(out)
        return out


@dataclass(frozen=True)
class BlockParts:
    """A pre-norm transformer block ``x + ls1 * attn(norm1(x))``, then ``+ ls2 * mlp(norm2(x))``.

    ``ls1`` / ``ls2`` are the per-channel layer-scale vectors (``None``: no layer scale).
    """

    norm1: nn.Module
    attention: AttentionAccess
    norm2: nn.Module
    mlp: MlpParts
    ls1: Optional[Tensor] = None
    ls2: Optional[Tensor] = None


@dataclass(frozen=True)
class TransformerParts:
    """A ViT, as LRP must see it.

    Attributes
    ----------
    patch : nn.Module
        The patch projection (its output holds every patch token, raster order).
    patch_layout : {"NLD", "NCHW", "NHWC"}
        Layout of ``patch``'s output.
    tokens : callable
        ``tokens(pixels) -> (N, T, D)``: the model's own embedding (prefix tokens,
        patches, positions), i.e. the input of ``pre_norm``. It must be the patch
        projection placed at positions ``num_prefix:`` plus terms that do not depend on
        the pixels (checked at every forward pass of the LRP copy).
    num_prefix : int
    pre_norm : nn.Module or None
    blocks : list of BlockParts
    head : ClassifierHead
    """

    patch: nn.Module
    patch_layout: str
    tokens: Callable[[Tensor], Tensor]
    num_prefix: int
    pre_norm: Optional[nn.Module]
    blocks: List[BlockParts]
    head: ClassifierHead


class LRPKit(Protocol):
    """Builders the LRP canonicaliser hands to :meth:`ModelAdapter.lrp_rewrite`.

    The adapters say which modules of their family form what; the kit (implemented
    in :mod:`captum_nave.attribution._lrp_canonize`) builds the LRP-ready modules.
    """

    def fuse(self, conv: nn.Module, bn: nn.Module, where: str) -> nn.Module:
        """Convolution with an eval-mode BatchNorm folded in."""

    def activation(self, act: Optional[nn.Module]) -> nn.Module:
        """A fresh, non-inplace copy of an activation (``nn.Identity`` for None)."""

    def residual(
        self, body: Sequence[nn.Module], shortcut: Optional[nn.Module], post_act: Optional[nn.Module]
    ) -> nn.Module:
        """``post_act(add(body(x), shortcut(x)))`` with an explicit addition module."""

    def transformer(self, parts: TransformerParts, where: str) -> nn.Module:
        """A ViT with explicit residual additions and detached attention (CP-LRP)."""


