"""One-dimensional interpolation operators, as PyTorch's ``F.interpolate`` computes them.

Bicubic (and bilinear) interpolation is linear and separable: upsampling an
``(h, w)`` map to ``(H, W)`` is ``R_y X R_x^T`` with two matrices ``R_y (H, h)`` and
``R_x (W, w)``. Every output row of such a matrix has at most four non-zero entries
(two for bilinear), so :class:`Interp1d` stores the operator as *taps*: per output
position, the input indices and weights. It applies the operator (and its adjoint)
either through the dense matrix, when it is small (one BLAS call is fastest there), or
through the taps, whose cost and memory grow linearly with the size (very large
grids). Both give ``F.interpolate``'s values: the matrix is built by interpolating the
identity with ``F.interpolate`` itself, border clamping included.

Every operation can be restricted to a range of output positions ``(lo, hi)``, which is
how the implicit features process a large grid in tiles of rows.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["interpolation_matrix", "Interp1d", "DENSE_LIMIT"]

#: Largest ``n_out * n_in`` for which the dense matrix is kept and used.
DENSE_LIMIT = 1 << 18

Range = Optional[Tuple[int, int]]


def interpolation_matrix(
    n_in: int, n_out: int, *, mode: str = "bicubic", device=None, dtype=torch.float32
) -> Optional[Tensor]:
    """Matrix ``R`` of shape (n_out, n_in) with ``interpolate(x) == R @ x`` along one axis.

    Built by interpolating the identity with :func:`torch.nn.functional.interpolate`
    (``align_corners=False``), so it reproduces PyTorch's 1-D weights including its
    border clamping. Returns ``None`` when ``n_in == n_out`` (the identity).
    """
    if n_in == n_out:
        return None
    return _columns(n_in, n_out, mode, 0, n_in).t().contiguous().to(device=device, dtype=dtype)


def _columns(n_in: int, n_out: int, mode: str, i0: int, i1: int) -> Tensor:
    """Columns ``i0:i1`` of the interpolation matrix, transposed: (i1 - i0, n_out), float64."""
    eye = torch.zeros(i1 - i0, 1, n_in, 1, dtype=torch.float64)
    eye[torch.arange(i1 - i0), 0, torch.arange(i0, i1), 0] = 1.0
    return F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=False)[:, 0, :, 0]


def _taps(n_in: int, n_out: int, mode: str) -> Tuple[Tensor, Tensor]:
    """Per output position, the input indices (n_out, T) and weights (n_out, T), float64.

    Built from columns of the matrix in blocks, so the memory stays O(n_out * block).
    Rows with fewer than T non-zeros are padded with weight 0 at index 0.
    """
    rows, cols, vals = [], [], []
    block = max(1, (1 << 20) // max(n_out, 1))
    for i0 in range(0, n_in, block):
        i1 = min(n_in, i0 + block)
        ct = _columns(n_in, n_out, mode, i0, i1)  # (i1 - i0, n_out)
        i, o = torch.nonzero(ct, as_tuple=True)
        rows.append(o)
        cols.append(i + i0)
        vals.append(ct[i, o])
    o = torch.cat(rows)
    i = torch.cat(cols)
    v = torch.cat(vals)
    order = torch.argsort(o * n_in + i)
    o, i, v = o[order], i[order], v[order]
    counts = torch.bincount(o, minlength=n_out)
    T = max(1, int(counts.max()))
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(o.numel()) - start[o]
    index = torch.zeros(n_out, T, dtype=torch.long)
    weight = torch.zeros(n_out, T, dtype=torch.float64)
    index[o, slot] = i
    weight[o, slot] = v
    return index, weight


class Interp1d:
    """The interpolation operator ``R`` (n_out, n_in) along one axis.

    Parameters
    ----------
    n_in, n_out : int
        Input and output sizes.
    mode : "bicubic" or "bilinear"
    device, dtype
        Where and in which precision the operator is applied.

    Attributes
    ----------
    identity : bool
        ``n_in == n_out`` (interpolation to the same size is the identity).
    index, weight : Tensor of shape (n_out, T)
        Taps: ``(R x)[o] = sum_t weight[o, t] * x[index[o, t]]``.
    dense : Tensor of shape (n_out, n_in) or None
        The matrix, kept when ``n_out * n_in <= DENSE_LIMIT``.
    """

    def __init__(self, n_in: int, n_out: int, *, mode: str = "bicubic", device=None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.identity = self.n_in == self.n_out
        if self.identity:
            self.index = torch.arange(self.n_out, device=device).unsqueeze(1)
            self.weight = torch.ones(self.n_out, 1, dtype=dtype, device=device)
            self.dense: Optional[Tensor] = None
            return
        index, weight = _taps(self.n_in, self.n_out, mode)
        self.index = index.to(device)
        self.weight = weight.to(device=device, dtype=dtype)
        self.dense = None
        if self.n_in * self.n_out <= DENSE_LIMIT:
            self.dense = interpolation_matrix(self.n_in, self.n_out, mode=mode, device=device, dtype=dtype)

    @property
    def n_taps(self) -> int:
        return int(self.index.shape[1])

    def _range(self, rng: Range) -> Tuple[int, int]:
        return (0, self.n_out) if rng is None else (int(rng[0]), int(rng[1]))

    def apply(self, x: Tensor, dim: int, rng: Range = None) -> Tensor:
        """Output positions ``rng`` (default all) of ``R x`` along ``dim`` (-2 or -1)."""
        lo, hi = self._range(rng)
        if self.identity:
            return x if (lo, hi) == (0, self.n_out) else x.narrow(dim, lo, hi - lo)
        if self.dense is not None:
            R = self.dense[lo:hi]
            return torch.matmul(R, x) if dim == -2 else torch.matmul(x, R.t())
        idx, wt = self.index[lo:hi], self.weight[lo:hi]
        shape = [1] * x.dim()
        shape[dim] = hi - lo
        out = None
        for t in range(idx.shape[1]):
            term = x.index_select(dim, idx[:, t]).mul_(wt[:, t].reshape(shape))
            out = term if out is None else out.add_(term)
        return out

    def adjoint(self, y: Tensor, dim: int, rng: Range = None) -> Tensor:
        """``R[rng]^T y`` along ``dim``: ``y`` holds output positions ``rng``; returns n_in."""
        lo, hi = self._range(rng)
        if self.identity:
            if (lo, hi) == (0, self.n_out):
                return y
            shape = list(y.shape)
            shape[dim] = self.n_in
            out = y.new_zeros(shape)
            out.narrow(dim, lo, hi - lo).copy_(y)
            return out
        if self.dense is not None:
            R = self.dense[lo:hi]
            return torch.matmul(R.t(), y) if dim == -2 else torch.matmul(y, R)
        idx, wt = self.index[lo:hi], self.weight[lo:hi]
        shape = list(y.shape)
        shape[dim] = self.n_in
        out = y.new_zeros(shape)
        wshape = [1] * y.dim()
        wshape[dim] = hi - lo
        for t in range(idx.shape[1]):
            out.index_add_(dim, idx[:, t], y * wt[:, t].reshape(wshape))
        return out

    def span(self) -> int:
        """Largest distance between two input indices used by one output position."""
        live = self.weight != 0
        hi = torch.where(live, self.index, torch.full_like(self.index, -1)).max(1).values
        lo = torch.where(live, self.index, torch.full_like(self.index, self.n_in)).min(1).values
        return int((hi - lo).clamp_min(0).max())
