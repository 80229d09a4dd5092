"""A stand-in for the torch-hub DINOv2 model (``facebookresearch/dinov2``), for tests.

Written for these tests (not copied): it has the module layout and attribute names of
``DinoVisionTransformer`` that the library relies on - ``patch_embed`` (``proj`` conv,
``norm``, ``patch_size`` pair), ``cls_token``, ``register_tokens`` and
``num_register_tokens``, ``pos_embed`` with interpolation for other sizes,
``prepare_tokens_with_masks``, ``blocks`` (optionally chunked into ``BlockChunk`` lists
padded with ``nn.Identity``), blocks with ``norm1``, ``attn`` (``MemEffAttention``
with fused ``qkv``, ``attn_drop``, ``proj``, ``scale``), ``ls1`` / ``ls2``
(``LayerScale`` with ``gamma``), ``norm2``, ``mlp`` (``fc1``, ``act``, ``fc2``), the final
``norm`` and ``head`` - and the same forward computation: the hub model returns
``head(norm(x)[:, 0])`` (the CLS feature for the backbones, whose head is Identity).
Without xformers, upstream's ``MemEffAttention`` runs the plain attention, as here.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.Identity()
        self.flatten_embedding = True

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        assert h % self.patch_size[0] == 0 and w % self.patch_size[1] == 0, "input not a multiple of the patch"
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = self.attn_drop((q @ k.transpose(-2, -1)).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class MemEffAttention(Attention):
    """Upstream falls back to :class:`Attention` without xformers (as on CPU)."""

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None) -> Tensor:
        assert attn_bias is None
        return super().forward(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.inplace = False
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: Optional[float]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MemEffAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class BlockChunk(nn.ModuleList):
    def forward(self, x: Tensor) -> Tensor:
        for b in self:
            x = b(x)
        return x


class DinoVisionTransformer(nn.Module):
    """Tiny stand-in of the hub model (``dinov2_vits14[_reg]`` with small sizes)."""

    def __init__(
        self,
        img_size: int = 28,
        patch_size: int = 7,
        embed_dim: int = 32,
        depth: int = 3,
        num_heads: int = 2,
        mlp_ratio: float = 2.0,
        init_values: Optional[float] = 1.0,
        num_register_tokens: int = 0,
        block_chunks: int = 0,
    ) -> None:
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = 0.1
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(0.02 * torch.randn(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        blocks = [Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth)]
        if block_chunks > 0:
            self.chunked_blocks = True
            size = depth // block_chunks
            chunks: List[nn.Module] = []
            for i in range(0, depth, size):
                chunks.append(BlockChunk([nn.Identity()] * i + blocks[i : i + size]))
            self.blocks = nn.ModuleList(chunks)
        else:
            self.chunked_blocks = False
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x: Tensor, w: int, h: int) -> Tensor:
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        class_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        m = int(math.sqrt(n))
        w0, h0 = w // self.patch_size, h // self.patch_size
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2),
            size=(w0, h0),
            mode="bicubic",
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])
        return torch.cat([class_pos, patch_pos], dim=1)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Optional[Tensor] = None) -> Tensor:
        b, _, w, h = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x: Tensor, masks: Optional[Tensor] = None) -> dict:
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, *args, is_training: bool = False, **kwargs):
        ret = self.forward_features(*args, **kwargs)
        if is_training:
            return ret
        return self.head(ret["x_norm_clstoken"])


def dinov2_standin(seed: int = 0, **kw) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    return DinoVisionTransformer(**kw).eval()
