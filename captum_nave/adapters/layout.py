"""Hand-written description of a ViT's token layout and module paths.

A ViT sequence is ``[prefix tokens..., patch tokens...]``. The prefix holds an
optional CLS token, optional register tokens (Darcet et al., ICLR 2024) and
possibly other tokens (e.g. DeiT's distillation token). :class:`ViTLayout`
records where each of them sits and, as dotted paths, where the transformer
blocks and their attention projections live. Every model adapter
(:mod:`captum_nave.adapters`) reports its ViT facts as a ``ViTLayout``; for any
other ViT-like module a user writes one by hand and passes it where a layout is
accepted (it then becomes a :class:`~captum_nave.adapters.ModelAdapter` of its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from numbers import Integral
from typing import Any, List, Optional, Sequence, Tuple, Union

from torch import nn

from captum_nave._validation import check_int, check_int_pair, check_real

__all__ = ["ViTLayout", "get_submodule", "flatten_blocks"]

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
        Where the description came from: the adapter family (``"timm-vit"``,
        ``"torch-hub-dinov2"``, ``"hf-dinov2_with_registers"``, ...) or ``"hand"``.

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


def flatten_blocks(
    container: nn.Module, path: str, is_block: Any = None
) -> List[Tuple[str, nn.Module]]:
    """The transformer blocks held by ``container`` in execution order, with dotted names.

    Nested ``nn.ModuleList`` / ``nn.Sequential`` containers whose children are themselves
    block lists (torch-hub DINOv2 ``BlockChunk``) are flattened and ``nn.Identity``
    fillers are dropped.

    Parameters
    ----------
    container : nn.Module
        An ``nn.ModuleList`` or ``nn.Sequential``.
    path : str
        Dotted path of ``container`` in the model (prefix of the returned names).
    is_block : callable, optional
        ``is_block(module) -> bool`` tells a block from a chunk of blocks; default: a
        container is a chunk.
    """
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"blocks: expected {path!r} to be an nn.ModuleList or nn.Sequential of "
            f"transformer blocks, got {type(container).__name__}"
        )
    out: List[Tuple[str, nn.Module]] = []
    for name, child in container.named_children():
        full = f"{path}.{name}" if path else name
        chunk = isinstance(child, (nn.ModuleList, nn.Sequential)) and not (
            is_block is not None and is_block(child)
        )
        if chunk:
            out.extend(
                (f"{full}.{n}", c) for n, c in child.named_children() if not isinstance(c, nn.Identity)
            )
        elif not isinstance(child, nn.Identity):
            out.append((full, child))
    if not out:
        raise ValueError(f"blocks: {path!r} holds no transformer blocks")
    return out
