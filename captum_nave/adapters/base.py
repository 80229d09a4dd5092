"""The model-adapter protocol: what every consumer may ask about a model.

A :class:`ModelAdapter` answers, for one model, the questions the explainer,
Grad-CAM, IG, LRP and the register measures all need:

* where the blocks are (:meth:`ModelAdapter.blocks`: names and modules, chunked
  containers flattened);
* the token layout of a ViT (:attr:`ModelAdapter.layout`: CLS index or none,
  register and other prefix tokens, patch size, :meth:`ModelAdapter.grid`);
* where each block's attention lives (:meth:`ModelAdapter.attention`: fused ``qkv``
  or separate projections, output projection, ``q_norm`` / ``k_norm``, heads, scale,
  layer scale, whether ``softmax(q k^T * scale)`` recomputed from the projections is
  the module's attention, and how to read the probabilities otherwise);
* how to get class scores from the output (:meth:`ModelAdapter.logits`; a Hugging
  Face ``ModelOutput`` is unwrapped);
* good default layers for NAVE and Grad-CAM;
* the final norm, pooling and classifier (:meth:`ModelAdapter.classifier_head`);
* the parts LRP must canonicalise (:meth:`ModelAdapter.transformer_parts`,
  :meth:`ModelAdapter.lrp_rewrite`).

The base class is also the *hand-written* adapter: ``ModelAdapter(model, layout)``
with a :class:`~captum_nave.adapters.layout.ViTLayout` describes any ViT-like model
by dotted paths. Family adapters (timm, torchvision, Hugging Face, torch hub) are
subclasses that read the same facts from the model; they are found by type with
:func:`captum_nave.adapters.get_adapter`.
"""

from __future__ import annotations

import copy
from dataclasses import fields, replace
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from .layout import ViTLayout, flatten_blocks, get_submodule
from .parts import (
    AttentionAccess,
    BlockParts,
    ClassifierHead,
    EagerSwitch,
    LRPKit,
    MapParts,
    MlpParts,
    Pool,
    TransformerParts,
)

__all__ = [
    "AttentionAccess",
    "BlockParts",
    "ClassifierHead",
    "EagerSwitch",
    "LRPKit",
    "MapParts",
    "MlpParts",
    "ModelAdapter",
    "Pool",
    "TransformerParts",
    "unwrap_output",
]

_LAYOUT_FIELDS = frozenset(f.name for f in fields(ViTLayout))


# --------------------------------------------------------------------------- outputs
def unwrap_output(output: Any, keys: Sequence[str] = ("logits",)) -> Tensor:
    """The class-score tensor inside a model output.

    A Tensor is returned as is; otherwise the first of ``keys`` present as an
    attribute or mapping key, then the first tensor of a tuple / list.

    Raises
    ------
    TypeError
        Naming the output type, when no tensor is found.
    """
    if isinstance(output, Tensor):
        return output
    for key in keys:
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"model: the forward pass returned {type(output).__name__}, with no class scores "
        f"({' / '.join(keys)}); expected a Tensor (N, K). Wrap the model or register an adapter "
        "(captum_nave.adapters.register_adapter)"
    )


def _int_attr(obj: Any, *names: str) -> Optional[int]:
    for name in names:
        v = getattr(obj, name, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _float_attr(obj: Any, *names: str) -> Optional[float]:
    for name in names:
        v = getattr(obj, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def optional_submodule(root: nn.Module, path: Optional[str]) -> Optional[nn.Module]:
    """``root.get_submodule(path)`` or None (also for an empty path or ``nn.Identity``)."""
    if not path:
        return None
    try:
        mod = root.get_submodule(path)
    except AttributeError:
        return None
    return None if isinstance(mod, nn.Identity) else mod


#: Projection names tried in a block, in order: (attn, q, k, v, out).
_PROJECTION_PATTERNS: Tuple[Tuple[str, str, str, str, str], ...] = (
    ("attention", "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
    ("attention.attention", "attention.attention.query", "attention.attention.key",
     "attention.attention.value", "attention.output.dense"),
    ("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    ("attn", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.proj"),
)


def discover_attention_paths(block: nn.Module) -> Optional[Dict[str, Optional[str]]]:
    """ViTLayout path fields for a block with separate q / k / v projections, by name.

    Tries the attribute names used by Hugging Face transformers 4.x (``attention.attention.query``,
    ``attention.output.dense``) and 5.x (``attention.q_proj`` ... ``o_proj``), CLIP/SigLIP
    (``self_attn.*_proj``, ``out_proj``) and timm EVA (``attn.q_proj``); None when none fits.
    """
    for attn, q, k, v, o in _PROJECTION_PATTERNS:
        mods = [optional_submodule(block, p) for p in (attn, q, k, v, o)]
        if all(m is not None for m in mods) and all(isinstance(m, nn.Linear) for m in mods[1:]):
            return dict(attn=attn, qkv=None, query=q, key=k, value=v, proj=o)
    return None


# --------------------------------------------------------------------------- the adapter
class ModelAdapter:
    """Everything consumers need to know about a model; also the hand-written adapter.

    Parameters
    ----------
    model : nn.Module
        The model described (never modified by the adapter).
    layout : ViTLayout, optional
        Hand-written token layout and module paths (see
        :class:`~captum_nave.adapters.layout.ViTLayout`). Family adapters read it from the
        model instead.

    Examples
    --------
    Describe a custom ViT whose sequence is ``[CLS, R0, R1, patches...]``:

    >>> layout = ViTLayout(num_prefix_tokens=3, cls_index=0, register_indices=(1, 2),
    ...                    patch_size=8, blocks="layers", attn="mix", qkv="mix.to_qkv",
    ...                    proj="mix.out", layer_scale=None)
    >>> adapter = ModelAdapter(model, layout)           # doctest: +SKIP
    >>> adapter.grid((32, 48)), len(adapter.blocks())  # doctest: +SKIP
    ((4, 6), 3)
    """

    #: Short family name shown in reports ("timm-vit", "hf-dinov2", ...).
    family: ClassVar[str] = "hand"
    #: Keys tried by :meth:`logits` on a non-tensor output.
    output_keys: ClassVar[Tuple[str, ...]] = ("logits",)

    def __init__(self, model: nn.Module, layout: Optional[ViTLayout] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if layout is not None and not isinstance(layout, ViTLayout):
            raise TypeError(f"layout: expected a ViTLayout or None, got {type(layout).__name__}")
        self.model = model
        self._layout = layout
        self._layout_read = layout is not None

    # ------------------------------------------------------------------ lookup
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter class describes ``model`` (decided by type)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, family={self.family!r})"

    def with_overrides(self, **changes: Any) -> "ModelAdapter":
        """A copy whose token layout has some :class:`ViTLayout` fields replaced.

        ``num_prefix_tokens=``, ``patch_size=``, ``cls_index=``, ... override what was read
        from the model (``cls_index=None``: no CLS token); module paths (``blocks=``,
        ``qkv=``, ...) override where blocks and projections are found.
        """
        unknown = sorted(set(changes) - _LAYOUT_FIELDS)
        if unknown:
            raise TypeError(
                f"overrides: unknown layout field(s) {unknown}; expected some of {sorted(_LAYOUT_FIELDS)}"
            )
        new = copy.copy(self)
        if not changes:
            return new
        base = self.layout
        if base is None:
            if "num_prefix_tokens" not in changes:
                raise ValueError(
                    f"model: {type(self.model).__name__} has no token layout to override; give "
                    "num_prefix_tokens= (and patch_size=) to describe its tokens"
                )
            kwargs = dict(changes)
            if "blocks" not in kwargs:
                found = self._find_block_container()
                if found is not None:
                    kwargs["blocks"] = found[0]
            new._layout = ViTLayout(**kwargs)
        else:
            new._layout = replace(base, **changes)
        new._layout_read = True
        return new

    # ------------------------------------------------------------------ token layout
    @property
    def layout(self) -> Optional[ViTLayout]:
        """Token layout and module paths of a ViT; ``None`` for models without tokens."""
        if not self._layout_read:
            self._layout = self._read_layout()
            self._layout_read = True
        return self._layout

    def _read_layout(self) -> Optional[ViTLayout]:
        """Read the layout from the model (family adapters override)."""
        return None

    @property
    def num_prefix_tokens(self) -> Optional[int]:
        """Tokens before the patch tokens (CLS, distillation, registers), or None."""
        lay = self.layout
        return None if lay is None else lay.num_prefix_tokens

    @property
    def patch_size(self) -> Optional[Tuple[int, int]]:
        """Patch size ``(ph, pw)``, or None."""
        lay = self.layout
        return None if lay is None else lay.patch_size  # type: ignore[return-value]

    def grid(self, input_hw: Sequence[int], num_tokens: Optional[int] = None) -> Tuple[int, int]:
        """Patch grid ``(h, w)`` of an input of size ``input_hw`` (see :meth:`ViTLayout.grid`)."""
        lay = self.layout
        if lay is None:
            raise ValueError(f"model: {type(self.model).__name__} has no token layout (not a ViT)")
        return lay.grid(input_hw, num_tokens)

    def input_size(self) -> Optional[Tuple[int, int]]:
        """The only input size the model accepts, or None when it takes other sizes."""
        return None

    def normalization(self) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
        """``(mean, std)`` of the inputs the model was trained on, if the model says (else None)."""
        return None

    def allow_any_input_size(self) -> bool:
        """Switch a fixed-size model to any (patch-multiple) input size, if its family can.

        This *changes the model* (for models a caller loaded itself, e.g. the CLI's CorLoc
        runs at each image's own resolution). Returns True when the model was changed.
        """
        return False

    # ------------------------------------------------------------------ blocks
    def blocks(self) -> List[Tuple[str, nn.Module]]:
        """The model's blocks in execution order: ``[(dotted name, module), ...]``.

        ViT blocks come from the layout's ``blocks`` path (chunks flattened); other models
        use :meth:`_find_block_container`. Empty when the model has no sequence of blocks.
        """
        lay = self.layout
        if lay is not None:
            container = get_submodule(self.model, lay.blocks, "blocks")
            attn_path = lay.attn
            return flatten_blocks(
                container, lay.blocks, lambda m: optional_submodule(m, attn_path) is not None
            )
        found = self._find_block_container()
        if found is None:
            return []
        path, container = found
        return [(f"{path}.{n}", m) for n, m in container.named_children()]

    def block_container(self) -> Optional[Tuple[str, nn.Module]]:
        """Dotted path and container of the blocks (before chunks are flattened), or None."""
        lay = self.layout
        if lay is not None:
            return lay.blocks, get_submodule(self.model, lay.blocks, "blocks")
        return self._find_block_container()

    def _find_block_container(self) -> Optional[Tuple[str, nn.Module]]:
        """Dotted path and container of a sequence of blocks, found by common names."""
        for path in ("blocks", "encoder.layer", "encoder.layers", "transformer.resblocks", "layers"):
            obj = optional_submodule(self.model, path)
            if isinstance(obj, (nn.Sequential, nn.ModuleList)) and len(obj) > 0:
                return path, obj
        return None

    # ------------------------------------------------------------------ attention
    def attention(self, index: int) -> AttentionAccess:
        """Where block ``index``'s attention lives (paths from the layout).

        Raises
        ------
        ValueError
            No layout, an index out of range, or a path the block does not have.
        """
        lay = self.layout
        if lay is None:
            raise ValueError(f"model: {type(self.model).__name__} has no token layout (not a ViT)")
        blocks = self.blocks()
        n = len(blocks)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise ValueError(f"index: expected a block index in [{-n}, {n - 1}], got {index!r}")
        index %= n
        block = blocks[index][1]
        attn = get_submodule(block, lay.attn, "attn")
        proj = get_submodule(block, lay.proj, "proj")
        num_heads = lay.num_heads or _int_attr(attn, "num_heads", "num_attention_heads")
        if num_heads is None:
            raise ValueError(
                f"num_heads: cannot read the number of heads from {type(attn).__name__} "
                f"(block {index}); pass ViTLayout(num_heads=...)"
            )
        scale = lay.scale if lay.scale is not None else _float_attr(attn, "scale", "scaling")
        sem = self._attention_semantics(attn)
        return AttentionAccess(
            index=index,
            block=block,
            attn=attn,
            proj=proj,
            num_heads=int(num_heads),
            qkv=optional_submodule(block, lay.qkv),
            query=optional_submodule(block, lay.query),
            key=optional_submodule(block, lay.key),
            value=optional_submodule(block, lay.value),
            q_norm=optional_submodule(block, lay.q_norm),
            k_norm=optional_submodule(block, lay.k_norm),
            layer_scale=optional_submodule(block, lay.layer_scale),
            scale=scale,
            **sem,
        )

    def _attention_semantics(self, attn: nn.Module) -> Dict[str, Any]:
        """``exact``, ``eager``, ``inner_norm``, ``gated`` of an attention module.

        Hand-described modules are trusted (the layout names their projections); a
        ``norm`` or ``gate`` attribute between ``attn @ v`` and the projection is reported.
        """
        extra = getattr(attn, "norm", None)
        inner = extra if isinstance(extra, nn.Module) and not isinstance(extra, nn.Identity) else None
        return dict(exact=True, eager=None, inner_norm=inner, gated=getattr(attn, "gate", None) is not None)

    # ------------------------------------------------------------------ outputs
    def logits(self, output: Any) -> Tensor:
        """Class scores ``(N, K)`` from the model's output (a ``ModelOutput`` is unwrapped)."""
        return unwrap_output(output, self.output_keys)

    def forward_logits(self) -> Callable[..., Tensor]:
        """``f(*args) = logits(model(*args))``: a forward function for Captum."""
        model, pick = self.model, self.logits

        def forward(*args: Any, **kwargs: Any) -> Tensor:
            return pick(model(*args, **kwargs))

        forward.__self__ = model  # type: ignore[attr-defined]  # lets explainers find the module
        return forward

    # ------------------------------------------------------------------ defaults
    def default_layers(self) -> List[str]:
        """Dotted names of layers that give a useful NAVE map (empty: pass layers)."""
        blocks = self.blocks()
        if self.layout is not None and blocks:
            return [blocks[-1][0]]
        return []

    def default_gradcam_layer(self) -> Optional[str]:
        """The documented default Grad-CAM layer, or None (a generic rule then applies).

        For a ViT whose head reads only prefix tokens, the last block's output patch tokens
        get no gradient; the patch tokens entering the last attention (the output of the
        last block's pre-attention norm, :meth:`_pre_attention_norm`) are used instead.
        """
        blocks = self.blocks()
        if self.layout is None or not blocks:
            return None
        name, block = blocks[-1]
        if self._head_reads_only_prefix():
            norm = self._pre_attention_norm(block)
            if norm is None:
                raise ValueError(
                    f"layer: {type(self.model).__name__} pools a prefix token and its last block "
                    "has no norm before the attention; pass layer= (a layer whose patch tokens "
                    "reach the prefix token)"
                )
            return f"{name}.{norm}"
        return name

    def _head_reads_only_prefix(self) -> bool:
        head = self.classifier_head()
        if head is None:
            return False
        npfx = self.num_prefix_tokens or 0
        return all(p.kind == "token" and p.index < npfx for p in head.pools)

    def _pre_attention_norm(self, block: nn.Module) -> Optional[str]:
        for name in ("norm1", "ln_1", "layernorm_before", "layer_norm1"):
            if isinstance(getattr(block, name, None), nn.Module):
                return name
        return None

    # ------------------------------------------------------------------ head
    def classifier_head(self) -> Optional[ClassifierHead]:
        """Final norm, pooling and classifier applied to the last block's tokens, or None."""
        return None

    @property
    def num_classes(self) -> Optional[int]:
        """Number of output scores, or None when unknown."""
        head = self.classifier_head()
        if head is not None:
            lin = head.classifier
            return None if lin is None else int(lin.out_features)
        n = _int_attr(self.model, "num_classes")
        if n is not None:
            return n
        last = None
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                last = m
        return None if last is None else int(last.out_features)

    # ------------------------------------------------------------------ LRP
    @classmethod
    def lrp_rewrite(cls, module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:
        """The LRP-ready replacement of ``module`` if it is a composite of this family.

        Called by the canonicaliser on every module of the working copy (root first);
        return None for modules this family does not know. The returned module may be
        ``module`` itself, changed in place (it is a copy).
        """
        return None

    def transformer_parts(self) -> TransformerParts:
        """The parts of a ViT that LRP rebuilds (family adapters that support LRP override)."""
        raise TypeError(
            f"LRP: no transformer description for {type(self.model).__name__} ({self.family}); "
            "supported ViTs: timm VisionTransformer, Hugging Face ViT/DeiT/DINOv2/CLIP/SigLIP, "
            "torch-hub DINOv2"
        )
