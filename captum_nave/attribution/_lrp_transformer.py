"""The LRP working copy of a Vision Transformer, built from an adapter's description.

Model adapters (:mod:`captum_nave.adapters`) describe a ViT of their family as
:class:`~captum_nave.adapters.TransformerParts` (patch projection, embedding, blocks,
head); :class:`LRPTransformer` rebuilds it with every value-mixing operation as a leaf
module with an LRP rule (CP-LRP, Ali et al. 2022; Achtibat et al. 2024):

* the token embedding is ``place(patch(x)) + c``: the patch projection is the only path
  from the pixels, the prefix tokens, position embeddings (interpolated for the input
  size by the model's own code) and any other pixel-independent terms form a constant
  ``c`` added by :class:`AddConstant` (a bias: it absorbs its share of relevance). ``c``
  is computed from the model's own embedding on a zero image, with every hook suspended;
  each forward pass checks that the embedding is indeed affine in the patch projection;
* attention ``proj(softmax(q k^T * scale) @ v)`` with the probabilities as a leaf
  (:class:`AttentionScores`: a constant for CP-LRP, the softmax rule for AttnLRP) and
  their product with the values (:class:`AttentionMix`); a fused ``qkv`` is split into
  q / k / v Linear layers (:func:`split_qkv`), so fused and separate projections give
  the same relevance; optional ``q_norm`` / ``k_norm`` and a norm before ``proj``;
* residual additions as :class:`Add`, layer scale as a per-channel linear map (timm
  ``LayerScale``: epsilon rule, conserving), MLPs as ``fc1, act, fc2``;
* the head as in the model: final norm, token selection / :class:`TokenMean` / attention
  pooling (:class:`LRPMapPool`, SigLIP), concatenation, post modules.

LayerNorms become :class:`DetachedLayerNorm` afterwards (the canonicaliser's generic
rewrite), so the mean and standard deviation are constants for the relevance pass.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_nave.adapters import (
    AttentionAccess,
    BlockParts,
    ClassifierHead,
    MapParts,
    MlpParts,
    TransformerParts,
)
from captum_nave.attribution._lrp_modules import (
    Add,
    AddConstant,
    AttentionMix,
    AttentionScores,
    TokenMean,
)

__all__ = ["HOOK_DICTS", "LRPTransformer", "LRPMapPool", "fresh_activation", "hooks_suspended", "split_qkv"]

#: The per-module hook dictionaries of ``nn.Module``.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


@contextlib.contextmanager
def hooks_suspended(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run code on ``modules`` with none of their hooks (LRP's, the audit's) firing."""
    saved = []
    for m in modules:
        state = {k: getattr(m, k) for k in HOOK_DICTS if getattr(m, k, None) is not None}
        saved.append((m, state))
        for k, v in state.items():
            setattr(m, k, type(v)())
    try:
        yield
    finally:
        for m, state in saved:
            for k, v in state.items():
                setattr(m, k, v)


def layer_scale(gamma: Optional[Tensor]) -> nn.Module:
    """A per-channel scale ``x * gamma`` as timm's ``LayerScale`` (a linear leaf), or Identity."""
    if gamma is None:
        return nn.Identity()
    from timm.layers import LayerScale

    ls = LayerScale(int(gamma.shape[-1]), init_values=1.0)
    ls.gamma = nn.Parameter(gamma.detach().clone(), requires_grad=False)
    return ls


def _layer_norm_or_none(norm: Optional[nn.Module], what: str) -> Optional[nn.LayerNorm]:
    if norm is None or isinstance(norm, nn.Identity):
        return None
    if isinstance(norm, nn.LayerNorm):
        return norm
    raise TypeError(f"LRP: attention {what} of type {type(norm).__name__} is not supported (Identity or LayerNorm)")


#: attributes by which the LRP copy remembers the user's module a module came from
#: (:func:`captum_nave.attribution._lrp_canonize.module_origins`)
_ORIGIN_ATTRS = ("_lrp_origin", "_lrp_origin_type")


def split_qkv(qkv: nn.Module, where: str) -> Tuple[nn.Linear, nn.Linear, nn.Linear]:
    """A fused ``qkv`` Linear as three Linear layers ``q, k, v`` (same values).

    Each projection is then a layer of its own for the rules: a relative stabiliser
    scales with the values (or queries, keys) alone, not with all three, so a fused
    (timm, torch-hub) and a separate (Hugging Face) attention give the same relevance.
    The three keep the fused layer's origin, so a rule map naming ``...attn.qkv``
    applies to all of them.
    """
    if type(qkv) is not nn.Linear or qkv.out_features % 3:
        raise TypeError(
            f"LRP: the fused qkv projection of '{where}' is {type(qkv).__name__} with "
            f"{getattr(qkv, 'out_features', '?')} outputs; expected an nn.Linear with 3 x D outputs"
        )
    weights = qkv.weight.detach().chunk(3, dim=0)
    biases = qkv.bias.detach().chunk(3, dim=0) if qkv.bias is not None else (None, None, None)
    parts = []
    for w, b in zip(weights, biases):
        lin = _linear(w, b)
        for attr in _ORIGIN_ATTRS:
            if attr in vars(qkv):
                setattr(lin, attr, getattr(qkv, attr))
        parts.append(lin)
    return parts[0], parts[1], parts[2]


class LRPAttention(nn.Module):
    """Self-attention computed explicitly: q, k, v as separate Linear layers, scores and mix."""

    def __init__(self, access: AttentionAccess, where: str) -> None:
        super().__init__()
        if not access.exact:
            raise TypeError(
                f"LRP: the attention of '{where}' ({type(access.attn).__name__}) is not a plain "
                "softmax(q k^T) of its projections (rotary or relative position terms); not supported"
            )
        if access.gated:
            raise TypeError(f"LRP: the attention of '{where}' is gated; not supported")
        self.num_heads = int(access.num_heads)
        if access.qkv is not None:
            self.query, self.key, self.value = split_qkv(access.qkv, where)
        else:
            self.query, self.key, self.value = access.query, access.key, access.value
        if not (self.query and self.key and self.value):
            raise TypeError(f"LRP: no q / k / v projections found for '{where}'")
        self.head_dim = int(self.value.out_features) // self.num_heads
        scale = access.scale if access.scale is not None else self.head_dim ** -0.5
        self.scores = AttentionScores(
            float(scale), _layer_norm_or_none(access.q_norm, "q_norm"), _layer_norm_or_none(access.k_norm, "k_norm")
        )
        self.mix = AttentionMix()
        self.norm = access.inner_norm if access.inner_norm is not None else nn.Identity()
        self.proj = access.proj

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        split = lambda t: t.reshape(b, n, h, hd).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = self.mix(v, attn=self.scores(q, k))
        out = out.transpose(1, 2).reshape(b, n, h * hd)
        return self.proj(self.norm(out))


def fresh_activation(act: Optional[nn.Module]) -> nn.Module:
    """A non-inplace, unshared copy of an activation module (Identity for None)."""
    if act is None or type(act) is nn.Identity:
        return nn.Identity()
    new = copy.deepcopy(act)
    if hasattr(new, "inplace"):
        new.inplace = False
    return new


def mlp_sequential(parts: MlpParts) -> nn.Sequential:
    """``fc1, act, [norm], fc2`` as one ``nn.Sequential`` with an unshared activation."""
    layers: List[nn.Module] = [parts.fc1, fresh_activation(parts.act)]
    if parts.norm is not None:
        layers.append(parts.norm)
    layers.append(parts.fc2)
    return nn.Sequential(*layers)


class LRPBlock(nn.Module):
    """Pre-norm transformer block with explicit residual additions."""

    def __init__(self, parts: BlockParts, where: str) -> None:
        super().__init__()
        self.norm1 = parts.norm1
        self.attn = LRPAttention(parts.attention, where)
        self.ls1 = layer_scale(parts.ls1)
        self.add1 = Add()
        self.norm2 = parts.norm2
        self.mlp = mlp_sequential(parts.mlp)
        self.ls2 = layer_scale(parts.ls2)
        self.add2 = Add()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.add1(x, self.ls1(self.attn(self.norm1(x))))
        return self.add2(x, self.ls2(self.mlp(self.norm2(x))))


class LRPMapPool(nn.Module):
    """Attention pooling with a learned probe (SigLIP).

    The probe's query is a constant, the weights an :class:`AttentionScores` leaf.
    ``h = out_proj(softmax(q_probe k^T / sqrt(d)) @ v)``; ``out = h + mlp(norm(h))``;
    returns ``out[:, 0]``. Built from an ``nn.MultiheadAttention`` (packed projections).
    """

    def __init__(self, parts: MapParts, where: str) -> None:
        super().__init__()
        mha = parts.attention
        if not getattr(mha, "batch_first", False) or mha.bias_k is not None or mha.add_zero_attn:
            raise TypeError(f"LRP: attention pooling at '{where}' must be batch_first without bias_k / zero attention")
        e, h = int(mha.embed_dim), int(mha.num_heads)
        self.num_heads, self.head_dim = h, e // h
        if mha.in_proj_weight is not None:
            wq, wk, wv = mha.in_proj_weight.detach().split(e, dim=0)
        else:
            wq, wk, wv = (getattr(mha, f"{c}_proj_weight").detach() for c in "qkv")
        bq, bk, bv = (
            mha.in_proj_bias.detach().split(e, dim=0) if mha.in_proj_bias is not None else (None, None, None)
        )
        self.key = _linear(wk, bk)
        self.value = _linear(wv, bv)
        with torch.no_grad():
            q = torch.nn.functional.linear(parts.probe.detach(), wq, bq)
        self.register_buffer("query", q)  # (1, P, E): the probe's query, a constant
        self.scores = AttentionScores(float(self.head_dim) ** -0.5, None, None)
        self.mix = AttentionMix()
        out = mha.out_proj
        self.out_proj = _linear(out.weight.detach(), None if out.bias is None else out.bias.detach())
        self.norm = parts.norm
        self.mlp = mlp_sequential(parts.mlp)
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        split = lambda t: t.reshape(b, t.shape[1], h, hd).transpose(1, 2)  # noqa: E731
        q = split(self.query.expand(b, -1, -1))
        out = self.mix(split(self.value(x)), attn=self.scores(q, split(self.key(x))))
        hidden = self.out_proj(out.transpose(1, 2).reshape(b, -1, h * hd))
        return self.add(hidden, self.mlp(self.norm(hidden)))[:, 0]


def _linear(weight: Tensor, bias: Optional[Tensor]) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin = lin.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


class LRPHead(nn.Module):
    """Final norm, pooling (token / mean / attention pooling), concatenation and post modules."""

    def __init__(self, head: ClassifierHead, where: str) -> None:
        super().__init__()
        self.final_norm = head.final_norm if head.final_norm is not None else nn.Identity()
        self.indices = [p.index for p in head.pools]
        pools: List[nn.Module] = []
        for p in head.pools:
            if p.kind == "avg":
                pools.append(TokenMean(p.start))
            elif p.kind == "map":
                if p.map is None:
                    raise TypeError(f"LRP: attention pooling at '{where}' has no description")
                pools.append(LRPMapPool(p.map, where))
            elif p.kind == "token":
                pools.append(nn.Identity())  # x[:, index] in forward: a re-indexing, no rule
            else:
                raise TypeError(f"LRP: pooling {p.kind!r} at '{where}' is not supported")
        self.pools = nn.ModuleList(pools)
        self.post = nn.Sequential(*head.post) if head.post else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.final_norm(x)
        feats = [
            x[:, idx] if isinstance(pool, nn.Identity) else pool(x)
            for idx, pool in zip(self.indices, self.pools)
        ]
        f = torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0]
        return self.post(f)


class LRPTransformer(nn.Module):
    """A ViT rebuilt for LRP from :class:`~captum_nave.adapters.TransformerParts`.

    Parameters
    ----------
    parts : TransformerParts
        From the adapter of the (copied) model; the patch projection is shared with the
        model's own embedding, so this module's hooks are suspended while the embedding
        constant is computed.
    where : str
        Name for error messages.
    """

    def __init__(self, parts: TransformerParts, where: str) -> None:
        super().__init__()
        if parts.patch_layout not in ("NLD", "NCHW", "NHWC"):
            raise TypeError(f"LRP: unknown patch layout {parts.patch_layout!r}")
        self.patch = parts.patch
        self.patch_layout = parts.patch_layout
        self.num_prefix = int(parts.num_prefix)
        self._tokens = parts.tokens
        self.pos = AddConstant(None)
        self.pre_norm = parts.pre_norm if parts.pre_norm is not None else nn.Identity()
        self.blocks = nn.Sequential(*[LRPBlock(b, f"{where}.block {i}") for i, b in enumerate(parts.blocks)])
        self.head = LRPHead(parts.head, where)
        self.where = where or "<model>"

    def _patch_tokens(self, x: Tensor) -> Tensor:
        p = self.patch(x)
        if self.patch_layout == "NCHW":
            return p.flatten(2).transpose(1, 2)
        return p.reshape(p.shape[0], -1, p.shape[-1])

    def _place(self, patches: Tensor) -> Tensor:
        n, _, d = patches.shape
        prefix = patches.new_zeros(n, self.num_prefix, d)
        return torch.cat([prefix, patches], dim=1)

    def embed_constant(self, x: Tensor) -> Tensor:
        """The pixel-independent part of the embedding for inputs shaped like ``x``.

        Also checks, on ``x`` itself, that the model's embedding equals the placed patch
        projection plus that constant (raises ``TypeError`` otherwise).
        """
        with torch.no_grad(), hooks_suspended(list(self.modules())):
            zero = torch.zeros_like(x[:1])
            const = self._tokens(zero) - self._place(self._patch_tokens(zero))
            full = self._tokens(x)
            placed = self._place(self._patch_tokens(x))
        if full.shape != placed.shape:
            raise TypeError(
                f"LRP: the embedding of '{self.where}' gives {tuple(full.shape)} tokens, but the patch "
                f"projection placed after {self.num_prefix} prefix tokens gives {tuple(placed.shape)}"
            )
        err = (full - placed - const).abs().max()
        scale = full.abs().max().clamp_min(1.0)
        if not err <= 64 * torch.finfo(full.dtype).eps * scale:
            raise TypeError(
                f"LRP: the embedding of '{self.where}' is not the patch projection plus constants "
                f"(deviation {float(err):.3g}); e.g. a norm after the patch projection is not supported"
            )
        return const

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        const = self.embed_constant(x)
        tokens = self.pos(self._place(self._patch_tokens(x)), constant=const)
        return self.head(self.blocks(self.pre_norm(tokens)))
