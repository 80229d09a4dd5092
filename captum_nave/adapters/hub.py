"""Adapter for DINOv2 loaded through torch hub (``facebookresearch/dinov2``).

``torch.hub.load("facebookresearch/dinov2", "dinov2_vits14_reg")`` returns a
``DinoVisionTransformer`` whose class lives in the downloaded hub code, not in an
installed package, so it is recognised by its interface: ``prepare_tokens_with_masks``,
``patch_embed``, ``cls_token``, an int ``num_register_tokens`` and ``blocks`` (optionally
chunked into ``BlockChunk`` lists padded with ``nn.Identity``).

Sequence ``[CLS, registers..., patches...]``; ``patch_size``; blocks with ``norm1``,
``attn`` (``Attention`` / ``MemEffAttention``: fused ``qkv``, ``proj``, ``scale``),
``ls1`` / ``ls2`` (``LayerScale`` with a ``gamma`` vector, or ``nn.Identity``),
``norm2``, ``mlp`` (``fc1``, ``act``, ``fc2``); final ``norm``; the output is
``head(norm(x)[:, 0])`` (``head`` is ``nn.Identity`` for the backbones: the CLS feature).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import Tensor, nn

from .base import BlockParts, ClassifierHead, LRPKit, MlpParts, ModelAdapter, Pool, TransformerParts, optional_submodule
from .generic import patch_size_pair
from .layout import ViTLayout

__all__ = ["HubDinov2Adapter"]


class HubDinov2Adapter(ModelAdapter):
    """torch-hub DINOv2 (with or without registers)."""

    family = "torch-hub-dinov2"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # noqa: D102
        n_reg = getattr(model, "num_register_tokens", None)
        return (
            callable(getattr(model, "prepare_tokens_with_masks", None))
            and isinstance(n_reg, int)
            and not isinstance(n_reg, bool)
            and isinstance(getattr(model, "cls_token", None), Tensor)
            and isinstance(getattr(model, "patch_embed", None), nn.Module)
            and isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential))
        )

    def _read_layout(self) -> Optional[ViTLayout]:
        m = self.model
        n_reg = int(m.num_register_tokens)
        patch = patch_size_pair(getattr(m, "patch_size", None)) or patch_size_pair(
            getattr(m.patch_embed, "patch_size", None)
        )
        return ViTLayout(
            num_prefix_tokens=1 + n_reg,
            cls_index=0,
            register_indices=tuple(range(1, 1 + n_reg)),
            patch_size=patch,
            blocks="blocks",
            attn="attn",
            qkv="attn.qkv",
            proj="attn.proj",
            q_norm=None,
            k_norm=None,
            layer_scale="ls1",
            num_heads=_int(getattr(m, "num_heads", None)),
            source=self.family,
        )

    def _attention_semantics(self, attn: nn.Module) -> Dict[str, Any]:
        # q * scale @ k^T, softmax (also in the xformers memory-efficient path)
        return dict(exact=True, eager=None, inner_norm=None, gated=False)

    def classifier_head(self) -> Optional[ClassifierHead]:  # noqa: D102
        m = self.model
        head = optional_submodule(m, "head")
        return ClassifierHead(
            final_norm=optional_submodule(m, "norm"),
            pools=(Pool("token", index=0),),
            post=() if head is None else (head,),
        )

    def transformer_parts(self) -> TransformerParts:  # noqa: D102
        m = self.model
        blocks: List[BlockParts] = []
        for i, (name, blk) in enumerate(self.blocks()):
            mlp = getattr(blk, "mlp", None)
            if not all(isinstance(getattr(mlp, a, None), nn.Module) for a in ("fc1", "act", "fc2")):
                raise TypeError(
                    f"LRP: '{name}.mlp' is {type(mlp).__name__}; only the fc1 / act / fc2 MLP is "
                    "supported (not SwiGLU)"
                )
            blocks.append(
                BlockParts(
                    norm1=blk.norm1,
                    attention=self.attention(i),
                    norm2=blk.norm2,
                    mlp=MlpParts(mlp.fc1, mlp.act, mlp.fc2),
                    ls1=_gamma(blk, "ls1"),
                    ls2=_gamma(blk, "ls2"),
                )
            )
        pe = m.patch_embed
        layout = "NLD" if getattr(pe, "flatten_embedding", True) else "NHWC"
        return TransformerParts(
            patch=pe,
            patch_layout=layout,
            tokens=lambda x: m.prepare_tokens_with_masks(x),
            num_prefix=1 + int(m.num_register_tokens),
            pre_norm=None,
            blocks=blocks,
            head=self.classifier_head(),  # type: ignore[arg-type]
        )

    @classmethod
    def lrp_rewrite(cls, module: nn.Module, name: str, kit: LRPKit) -> Optional[nn.Module]:  # noqa: D102
        if cls.matches(module):
            return kit.transformer(cls(module).transformer_parts(), name)
        return None


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _gamma(block: nn.Module, name: str) -> Optional[Tensor]:
    ls = getattr(block, name, None)
    if ls is None or isinstance(ls, nn.Identity):
        return None
    gamma = getattr(ls, "gamma", None)
    if not isinstance(gamma, Tensor):
        raise TypeError(f"LRP: layer scale '{name}' ({type(ls).__name__}) has no gamma vector")
    return gamma
