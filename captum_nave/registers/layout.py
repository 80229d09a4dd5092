"""Token layout of a ViT: CLS token, register tokens, other prefix tokens, patch grid.

A ViT sequence is ``[prefix tokens..., patch tokens...]``. The prefix holds an
optional CLS token, optional register tokens (Darcet et al., ICLR 2024) and
possibly other tokens (e.g. DeiT's distillation token). :class:`ViTLayout`
describes where each of them sits and how to reach the transformer blocks and
their attention projections. It is read from the model by :func:`vit_layout`
(timm, torch-hub DINOv2, Hugging Face style) or written by hand for any other
ViT-like module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from numbers import Integral
from typing import Any, List, Optional, Sequence, Tuple, Union

from torch import nn

from captum_nave._validation import check_int, check_int_pair, check_real

__all__ = ["ViTLayout", "vit_layout", "resolve_blocks", "get_submodule"]

_PatchSize = Union[int, Tuple[int, int]]


def _as_pair(value: Any, name: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    return check_int_pair(value, name)


@dataclass(frozen=True)
class ViTLayout:
    """Where the tokens of a ViT sit and how to reach its blocks.

    Token fields describe the sequence ``[prefix..., patches...]`` that every
    transformer block reads and writes. Module paths are dotted names: ``blocks``
    relative to the model, every other path relative to one block. The defaults
    are timm's ``VisionTransformer`` names (``blocks``, ``attn``, ``attn.qkv``,
    ``attn.proj``, ``ls1``, ``attn.q_norm``, ``attn.k_norm``).

    Parameters
    ----------
    num_prefix_tokens : int
        Number of tokens before the patch tokens (CLS + registers + others).
    cls_index : int or None, default 0
        Position of the CLS token inside the prefix; ``None`` for models without one
        (e.g. timm ``class_token=False, global_pool="avg"``).
    register_indices : tuple of int, default ()
        Positions of the register tokens inside the prefix.
    patch_size : int or (int, int), optional
        Patch size in pixels; the patch grid of an ``H x W`` input is
        ``(H // ph, W // pw)`` (or the ceiling for padding models).
    blocks : str, default "blocks"
        Dotted path, from the model, of the sequence of transformer blocks. Nested
        sequences (torch-hub DINOv2 ``BlockChunk``) are flattened, ``nn.Identity``
        fillers skipped.
    attn : str, default "attn"
        Path of the attention module inside a block (its output is the attention
        sublayer output before layer scale).
    qkv : str or None, default "attn.qkv"
        Path of the fused ``Linear`` producing ``[q, k, v]`` (timm, DINOv2). Set to
        ``None`` and give ``query``/``key``/``value`` for separate projections.
    query, key, value : str or None
        Paths of separate ``q``/``k``/``v`` projections (Hugging Face style).
    proj : str, default "attn.proj"
        Path of the attention output projection (a ``Linear``).
    q_norm, k_norm : str or None, default "attn.q_norm" / "attn.k_norm"
        Paths of per-head query / key normalisations; ignored when absent.
    layer_scale : str or None, default "ls1"
        Path of the layer scale applied to the attention output before the residual
        addition; ignored when absent.
    num_heads : int, optional
        Number of heads; read from the attention module (``num_heads`` or
        ``num_attention_heads``) when omitted.
    scale : float, optional
        Softmax temperature; read from the attention module (``scale``) or
        ``head_dim ** -0.5`` when omitted.
    source : str, default "hand"
        Where the description came from (``"timm"``, ``"torch-hub"``, ``"hf"``, ``"hand"``).

    Examples
    --------
    A custom ViT whose sequence is ``[CLS, R0, R1, patches...]`` with 8-pixel patches
    and blocks in ``model.layers`` with attention ``self_attn.in_proj`` / ``self_attn.out``:

    >>> layout = ViTLayout(num_prefix_tokens=3, cls_index=0, register_indices=(1, 2),
    ...                    patch_size=8, blocks="layers", attn="self_attn",
    ...                    qkv="self_attn.in_proj", proj="self_attn.out", layer_scale=None)
    >>> layout.num_registers, layout.grid((32, 48))
    (2, (4, 6))
    """

    num_prefix_tokens: int
    cls_index: Optional[int] = 0
    register_indices: Tuple[int, ...] = ()
    patch_size: Optional[_PatchSize] = None
    blocks: str = "blocks"
    attn: str = "attn"
    qkv: Optional[str] = "attn.qkv"
    query: Optional[str] = None
    key: Optional[str] = None
    value: Optional[str] = None
    proj: str = "attn.proj"
    q_norm: Optional[str] = "attn.q_norm"
    k_norm: Optional[str] = "attn.k_norm"
    layer_scale: Optional[str] = "ls1"
    num_heads: Optional[int] = None
    scale: Optional[float] = None
    source: str = field(default="hand", compare=False)

    def __post_init__(self) -> None:
        n = check_int(self.num_prefix_tokens, "num_prefix_tokens", low=0)
        object.__setattr__(self, "num_prefix_tokens", n)
        if self.cls_index is not None:
            c = self.cls_index
            if isinstance(c, bool) or not isinstance(c, Integral) or not 0 <= c < max(n, 1) or n == 0:
                raise ValueError(
                    f"cls_index: expected None or an int in [0, num_prefix_tokens={n}), got {c!r}"
                )
            object.__setattr__(self, "cls_index", int(c))
        regs = tuple(self.register_indices)
        for r in regs:
            if isinstance(r, bool) or not isinstance(r, Integral) or not 0 <= r < n:
                raise ValueError(
                    f"register_indices: expected ints in [0, num_prefix_tokens={n}), got {regs!r}"
                )
        regs = tuple(int(r) for r in regs)
        if len(set(regs)) != len(regs) or (self.cls_index is not None and self.cls_index in regs):
            raise ValueError(
                f"register_indices: expected distinct positions different from cls_index="
                f"{self.cls_index}, got {regs!r}"
            )
        object.__setattr__(self, "register_indices", regs)
        object.__setattr__(self, "patch_size", _as_pair(self.patch_size, "patch_size"))
        if self.qkv is None and not (self.query and self.key and self.value):
            raise ValueError(
                "qkv: expected the path of a fused qkv Linear, or query=, key= and value= paths "
                f"of separate projections; got qkv=None, query={self.query!r}, key={self.key!r}, "
                f"value={self.value!r}"
            )
        object.__setattr__(self, "num_heads", check_int(self.num_heads, "num_heads", low=1, allow_none=True))
        object.__setattr__(
            self, "scale", check_real(self.scale, "scale", low=0.0, low_open=True, allow_none=True)
        )

    # ------------------------------------------------------------------ token facts
    @property
    def has_cls(self) -> bool:
        """Whether the sequence has a CLS token."""
        return self.cls_index is not None

    @property
    def num_registers(self) -> int:
        """Number of register tokens."""
        return len(self.register_indices)

    @property
    def other_prefix_indices(self) -> Tuple[int, ...]:
        """Prefix positions that are neither CLS nor registers (e.g. distillation)."""
        taken = set(self.register_indices)
        if self.cls_index is not None:
            taken.add(self.cls_index)
        return tuple(i for i in range(self.num_prefix_tokens) if i not in taken)

    def grid(self, input_hw: Sequence[int], num_tokens: Optional[int] = None) -> Tuple[int, int]:
        """Patch grid ``(h, w)`` of an input of size ``input_hw``.

        Parameters
        ----------
        input_hw : (int, int)
            Input height and width in pixels.
        num_tokens : int, optional
            Total sequence length seen in a forward pass; used to choose between the
            floor grid (cropping patch embed) and the ceiling grid (padding) and to
            check the layout.

        Raises
        ------
        ValueError
            If the patch size is unknown or the token count does not match.
        """
        H, W = int(input_hw[0]), int(input_hw[1])
        if self.patch_size is None:
            raise ValueError(
                "patch_size: the layout has no patch size; pass ViTLayout(patch_size=...)"
            )
        ph, pw = self.patch_size  # type: ignore[misc]
        options = [(H // ph, W // pw), (math.ceil(H / ph), math.ceil(W / pw))]
        if num_tokens is None:
            return options[0]
        n_patch = num_tokens - self.num_prefix_tokens
        for h, w in options:
            if h * w == n_patch:
                return (h, w)
        raise ValueError(
            f"num_prefix_tokens: a sequence of {num_tokens} tokens minus {self.num_prefix_tokens} "
            f"prefix tokens ({n_patch}) does not form the patch grid of a {H}x{W} input with "
            f"patch size {ph}x{pw}; check the layout (num_prefix_tokens, patch_size) and the input size"
        )

    def with_overrides(self, **changes: Any) -> "ViTLayout":
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)


# ---------------------------------------------------------------------------- modules
def get_submodule(root: nn.Module, path: str, what: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error naming the layout field ``what``."""
    try:
        mod = root.get_submodule(path) if path else root
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n][:30]
        raise ValueError(
            f"{what}: no submodule {path!r} in {type(root).__name__}; its submodules start with "
            f"{names}"
        ) from None
    return mod


def resolve_blocks(model: nn.Module, layout: ViTLayout) -> List[nn.Module]:
    """The transformer blocks of ``model`` in execution order.

    Nested ``nn.ModuleList`` / ``nn.Sequential`` containers whose children are
    themselves block lists (torch-hub DINOv2 ``BlockChunk``) are flattened and
    ``nn.Identity`` fillers are dropped.
    """
    container = get_submodule(model, layout.blocks, "blocks")
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"blocks: expected {layout.blocks!r} to be an nn.ModuleList or nn.Sequential of "
            f"transformer blocks, got {type(container).__name__}"
        )
    out: List[nn.Module] = []
    for child in container:
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and not _looks_like_block(child, layout):
            out.extend(c for c in child if not isinstance(c, nn.Identity))
        elif not isinstance(child, nn.Identity):
            out.append(child)
    if not out:
        raise ValueError(f"blocks: {layout.blocks!r} holds no transformer blocks")
    return out


def _looks_like_block(module: nn.Module, layout: ViTLayout) -> bool:
    try:
        module.get_submodule(layout.attn)
        return True
    except AttributeError:
        return False


# ---------------------------------------------------------------------------- detection
def _find_hf_blocks(model: nn.Module) -> Optional[str]:
    for name, mod in model.named_modules():
        if name.endswith("encoder.layer") and isinstance(mod, nn.ModuleList):
            return name
    return None


def vit_layout(model: nn.Module, **overrides: Any) -> ViTLayout:
    """Read the token layout and block structure of a ViT.

    Recognised, in order:

    * timm models: ``num_prefix_tokens``, ``num_reg_tokens`` (or
      ``reg_token.shape[1]``), ``cls_token`` / ``has_class_token``,
      ``patch_embed.patch_size``; sequence ``[CLS?, registers..., others..., patches...]``
      (timm concatenates CLS, then registers; a distillation token counts as "other").
    * torch-hub DINOv2 (``num_register_tokens`` and ``cls_token``):
      ``[CLS, registers..., patches...]``, ``patch_size``.
    * Hugging Face style (a ``config`` with ``patch_size``; ``num_register_tokens``
      for ``Dinov2WithRegisters``): ``[CLS, registers..., patches...]`` with blocks in
      ``*.encoder.layer`` and separate ``query``/``key``/``value`` projections.

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
    fields: dict = {}
    npt = getattr(model, "num_prefix_tokens", None)
    if isinstance(npt, int) and not isinstance(npt, bool):
        # timm
        n_reg = getattr(model, "num_reg_tokens", None)
        if not isinstance(n_reg, int):
            reg = getattr(model, "reg_token", None)
            n_reg = int(reg.shape[1]) if reg is not None and hasattr(reg, "shape") else 0
        has_cls = getattr(model, "has_class_token", None)
        if has_cls is None:
            has_cls = getattr(model, "cls_token", None) is not None
        start = 1 if has_cls else 0
        fields = dict(
            num_prefix_tokens=npt,
            cls_index=0 if has_cls else None,
            register_indices=tuple(range(start, start + n_reg)),
            patch_size=getattr(getattr(model, "patch_embed", None), "patch_size", None),
            source="timm",
        )
    elif isinstance(getattr(model, "num_register_tokens", None), int) and hasattr(model, "cls_token"):
        n_reg = int(model.num_register_tokens)
        fields = dict(
            num_prefix_tokens=1 + n_reg,
            cls_index=0,
            register_indices=tuple(range(1, 1 + n_reg)),
            patch_size=getattr(model, "patch_size", None),
            source="torch-hub",
        )
    elif getattr(getattr(model, "config", None), "patch_size", None) is not None:
        cfg = model.config
        n_reg = int(getattr(cfg, "num_register_tokens", 0) or 0)
        blocks = _find_hf_blocks(model) or "encoder.layer"
        fields = dict(
            num_prefix_tokens=1 + n_reg,
            cls_index=0,
            register_indices=tuple(range(1, 1 + n_reg)),
            patch_size=cfg.patch_size,
            blocks=blocks,
            attn="attention.attention",
            qkv=None,
            query="attention.attention.query",
            key="attention.attention.key",
            value="attention.attention.value",
            proj="attention.output.dense",
            q_norm=None,
            k_norm=None,
            layer_scale="layer_scale1",
            num_heads=getattr(cfg, "num_attention_heads", None),
            source="hf",
        )
    elif not overrides or "num_prefix_tokens" not in overrides:
        raise ValueError(
            f"model: cannot read the token layout of {type(model).__name__} (no timm "
            "num_prefix_tokens, torch-hub num_register_tokens or Hugging Face config); describe it "
            "with captum_nave.registers.ViTLayout(num_prefix_tokens=..., cls_index=..., "
            "register_indices=..., patch_size=..., blocks=...)"
        )
    ps = fields.get("patch_size")
    if ps is not None and not isinstance(ps, int):
        fields["patch_size"] = tuple(int(v) for v in ps)
    fields.update(overrides)
    return ViTLayout(**fields)
