"""One pass over a ViT that records everything the register measures need.

Per block, hooks record the L2 norm of every token, the CLS token, the CLS
attention row per head and (for selected blocks) the CLS decomposition. Only
``(N, T)`` norms, ``(N, H, T)`` attention rows and ``(N, D)`` vectors are kept:
never full token tensors or full attention matrices.

Attention rows are obtained in one of two ways:

* ``"qkv"`` (default where possible): the output of the block's query / key
  projections (fused ``qkv`` Linear or separate ``query`` / ``key``) is captured
  and ``softmax(q_cls k^T * scale)`` recomputed, with the per-head ``q_norm`` /
  ``k_norm`` applied. The projections run on the fused SDPA path too, so nothing
  depends on hooks that fused attention skips.
* ``"eager"`` (for attention with rotary embeddings, e.g. timm EVA): the
  attention modules' ``fused_attn`` flags are switched off for the pass and the
  attention probabilities are read at the input of ``attn_drop``; the flags are
  restored afterwards, also on failure.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_nave._validation import check_int
from captum_nave.adapters import AttentionAccess, ViTLayout

from .attention import mean_query_attention, query_attention, split_heads
from .decomposition import ClsDecomposition, cosine, decompose_cls
from .layout import vit_adapter

__all__ = ["TokenStatistics", "collect_token_statistics"]


@dataclass
class TokenStatistics:
    """Token norms, CLS attention and CLS decompositions of a ViT on a set of images.

    Attributes
    ----------
    layout : ViTLayout
    input_hw : (int, int)
        Input size.
    grid : (int, int)
        Patch grid ``(h, w)``.
    num_blocks : int
        Number of transformer blocks ``L``.
    norms : Tensor of shape (N, L + 1, T)
        Token L2 norms; index 0 is the input of the first block (embeddings),
        index ``l + 1`` the output of block ``l``.
    cls_tokens : Tensor of shape (N, L + 1, D) or None
        CLS token at the same points (``None`` without CLS).
    attention : Tensor of shape (N, len(attention_layers), H, T)
        Attention row of the query per head (CLS row; without CLS, the mean row of the
        patch queries). Rows sum to 1.
    attention_layers : tuple of int
        Block indices (non-negative) of ``attention``.
    attention_query : {"cls", "mean_patches"}
    decompositions : dict of int -> ClsDecomposition
        CLS decomposition per block index (empty without CLS).
    attn_out_model : dict of int -> Tensor of shape (N, D)
        The model's own CLS attention-sublayer output (projection output after layer
        scale) for the decomposed blocks, to check the decomposition against.
    method : {"qkv", "eager"}
        How attention rows were obtained.
    """

    layout: ViTLayout
    input_hw: Tuple[int, int]
    grid: Tuple[int, int]
    num_blocks: int
    norms: Tensor
    cls_tokens: Optional[Tensor]
    attention: Tensor
    attention_layers: Tuple[int, ...]
    attention_query: str
    decompositions: Dict[int, ClsDecomposition] = field(default_factory=dict)
    attn_out_model: Dict[int, Tensor] = field(default_factory=dict)
    method: str = "qkv"

    @property
    def block_norms(self) -> Tensor:
        """Token norms at the output of each block, shape (N, L, T)."""
        return self.norms[:, 1:]

    def block_index(self, layer: int) -> int:
        """Normalise a (possibly negative) block index."""
        layer = check_int(layer, "layer", low=-self.num_blocks, high=self.num_blocks - 1)
        return layer % self.num_blocks  # type: ignore[operator]

    def attention_at(self, layer: int) -> Tensor:
        """Attention rows ``(N, H, T)`` of one block."""
        b = self.block_index(layer)
        if b not in self.attention_layers:
            raise ValueError(
                f"layer: attention was recorded for blocks {self.attention_layers}, not for block {b}"
            )
        return self.attention[:, self.attention_layers.index(b)]

    def cls_layer_cosine(self) -> Optional[Tensor]:
        """Cosine of the CLS token after each block with the final CLS token, ``(N, L)``."""
        if self.cls_tokens is None:
            return None
        final = self.cls_tokens[:, -1]
        return torch.stack(
            [cosine(self.cls_tokens[:, l + 1], final) for l in range(self.num_blocks)], dim=1
        )


# ----------------------------------------------------------------------------- access
def _choose_method(method: str, accesses: Sequence[AttentionAccess]) -> str:
    if method not in ("auto", "qkv", "eager"):
        raise ValueError(f"method: expected 'auto', 'qkv' or 'eager', got {method!r}")
    eager_ok = all(a.eager is not None for a in accesses)
    qkv_ok = all(a.has_qk for a in accesses)
    if method == "auto":
        if qkv_ok and all(a.exact for a in accesses):
            return "qkv"
        if eager_ok:
            return "eager"
        raise ValueError(
            "layout: cannot obtain attention weights: the blocks have neither a qkv (or query/key) "
            "projection that gives the attention (named in the layout) nor a way to read the "
            "probabilities (timm-style fused_attn flag with attn_drop); set ViTLayout(qkv=...) or "
            "ViTLayout(query=..., key=..., value=...)"
        )
    if method == "qkv" and not qkv_ok:
        raise ValueError(
            f"method: 'qkv' needs the projections named by the layout (qkv={accesses[0].qkv}, "
            "query/key); none was found"
        )
    if method == "eager" and not eager_ok:
        raise ValueError(
            "method: 'eager' needs attention modules whose probabilities can be read (a timm-style "
            "fused_attn flag and an attn_drop module)"
        )
    return method


def _first_tensor(obj: Any) -> Optional[Tensor]:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            if isinstance(o, Tensor):
                return o
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, Tensor):
                return v
    return None


def _normalise_layers(spec: Union[str, Sequence[int], None], n: int, name: str) -> Tuple[int, ...]:
    if spec is None:
        return ()
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"{name}: expected 'all' or a sequence of block indices, got {spec!r}")
        return tuple(range(n))
    if isinstance(spec, Integral) and not isinstance(spec, bool):
        spec = [spec]
    out = []
    for l in spec:
        if isinstance(l, bool) or not isinstance(l, Integral) or not -n <= l < n:
            raise ValueError(f"{name}: expected block indices in [{-n}, {n - 1}], got {list(spec)!r}")
        out.append(int(l) % n)
    return tuple(sorted(set(out)))


# ----------------------------------------------------------------------------- capture
def collect_token_statistics(
    model: nn.Module,
    images: Tensor,
    layout: Optional[ViTLayout] = None,
    *,
    attention_layers: Union[str, Sequence[int], None] = "all",
    decompose_layers: Union[Sequence[int], None] = (-1,),
    method: str = "auto",
    batch_size: int = 16,
) -> TokenStatistics:
    """Run ``model`` on ``images`` and record token norms, CLS attention and decompositions.

    Parameters
    ----------
    model : nn.Module
        A ViT; its mode, ``requires_grad`` flags, buffers and ``fused_attn`` flags are
        left as they were, and all hooks are removed, also on failure.
    images : Tensor of shape (N, C, H, W)
        Preprocessed model input.
    layout : ViTLayout or ModelAdapter, optional
        Token layout and module paths; read from the model by its adapter when omitted
        (:func:`captum_nave.adapters.get_adapter`).
    attention_layers : "all", sequence of int or None, default "all"
        Blocks whose query attention row is recorded.
    decompose_layers : sequence of int or None, default (-1,)
        Blocks whose CLS update is decomposed (ignored without CLS).
    method : {"auto", "qkv", "eager"}, default "auto"
        How attention rows are obtained (see the module docstring).
    batch_size : int, default 16

    Returns
    -------
    TokenStatistics
        All tensors on the CPU in float32 (float64 for a float64 model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"images: expected a tensor of shape (N, C, H, W), got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    if images.shape[0] == 0:
        raise ValueError("images: expected at least one image, got 0")
    batch_size = check_int(batch_size, "batch_size", low=1)
    adapter = vit_adapter(model, layout)
    layout = adapter.layout
    assert layout is not None
    blocks = [m for _, m in adapter.blocks()]
    n_blocks = len(blocks)
    att_layers = _normalise_layers(attention_layers, n_blocks, "attention_layers")
    dec_layers = _normalise_layers(decompose_layers, n_blocks, "decompose_layers") if layout.has_cls else ()
    accesses = [adapter.attention(i) for i in range(n_blocks)]
    needed = sorted(set(att_layers) | set(dec_layers))
    chosen = _choose_method(method, [accesses[i] for i in needed] or accesses[:1])
    for b in list(dec_layers):
        acc = accesses[b]
        if not acc.decomposable or not acc.has_v or not acc.exact:
            warnings.warn(
                f"decompose_layers: block {b} has a transform between attention and projection "
                "(attn.norm / gate), no value projection, or attention that is not a plain "
                "softmax(q k^T) of its projections (rotary / relative position terms); its CLS "
                "decomposition is skipped",
                RuntimeWarning,
                stacklevel=2,
            )
            dec_layers = tuple(x for x in dec_layers if x != b)
    if any(m.training for m in model.modules()):
        warnings.warn(
            "model: the model (or a submodule) is in training mode; dropout makes the measures random. "
            "Call model.eval() before measuring (it is not changed here).",
            RuntimeWarning,
            stacklevel=2,
        )

    H, W = int(images.shape[-2]), int(images.shape[-1])
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = images.device

    per_batch: List[Dict[str, Any]] = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        per_batch.append(
            _run_batch(model, x, layout, blocks, accesses, att_layers, dec_layers, chosen, (H, W))
        )

    num_tokens = per_batch[0]["num_tokens"]
    grid = layout.grid((H, W), num_tokens)
    norms = torch.cat([b["norms"] for b in per_batch])
    cls_tokens = torch.cat([b["cls"] for b in per_batch]) if layout.has_cls else None
    if att_layers:
        attention = torch.cat([b["attention"] for b in per_batch])
    else:
        attention = norms.new_zeros(norms.shape[0], 0, 1, num_tokens)
    decomps = {
        l: ClsDecomposition.concat([b["decomp"][l] for b in per_batch]) for l in dec_layers
    }
    attn_out = {l: torch.cat([b["attn_out"][l] for b in per_batch]) for l in dec_layers}
    return TokenStatistics(
        layout=layout,
        input_hw=(H, W),
        grid=grid,
        num_blocks=n_blocks,
        norms=norms,
        cls_tokens=cls_tokens,
        attention=attention,
        attention_layers=att_layers,
        attention_query="cls" if layout.has_cls else "mean_patches",
        decompositions=decomps,
        attn_out_model=attn_out,
        method=chosen,
    )


def _run_batch(
    model: nn.Module,
    x: Tensor,
    layout: ViTLayout,
    blocks: Sequence[nn.Module],
    accesses: Sequence[AttentionAccess],
    att_layers: Tuple[int, ...],
    dec_layers: Tuple[int, ...],
    method: str,
    input_hw: Tuple[int, int],
) -> Dict[str, Any]:
    from captum_nave.activations import StopForward, preserve_model_state, run_until_stopped

    n_blocks = len(blocks)
    cls_i = layout.cls_index
    npfx = layout.num_prefix_tokens
    needed = set(att_layers) | set(dec_layers)
    norms: List[Optional[Tensor]] = [None] * (n_blocks + 1)
    clss: List[Optional[Tensor]] = [None] * (n_blocks + 1)
    rows: Dict[int, Tensor] = {}
    scratch: Dict[int, Dict[str, Tensor]] = {b: {} for b in needed}
    decomp: Dict[int, ClsDecomposition] = {}
    attn_out: Dict[int, Tensor] = {}
    meta: Dict[str, int] = {}
    handles: List[Any] = []
    saved_flags: List[Tuple[nn.Module, str, Any]] = []

    def record(slot: int, tokens: Tensor) -> None:
        if tokens is None or tokens.dim() != 3:
            raise ValueError(
                f"layout: block {max(slot - 1, 0)} does not carry tokens of shape (N, T, D); "
                "check ViTLayout.blocks"
            )
        t = tokens.detach()
        meta.setdefault("num_tokens", int(t.shape[1]))
        norms[slot] = t.float().norm(dim=-1).cpu() if t.dtype != torch.float64 else t.norm(dim=-1).cpu()
        if cls_i is not None:
            clss[slot] = t[:, cls_i].to(_out_dtype(t)).cpu()

    def pre_hook(b: int):
        def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            tokens = _first_tensor(args) if args else _first_tensor(kwargs)
            if b == 0:
                record(0, tokens)
            if b in dec_layers and cls_i is not None and tokens is not None:
                scratch[b]["skip"] = tokens[:, cls_i].detach()
        return hook

    def post_hook(b: int):
        def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            record(b + 1, _first_tensor(output))
            if b == n_blocks - 1:
                raise StopForward  # the final norm and the head are not needed
        return hook

    def stash(b: int, key: str):
        def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            scratch[b][key] = _first_tensor(output).detach()
        return hook

    def attn_drop_hook(b: int):
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            probs = args[0].detach()  # (B, H, T, T)
            if cls_i is not None:
                scratch[b]["row"] = probs[:, :, cls_i, :]
            else:
                scratch[b]["row"] = probs[:, :, npfx:, :].mean(dim=2)
        return hook

    def proj_hook(b: int):
        acc = accesses[b]

        def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            s = scratch[b]
            q = k = v = None
            if acc.qkv is not None and "qkv" in s:
                qkv = s.pop("qkv")
                bsz, t, three_a = qkv.shape
                a = three_a // 3
                if three_a % 3 or a % acc.num_heads:
                    raise ValueError(
                        f"num_heads: the qkv projection of block {b} has {three_a} outputs, not "
                        f"3 * a multiple of num_heads={acc.num_heads}; check ViTLayout.qkv / num_heads"
                    )
                parts = qkv.reshape(bsz, t, 3, acc.num_heads, a // acc.num_heads).permute(2, 0, 3, 1, 4)
                q, k, v = parts[0], parts[1], parts[2]
            elif "query" in s:
                q = split_heads(s.pop("query"), acc.num_heads)
                k = split_heads(s.pop("key"), acc.num_heads)
                if "value" in s:
                    v = split_heads(s.pop("value"), acc.num_heads)
            if method == "qkv":
                if q is None or k is None:
                    raise ValueError(
                        f"layout: the query/key projections of block {b} did not run during the "
                        "forward pass; check ViTLayout.qkv / query / key"
                    )
                dt = _out_dtype(q)
                q, k = q.to(dt), k.to(dt)
                if acc.q_norm is not None:
                    q = acc.q_norm(q)
                if acc.k_norm is not None:
                    k = acc.k_norm(k)
                scale = acc.scale if acc.scale is not None else q.shape[-1] ** -0.5
                if cls_i is not None:
                    row = query_attention(q, k, scale, cls_i)
                else:
                    row = mean_query_attention(q, k, scale, range(npfx, q.shape[2]))
            else:
                if "row" not in s:
                    raise ValueError(
                        f"method: 'eager' attention of block {b} did not pass through its probability module"
                    )
                row = s.pop("row").to(_out_dtype(s.get("skip", args[0])))
            if b in att_layers:
                rows[b] = row.cpu()
            if b in dec_layers:
                if v is None:
                    raise ValueError(f"layout: no value projection captured for block {b}")
                ls = acc.layer_scale
                ls_fn = None if ls is None else (lambda z, _m=ls: _m(z.to(_param_dtype(_m, z))).to(z.dtype))
                dt = row.dtype
                bias = acc.proj.bias if getattr(acc.proj, "bias", None) is not None else None
                d = decompose_cls(
                    row,
                    v.to(dt),
                    acc.proj.weight.detach().to(dt),
                    None if bias is None else bias.detach().to(dt),
                    layout,
                    s.pop("skip").to(dt),
                    ls_fn,
                )
                decomp[b] = ClsDecomposition(**{k2: getattr(d, k2).cpu() for k2 in d.__dataclass_fields__})
                out = _first_tensor(output).detach()[:, cls_i]
                if ls is not None:
                    out = ls(out)
                attn_out[b] = out.to(dt).cpu()
            s.clear()
        return hook

    try:
        with preserve_model_state(model):
            for b, blk in enumerate(blocks):
                if b == 0 or b in dec_layers:
                    handles.append(blk.register_forward_pre_hook(pre_hook(b), with_kwargs=True))
                handles.append(blk.register_forward_hook(post_hook(b)))
            for b in sorted(needed):
                acc = accesses[b]
                if acc.qkv is not None:
                    handles.append(acc.qkv.register_forward_hook(stash(b, "qkv")))
                else:
                    for key, mod in (("query", acc.query), ("key", acc.key), ("value", acc.value)):
                        if mod is not None:
                            handles.append(mod.register_forward_hook(stash(b, key)))
                if method == "eager":
                    sw = acc.eager
                    assert sw is not None
                    saved_flags.append((sw.owner, sw.flag, getattr(sw.owner, sw.flag)))
                    setattr(sw.owner, sw.flag, sw.off_value)
                    handles.append(sw.probs.register_forward_pre_hook(attn_drop_hook(b)))
                handles.append(acc.proj.register_forward_hook(proj_hook(b)))
            run_until_stopped(model, x)
    finally:
        for h in handles:
            h.remove()
        for mod, flag, value in saved_flags:
            setattr(mod, flag, value)

    if any(n is None for n in norms):
        missing = [i - 1 for i, n in enumerate(norms) if n is None]
        raise ValueError(f"layout: blocks {missing} did not run during the forward pass")
    meta_tokens = meta["num_tokens"]
    layout.grid(input_hw, meta_tokens)  # validates the layout against the sequence length
    out: Dict[str, Any] = {
        "num_tokens": meta_tokens,
        "norms": torch.stack(norms, dim=1),  # type: ignore[arg-type]
        "decomp": decomp,
        "attn_out": attn_out,
    }
    if cls_i is not None:
        out["cls"] = torch.stack(clss, dim=1)  # type: ignore[arg-type]
    if att_layers:
        missing_att = [b for b in att_layers if b not in rows]
        if missing_att:
            raise ValueError(f"layout: no attention captured for blocks {missing_att}; check ViTLayout.proj")
        out["attention"] = torch.stack([rows[b] for b in att_layers], dim=1)
    return out


def _out_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _param_dtype(module: nn.Module, z: Tensor) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return z.dtype
