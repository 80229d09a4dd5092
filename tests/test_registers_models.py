"""Small ViT-like models for the register tests, and checks of their own layouts.

* ``tiny_timm``: timm ``VisionTransformer`` built with kwargs (with / without registers,
  with / without CLS).
* ``HandViT``: a custom ViT whose sequence is ``[R0, CLS, R1, patches...]`` (CLS not
  first), blocks in ``layers``, attention ``mix`` with ``to_qkv`` / ``out`` and a layer
  scale ``scale1``; it keeps its attention probabilities for reference.
* ``HubStyleViT``: the torch-hub DINOv2 conventions (``num_register_tokens``,
  ``register_tokens``, integer ``patch_size``, chunked ``blocks`` with ``nn.Identity``
  fillers, attention computed with SDPA so no attention hook can fire).
* ``HFStyleViT``: the Hugging Face conventions (``config``, ``encoder.layer``, separate
  ``query`` / ``key`` / ``value``, ``attention.output.dense``, ``layer_scale1``, tuple
  outputs).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from captum_nave.registers.layout import ViTLayout, resolve_blocks, vit_layout


def tiny_timm(img_size: int = 32, patch_size: int = 8, depth: int = 3, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=img_size, patch_size=patch_size,
        depth=depth, embed_dim=48, num_heads=3, num_classes=10, **kw,
    ).eval()


# ----------------------------------------------------------------------------- hand model
class _Mix(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.last_attn: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.to_qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)
        self.last_attn = attn.detach()
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, d))


class _Scale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.g


class _HandBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.mix = _Mix(dim, heads)
        self.scale1 = _Scale(dim)
        self.n2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale1(self.mix(self.n1(x)))
        return x + self.ff(self.n2(x))


class HandViT(nn.Module):
    """Sequence ``[R0, CLS, R1, patches]``; 8-pixel patches; 2 heads."""

    def __init__(self, dim: int = 32, depth: int = 3, heads: int = 2, grid: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.prefix = nn.Parameter(torch.randn(1, 3, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, grid * grid, dim))
        self.layers = nn.ModuleList([_HandBlock(dim, heads) for _ in range(depth)])
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        t = torch.cat([self.prefix.expand(x.shape[0], -1, -1), p], dim=1)
        for blk in self.layers:
            t = blk(t)
        return self.head(t[:, 1])


HAND_LAYOUT = ViTLayout(
    num_prefix_tokens=3, cls_index=1, register_indices=(0, 2), patch_size=8, blocks="layers",
    attn="mix", qkv="mix.to_qkv", proj="mix.out", q_norm=None, k_norm=None,
    layer_scale="scale1", num_heads=2,
)


def hand_vit(seed: int = 0, **kw) -> HandViT:
    torch.manual_seed(seed)
    return HandViT(**kw).eval()


# ----------------------------------------------------------------------------- hub style
class _HubAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # memory-efficient style: no probabilities
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _HubBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _HubAttention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class _Chunk(nn.ModuleList):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self:
            x = b(x)
        return x


class HubStyleViT(nn.Module):
    """torch-hub DINOv2 conventions: ``[CLS, registers..., patches]``, chunked blocks."""

    def __init__(self, dim: int = 32, depth: int = 3, heads: int = 2, regs: int = 4, patch: int = 8) -> None:
        super().__init__()
        self.patch_size = patch
        self.num_register_tokens = regs
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.randn(1, regs, dim)) if regs else None
        blocks = [_HubBlock(dim, heads) for _ in range(depth)]
        self.blocks = nn.ModuleList([_Chunk(blocks[:2]), _Chunk([nn.Identity(), nn.Identity(), *blocks[2:]])])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed(x).flatten(2).transpose(1, 2)
        parts = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.expand(x.shape[0], -1, -1))
        t = torch.cat(parts + [p], dim=1)
        for chunk in self.blocks:
            t = chunk(t)
        return self.norm(t)[:, 0]


# ----------------------------------------------------------------------------- HF style
class _HFSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor):
        b, t, d = x.shape
        sp = lambda z: z.reshape(b, t, self.num_attention_heads, -1).transpose(1, 2)
        q, k, v = sp(self.query(x)), sp(self.key(x)), sp(self.value(x))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        return ((probs @ v).transpose(1, 2).reshape(b, t, d), probs)


class _HFAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = _HFSelfAttention(dim, heads)
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor):
        ctx, _ = self.attention(x)
        return (self.output.dense(ctx),)


class _HFLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = _HFAttention(dim, heads)
        self.layer_scale1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, hidden_states: torch.Tensor):
        h = hidden_states + self.layer_scale1(self.attention(self.norm1(hidden_states))[0])
        return (h + self.mlp(self.norm2(h)),)


class HFStyleViT(nn.Module):
    """Hugging Face ``Dinov2WithRegisters`` conventions."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, regs: int = 2, patch: int = 8) -> None:
        super().__init__()
        self.config = SimpleNamespace(patch_size=patch, num_register_tokens=regs, num_attention_heads=heads, hidden_size=dim)
        self.embeddings = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1 + regs, dim))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([_HFLayer(dim, heads) for _ in range(depth)])

    def forward(self, pixel_values: torch.Tensor):
        p = self.embeddings(pixel_values).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], dim=1)
        for layer in self.encoder.layer:
            h = layer(h)[0]
        return SimpleNamespace(last_hidden_state=h)


# ----------------------------------------------------------------------------- tests
def test_timm_layouts_are_read_from_the_model():
    reg = vit_layout(tiny_timm(reg_tokens=4))
    assert (reg.num_prefix_tokens, reg.cls_index, reg.register_indices) == (5, 0, (1, 2, 3, 4))
    assert reg.patch_size == (8, 8) and reg.source == "timm-vit"
    plain = vit_layout(tiny_timm())
    assert (plain.num_prefix_tokens, plain.cls_index, plain.register_indices) == (1, 0, ())
    nocls = vit_layout(tiny_timm(class_token=False, global_pool="avg", reg_tokens=2))
    assert (nocls.num_prefix_tokens, nocls.cls_index, nocls.register_indices) == (2, None, (0, 1))
    assert nocls.grid((32, 48)) == (4, 6)


def test_hub_and_hf_layouts():
    hub = vit_layout(HubStyleViT())
    assert (hub.num_prefix_tokens, hub.cls_index, hub.register_indices, hub.patch_size) == (5, 0, (1, 2, 3, 4), (8, 8))
    blocks = resolve_blocks(HubStyleViT(), hub)
    assert len(blocks) == 3 and all(isinstance(b, _HubBlock) for b in blocks)
    hf = vit_layout(HFStyleViT())
    assert (hf.num_prefix_tokens, hf.register_indices, hf.blocks, hf.qkv, hf.num_heads) == (3, (1, 2), "encoder.layer", None, 2)


def test_layout_validation_names_the_parameter():
    with pytest.raises(ValueError, match="cls_index"):
        ViTLayout(num_prefix_tokens=2, cls_index=2)
    with pytest.raises(ValueError, match="register_indices"):
        ViTLayout(num_prefix_tokens=3, cls_index=0, register_indices=(0, 1))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        ViTLayout(num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="qkv"):
        ViTLayout(num_prefix_tokens=1, qkv=None)
    with pytest.raises(TypeError, match="patch_size"):
        ViTLayout(num_prefix_tokens=1, patch_size="8")
    with pytest.raises(ValueError, match="model: cannot read the token layout"):
        vit_layout(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="blocks"):
        resolve_blocks(HandViT(), ViTLayout(num_prefix_tokens=3, blocks="encoder"))
    # a wrong prefix count does not form the grid
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        HAND_LAYOUT.grid((32, 32), num_tokens=16 + 4)


def test_hand_layout_facts():
    assert HAND_LAYOUT.has_cls and HAND_LAYOUT.num_registers == 2
    assert HAND_LAYOUT.other_prefix_indices == ()
    distilled = ViTLayout(num_prefix_tokens=2, cls_index=0)
    assert distilled.other_prefix_indices == (1,)
    assert HAND_LAYOUT.grid((32, 48)) == (4, 6)
