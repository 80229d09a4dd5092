"""One layer's share of the implicit Algorithm-1 features, and the tiles of rows.

:class:`LayerFeatures` holds a layer's low-resolution activation ``A`` (N, C, h, w), its
row and column interpolation operators to the grid (:class:`~captum_nave.interpolation.Interp1d`)
and the per-pixel scale ``s(p) = 1 / ((1 + C) ||u(p)||)``; it contracts channels at the
layer's own resolution, interpolates the small results, and computes the per-pixel norms
``||u(p)||^2`` from Gram matrices of activation rows. :func:`gather_interp` reads
interpolated values at single pixels through their taps. Every grid-sized temporary is
built in tiles of rows (:func:`row_tiles`, at most :data:`CHUNK_ELEMENTS` elements).
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .interpolation import Interp1d, Range

__all__ = ["LayerFeatures", "gather_interp", "rows_dot", "row_tiles", "CHUNK_ELEMENTS", "GATHER_COST"]

#: Elements of the largest temporary tensor an operation builds on the full grid
#: (grids are processed in tiles of rows of at most this many elements), so the
#: working memory beyond the per-pixel maps does not grow with the grid.
CHUNK_ELEMENTS = 1 << 21


#: Cost of reading one value through an index (a pixel's interpolation taps) relative to
#: a multiply-add of a matrix product; chooses between per-pixel gathers and contractions.
GATHER_COST = 8


def row_tiles(n_rows: int, row_elements: int, limit: Optional[int] = None) -> Iterator[Tuple[int, int]]:
    """Ranges ``(lo, hi)`` covering ``n_rows`` rows, each with at most ``limit`` elements."""
    limit = CHUNK_ELEMENTS if limit is None else limit
    step = max(1, limit // max(1, row_elements))
    for lo in range(0, n_rows, step):
        yield lo, min(n_rows, lo + step)


def gather_interp(maps_cl: Tensor, iy: Interp1d, ix: Interp1d, n: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Interpolated values of channels-last maps at single grid pixels.

    Parameters
    ----------
    maps_cl : Tensor of shape (N, h, w, C)
        Low-resolution maps, channels last.
    iy, ix : Interp1d
        Row and column operators from ``(h, w)`` to the grid ``(H, W)``.
    n, y, x : LongTensor of shape (P,)
        Image index and grid coordinates.

    Returns
    -------
    Tensor of shape (P, C)
        ``(R_y M R_x^T)[n, :, y, x]``: only the taps of each pixel are read.
    """
    N, h, w, C = maps_cl.shape
    flat_maps = maps_cl.reshape(N * h * w, C)
    ty, tx = iy.n_taps, ix.n_taps
    out = maps_cl.new_empty(int(n.numel()), C)
    step = max(1, CHUNK_ELEMENTS // (ty * tx * C))
    for lo in range(0, int(n.numel()), step):
        sl = slice(lo, lo + step)
        ys, xs = y[sl], x[sl]
        yi, yw = iy.index.index_select(0, ys), iy.weight.index_select(0, ys)  # (p, ty)
        xi, xw = ix.index.index_select(0, xs), ix.weight.index_select(0, xs)  # (p, tx)
        flat = (n[sl, None, None] * h + yi[:, :, None]) * w + xi[:, None, :]  # (p, ty, tx)
        wts = (yw[:, :, None] * xw[:, None, :]).reshape(-1, 1, ty * tx)
        vals = flat_maps.index_select(0, flat.reshape(-1)).reshape(-1, ty * tx, C)
        out[sl] = torch.bmm(wts, vals)[:, 0]
    return out


def rows_dot(rows: Tensor, v: Tensor, n: Tensor) -> Tensor:
    """``rows[p] . v[b(p), m]`` -> (P, M); ``b(p) = 0`` if ``v`` is (1, M, C), else ``n[p]``.

    With one set of vectors per image, the pixels of each image (consecutive in ``n``)
    are multiplied by that image's vectors.
    """
    if v.shape[0] == 1:
        return torch.matmul(rows, v[0].t())
    out = rows.new_empty(rows.shape[0], v.shape[1])
    images, counts = torch.unique_consecutive(n, return_counts=True)
    start = 0
    for img, cnt in zip(images.tolist(), counts.tolist()):
        out[start : start + cnt] = torch.matmul(rows[start : start + cnt], v[img].t())
        start += cnt
    return out


class LayerFeatures:
    """One layer's share of the implicit features.

    Attributes
    ----------
    act : Tensor of shape (N, C, h, w)
        Low-resolution activation.
    iy, ix : Interp1d
        Row operator ``R_y`` (H, h) and column operator ``R_x`` (W, w).
    scale : Tensor of shape (N, H, W)
        ``1 / ((1 + C) * ||u(p)||)``, zero where the upsampled pixel vector has zero norm.
    """

    def __init__(self, act: Tensor, iy: Interp1d, ix: Interp1d, scale: Tensor) -> None:
        self.act = act
        self.iy = iy
        self.ix = ix
        self.scale = scale
        self._act_cl: Optional[Tensor] = None

    @property
    def channels(self) -> int:
        return int(self.act.shape[1])

    @property
    def weight(self) -> float:
        """Algorithm 1's layer weight ``1 / (1 + C)``."""
        return 1.0 / (1.0 + self.channels)

    @property
    def sq_norm(self) -> Tensor:
        """``||s(p) u(p)||^2`` of this layer's block (N, H, W): ``weight^2`` or 0."""
        return (self.scale > 0).to(self.scale.dtype) * self.weight**2

    @property
    def act_cl(self) -> Tensor:
        """``act`` channels last (N, h, w, C), made once on first use (pixel gathers)."""
        if self._act_cl is None:
            self._act_cl = self.act.permute(0, 2, 3, 1).contiguous()
        return self._act_cl

    def select(self, images: Tensor) -> "LayerFeatures":
        return LayerFeatures(self.act[images], self.iy, self.ix, self.scale[images])

    def contract(self, v: Tensor) -> Tensor:
        """Channel contraction at low resolution: (B, M, C) -> (N, M, h, w), B in {1, N}.

        A batched matrix product on the (N, C, h*w) view of ``act`` (no copy of it).
        """
        n, c, h, w = self.act.shape
        low = torch.matmul(v, self.act.reshape(n, c, h * w))  # (N, M, h*w)
        return low.reshape(n, v.shape[1], h, w)

    def contract_adjoint(self, low: Tensor, per_image: bool) -> Tensor:
        """Adjoint of :meth:`contract`: (N, M, h, w) -> (N, M, C) or, summed, (M, C)."""
        n, c, h, w = self.act.shape
        out = torch.matmul(low.reshape(n, low.shape[1], h * w), self.act.reshape(n, c, h * w).transpose(1, 2))
        return out if per_image else out.sum(0)

    def upsample(self, x: Tensor, rows: Range = None) -> Tensor:
        """Interpolation of (..., h, w) maps to the grid rows ``rows`` (default all): (..., r, W)."""
        return self.ix.apply(self.iy.apply(x, -2, rows), -1)

    def downsample_adjoint(self, x: Tensor, rows: Range = None) -> Tensor:
        """Adjoint of :meth:`upsample`: (..., r, W) maps of grid rows ``rows`` -> (..., h, w)."""
        return self.iy.adjoint(self.ix.adjoint(x, -1), -2, rows)

    def pixel_sq_norms(self) -> Tensor:
        """``||u(p)||^2`` for every grid pixel without upsampling the channels, (N, H, W).

        ``||u(y, x)||^2 = R_x[x] G_y R_x[x]^T`` with ``G_y = B_y^T B_y`` the Gram matrix
        (w x w) of the row-interpolated activation ``B = R_y A``. Each ``G_y`` combines
        the Gram matrices of the few pairs of activation rows that output row ``y``
        interpolates (``A_i^T A_i'`` for ``|i - i'|`` up to the tap span, computed once
        per image), so the channels are contracted at the layer's resolution only.
        """
        a = self.act
        n, c, h, w = a.shape
        H, W = self.iy.n_out, self.ix.n_out
        if self.iy.identity and self.ix.identity:
            return a.pow(2).sum(1)
        ty_idx, ty_w = self.iy.index, self.iy.weight
        ty_idx = torch.where(ty_w != 0, ty_idx, ty_idx[:, :1])  # padding taps: a real row, weight 0
        i1, i2 = ty_idx[:, :, None], ty_idx[:, None, :]
        dist = (i1 - i2).abs().reshape(H, -1)  # (H, T*T) row distance of each pair of taps
        first = torch.minimum(i1, i2).reshape(H, -1)
        pair_w = (ty_w[:, :, None] * ty_w[:, None, :]).reshape(H, -1)
        span = int(dist.max())
        out = a.new_empty(n, H, W)
        rows = a.permute(0, 2, 3, 1)  # (n, h, w, C), a view
        taps = self.ix.n_taps
        per_row = (pair_w.shape[1] + span + 2) * w * w + (w * W if self.ix.dense is not None else W * taps * taps)
        tiles = list(row_tiles(H, per_row))
        for img in range(n):
            r_img = rows[img]
            for lo, hi in tiles:
                i_lo = int(first[lo:hi].min())
                i_hi = min(h, int((first + dist)[lo:hi].max()) + 1)
                m = i_hi - i_lo
                gram = a.new_zeros(span + 1, m, w, w)  # gram[d, i - i_lo] = A_i^T A_(i+d)
                for d in range(min(span, m - 1) + 1):
                    blk = r_img[i_lo:i_hi]
                    gram[d, : m - d] = torch.matmul(blk[: m - d], blk[d:].transpose(-1, -2))
                pick = gram.reshape(-1, w * w)[(dist[lo:hi] * m + first[lo:hi] - i_lo).reshape(-1)]
                G = torch.matmul(pair_w[lo:hi].unsqueeze(1), pick.reshape(hi - lo, -1, w * w))
                out[img, lo:hi] = self._column_forms(G.reshape(hi - lo, w, w)).clamp_min_(0)
        return out

    def _column_forms(self, G: Tensor) -> Tensor:
        """Quadratic forms ``R_x[x] G[y] R_x[x]^T`` of (r, w, w) matrices -> (r, W)."""
        if self.ix.identity:
            return G.diagonal(dim1=-2, dim2=-1).clone()
        if self.ix.dense is not None:
            Rt = self.ix.dense.t()  # (w, W)
            return (torch.matmul(G, Rt) * Rt).sum(-2)
        idx, wt = self.ix.index, self.ix.weight  # (W, T)
        pairs = (idx[:, :, None] * G.shape[-1] + idx[:, None, :]).reshape(-1)  # (W*T*T,)
        vals = G.reshape(G.shape[0], -1)[:, pairs].reshape(G.shape[0], idx.shape[0], -1)
        return (vals * (wt[:, :, None] * wt[:, None, :]).reshape(1, idx.shape[0], -1)).sum(-1)
