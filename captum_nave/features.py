"""Implicit Algorithm-1 features (second step of the NAVE data flow).

Algorithm 1 of the NAVE paper builds, for every pixel ``p`` of a common grid
``(H, W)``, the feature

.. math::  f(p) = \\big[\\, s_1(p)\\, u_1(p),\\ \\dots,\\ s_L(p)\\, u_L(p) \\,\\big],
           \\qquad s_l(p) = \\frac{1}{(1 + C_l)\\, \\lVert u_l(p) \\rVert_2},

where ``u_l = bicubic_upsample(A_l, (H, W))`` is layer ``l``'s activation ``A_l`` of
shape ``(C_l, h_l, w_l)``. Bicubic interpolation is linear and separable, so
``u_l = R_y A_l R_x^T`` with two small matrices ``R_y (H, h_l)`` and ``R_x (W, w_l)``
built from :func:`torch.nn.functional.interpolate` itself (bit-compatible with it).

:class:`ImplicitFeatures` never materialises the ``H*W x sum(C_l)`` matrix. It keeps
the low-resolution activations, the interpolation matrices and the per-pixel scales
``s_l`` and offers the few operations clustering needs:

* :meth:`~ImplicitFeatures.dot` -- ``f(p) . c_m`` for M vectors: channel contraction
  at the layer's own resolution, then only the M-channel result is upsampled;
* :meth:`~ImplicitFeatures.weighted_sum` -- ``sum_p w_m(p) f(p)``: the adjoint of the
  interpolation applied to M weight maps, then a contraction with ``A_l``;
* :meth:`~ImplicitFeatures.sq_norms` -- ``||f(p)||^2`` (``sum_l 1/(1+C_l)^2`` except at
  zero-norm pixels);
* :meth:`~ImplicitFeatures.rows` -- a few explicit rows (k-means++ seeding);
* :meth:`~ImplicitFeatures.materialize` -- the explicit matrix, for clusterers that
  need it (guarded by a size limit).

The per-pixel norms need no channel upsampling either: ``||u_l(y, x)||^2`` is the
quadratic form ``R_x[x] G_y R_x[x]^T`` of the Gram matrix ``G_y = B_y^T B_y`` of the
row-interpolated activation ``B = R_y A_l``.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .interpolation import Interp1d, Range, interpolation_matrix  # noqa: F401 (re-exported)
from .layer_features import GATHER_COST, LayerFeatures, gather_interp, row_tiles, rows_dot

__all__ = [
    "interpolation_matrix",
    "ImplicitFeatures",
    "LayerFeatures",
    "MATERIALIZE_LIMIT_BYTES",
]

#: Largest explicit feature matrix :meth:`ImplicitFeatures.materialize` builds (bytes).
MATERIALIZE_LIMIT_BYTES = 4 * 1024**3


class ImplicitFeatures:
    """Algorithm-1 features of a batch of images, kept implicit.

    Parameters
    ----------
    activations : sequence of Tensor, each of shape (N, C_l, h_l, w_l)
        Layer activations of the same N images.
    grid : (int, int)
        Common grid ``(H, W)``.
    eps : float
        Pixels whose upsampled vector has a norm <= ``eps`` get a zero feature block
        (the authors' script divides by zero there and produces NaN).
    dtype : torch.dtype, optional
        Computation dtype (default: the activations' floating dtype, at least float32).
    mode : str
        Interpolation mode, ``"bicubic"`` (the paper) or ``"bilinear"``.

    Attributes
    ----------
    layers : list of LayerFeatures
    n_images : int
    grid : (int, int)
    dim : int
        ``sum_l C_l``, the dimension of a feature vector.

    Notes
    -----
    Memory: besides the activations, one ``(N, H, W)`` scale map per layer and the
    ``(N, H, W)`` squared norms are kept; every operation on the full grid works in
    tiles of rows of at most :data:`CHUNK_ELEMENTS` elements.
    """

    def __init__(
        self,
        activations: Sequence[Tensor],
        grid: Tuple[int, int],
        *,
        eps: float = 1e-8,
        dtype: Optional[torch.dtype] = None,
        mode: str = "bicubic",
    ) -> None:
        if len(activations) == 0:
            raise ValueError("activations: expected at least one layer, got none")
        n = int(activations[0].shape[0])
        H, W = int(grid[0]), int(grid[1])
        if H < 1 or W < 1:
            raise ValueError(f"grid: expected positive (H, W), got {grid}")
        self.n_images = n
        self.grid = (H, W)
        self.eps = float(eps)
        self.mode = mode
        self.device = activations[0].device
        if dtype is None:
            dtype = torch.promote_types(activations[0].dtype, torch.float32)
        self.dtype = dtype
        self.layers: List[LayerFeatures] = []
        ops: dict = {}

        def op(n_in: int, n_out: int) -> Interp1d:
            if (n_in, n_out) not in ops:
                ops[(n_in, n_out)] = Interp1d(n_in, n_out, mode=mode, device=self.device, dtype=dtype)
            return ops[(n_in, n_out)]

        sq_norms: Optional[Tensor] = None
        for a in activations:
            if a.dim() != 4 or a.shape[0] != n:
                raise ValueError(
                    f"activations: expected (N={n}, C, h, w) tensors, got {tuple(a.shape)}"
                )
            a = a.to(dtype)
            c, h, w = a.shape[1:]
            layer = LayerFeatures(a, op(h, H), op(w, W), a.new_empty(0))
            norm = layer.pixel_sq_norms().sqrt_()  # (N, H, W), reused in place for the scale
            ok = norm > self.eps
            layer.scale = norm.clamp_min_(self.eps).reciprocal_().mul_(layer.weight).mul_(ok)
            sq = ok.to(dtype).mul_(layer.weight**2)
            sq_norms = sq if sq_norms is None else sq_norms.add_(sq)
            self.layers.append(layer)
        self.dim = sum(layer.channels for layer in self.layers)
        self.timings: dict = {}
        assert sq_norms is not None
        self._sq_norms = sq_norms

    @classmethod
    def from_layers(
        cls, layers: Sequence[LayerFeatures], grid: Tuple[int, int], *, eps: float = 1e-8, mode: str = "bicubic"
    ) -> "ImplicitFeatures":
        """Features from already computed per-layer parts (no activation is re-normalised).

        Used to rebuild the features of a batch from parts computed elsewhere (another
        process, :meth:`concat`). All parts must describe the same N images on ``grid``.
        """
        if len(layers) == 0:
            raise ValueError("layers: expected at least one layer, got none")
        n = int(layers[0].act.shape[0])
        for layer in layers:
            if layer.act.shape[0] != n or tuple(layer.scale.shape) != (n, *grid):
                raise ValueError(
                    f"layers: expected parts of N={n} images on the grid {tuple(grid)}, got an activation "
                    f"{tuple(layer.act.shape)} with scales {tuple(layer.scale.shape)}"
                )
        obj = object.__new__(cls)
        obj.n_images = n
        obj.grid = (int(grid[0]), int(grid[1]))
        obj.eps = float(eps)
        obj.mode = mode
        obj.device = layers[0].act.device
        obj.dtype = layers[0].act.dtype
        obj.layers = list(layers)
        obj.dim = sum(layer.channels for layer in obj.layers)
        obj.timings = {}
        obj._sq_norms = sum(layer.sq_norm for layer in obj.layers)
        return obj

    @classmethod
    def concat(cls, parts: Sequence["ImplicitFeatures"]) -> "ImplicitFeatures":
        """The features of the images of several parts, in order (one batch made of several).

        Every part must have the same grid, layers, dtype and interpolation; the result
        equals the features of the concatenated batch (each image's features depend on
        that image only).
        """
        if len(parts) == 0:
            raise ValueError("parts: expected at least one ImplicitFeatures, got none")
        first = parts[0]
        for p in parts[1:]:
            same = (
                p.grid == first.grid and p.layer_dims == first.layer_dims and p.dtype == first.dtype
                and p.mode == first.mode and p.eps == first.eps
                and [l.act.shape[2:] for l in p.layers] == [l.act.shape[2:] for l in first.layers]
            )
            if not same:
                raise ValueError(
                    f"parts: expected features with the same grid, layers and dtype, got grid {p.grid} "
                    f"channels {p.layer_dims} {p.dtype} after grid {first.grid} channels {first.layer_dims} {first.dtype}"
                )
        layers = [
            LayerFeatures(
                torch.cat([p.layers[i].act for p in parts]), layer.iy, layer.ix,
                torch.cat([p.layers[i].scale for p in parts]),
            )
            for i, layer in enumerate(first.layers)
        ]
        return cls.from_layers(layers, first.grid, eps=first.eps, mode=first.mode)

    def select(self, images: Tensor) -> "ImplicitFeatures":
        """The features of a subset of the images (shares the interpolation operators).

        Parameters
        ----------
        images : LongTensor of shape (M,)
            Image indices.
        """
        sub = object.__new__(ImplicitFeatures)
        sub.__dict__.update(self.__dict__)
        sub.layers = [layer.select(images) for layer in self.layers]
        sub.n_images = int(images.numel())
        sub._sq_norms = self._sq_norms[images]
        return sub

    # ------------------------------------------------------------------ properties
    @property
    def n_pixels(self) -> int:
        """Grid pixels per image, ``H * W``."""
        return self.grid[0] * self.grid[1]

    @property
    def layer_dims(self) -> List[int]:
        return [layer.channels for layer in self.layers]

    def _split(self, vectors: Tensor) -> List[Tensor]:
        """Split the last dimension of ``vectors`` (..., D) into per-layer blocks."""
        return list(torch.split(vectors, self.layer_dims, dim=-1))

    def row_tiles(self, maps_per_pixel: int) -> Iterator[Tuple[int, int]]:
        """Row ranges of the grid for a temporary of ``maps_per_pixel`` values per image pixel."""
        return row_tiles(self.grid[0], self.n_images * maps_per_pixel * self.grid[1])

    # ------------------------------------------------------------------ operations
    def sq_norms(self) -> Tensor:
        """``||f(p)||^2`` for every pixel, shape (N, H, W)."""
        return self._sq_norms

    def dot(self, vectors: Tensor, rows: Range = None, offsets: Optional[Tensor] = None) -> Tensor:
        """Dot products ``f(p) . v_m`` (minus ``offsets[m]``).

        Parameters
        ----------
        vectors : Tensor of shape (M, D) or (B, M, D) with B in {1, N}
            Shared vectors, or one set per image.
        rows : (int, int), optional
            Only the grid rows ``lo:hi`` (a tile); default all.
        offsets : Tensor of shape (B, M), optional
            Subtracted from the dot products (in the same pass as the first layer).

        Returns
        -------
        Tensor of shape (N, M, r, W)
            ``r = H`` by default, ``hi - lo`` for a tile.
        """
        v = vectors.to(self.dtype)
        if v.dim() == 2:
            v = v.unsqueeze(0)
        lo, hi = (0, self.grid[0]) if rows is None else rows
        out: Optional[Tensor] = None
        for layer, vl in zip(self.layers, self._split(v)):
            up = layer.upsample(layer.contract(vl), (lo, hi))  # (a view of) a fresh tensor
            scale = layer.scale[:, lo:hi].unsqueeze(1)
            if out is None:
                if offsets is None:
                    out = up.mul_(scale)
                else:
                    out = torch.addcmul(offsets.to(self.dtype)[:, :, None, None].neg(), up, scale)
            else:
                out.addcmul_(up, scale)
        assert out is not None
        return out

    def weighted_sum(self, weights: Tensor, *, per_image: bool = True) -> Tensor:
        """Weighted sums of feature vectors, ``sum_p w_m(p) f(p)``.

        Parameters
        ----------
        weights : Tensor of shape (N, M, H, W)
            One weight map per output vector (e.g. one-hot cluster assignments).
        per_image : bool
            Sum each image separately (True) or over the whole batch (False).

        Returns
        -------
        Tensor of shape (N, M, D) if ``per_image`` else (M, D)
        """
        w = weights.to(self.dtype)
        blocks = []
        for layer in self.layers:
            low = layer.downsample_adjoint(w * layer.scale.unsqueeze(1))  # (N, M, h, w)
            blocks.append(layer.contract_adjoint(low, per_image))
        return torch.cat(blocks, dim=-1)

    def label_sums(self, labels: Tensor, n_labels: int, *, per_image: bool = True) -> Tuple[Tensor, Tensor]:
        """Sums of the feature vectors of each label, and label counts.

        Equivalent to :meth:`weighted_sum` with one-hot weights, without building them
        for the whole grid: tile by tile, each layer's per-pixel scale is scattered into
        K maps and pulled back to the layer's resolution by the adjoint interpolation.

        Parameters
        ----------
        labels : LongTensor of shape (N, H, W), values in ``0..n_labels-1``
        n_labels : int
        per_image : bool

        Returns
        -------
        sums : Tensor of shape (N, K, D) if ``per_image`` else (K, D)
        counts : Tensor of shape (N, K) if ``per_image`` else (K,)
        """
        n = labels.shape[0]
        W = self.grid[1]
        blocks = []
        for layer in self.layers:
            h, w = layer.act.shape[-2:]
            low = torch.zeros(n, n_labels, h, w, dtype=self.dtype, device=self.device)
            for lo, hi in self.row_tiles(n_labels):
                m = torch.zeros(n, n_labels, (hi - lo) * W, dtype=self.dtype, device=self.device)
                m.scatter_(1, labels[:, lo:hi].reshape(n, 1, -1), layer.scale[:, lo:hi].reshape(n, 1, -1))
                low += layer.downsample_adjoint(m.reshape(n, n_labels, hi - lo, W), (lo, hi))
            blocks.append(layer.contract_adjoint(low, per_image))
        counts = torch.zeros(n, n_labels, dtype=self.dtype, device=self.device)
        counts.scatter_add_(1, labels.reshape(n, -1), torch.ones(1, 1, dtype=self.dtype, device=self.device).expand(n, self.n_pixels))
        if not per_image:
            counts = counts.sum(0)
        return torch.cat(blocks, dim=-1), counts

    # ------------------------------------------------------------------ single pixels
    def _at(self, maps: Tensor, n: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """Values of (N, H, W) maps at pixels ``(n, y, x)`` (a flat gather, faster than ``maps[n, y, x]``)."""
        H, W = self.grid
        return maps.reshape(-1).index_select(0, (n * H + y) * W + x)

    def dot_at(self, vectors: Tensor, n: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """Dot products ``f(p) . v_m`` at single pixels.

        Parameters
        ----------
        vectors : Tensor of shape (B, M, D), B in {1, N}
            Shared vectors (B = 1) or one set per image (B = N, pixel ``p`` uses set ``n_p``).
        n, y, x : LongTensor of shape (P,)
            Image index and grid coordinates; pixels of one image consecutive when B = N.

        Returns
        -------
        Tensor of shape (P, M)

        Notes
        -----
        Per layer, whichever is cheaper: the channel contraction of every image at the
        layer's resolution followed by the interpolation taps of the P pixels, or the
        P explicit rows (taps of the activation) multiplied by the vectors.
        """
        v = vectors.to(self.dtype)
        M = v.shape[1]
        P = int(n.numel())
        out = torch.zeros(P, M, dtype=self.dtype, device=self.device)
        for layer, vl in zip(self.layers, self._split(v)):
            N, C, h, w = layer.act.shape
            taps = layer.iy.n_taps * layer.ix.n_taps
            if N * M * C * h * w + GATHER_COST * P * M * taps < P * C * (GATHER_COST * taps + M):
                low = layer.contract(vl).permute(0, 2, 3, 1).contiguous()  # (N, h, w, M)
                vals = gather_interp(low, layer.iy, layer.ix, n, y, x)
            else:
                rows = gather_interp(layer.act_cl, layer.iy, layer.ix, n, y, x)  # (P, C)
                vals = rows_dot(rows, vl, n)
            out.addcmul_(vals, self._at(layer.scale, n, y, x).unsqueeze(1))
        return out

    def rows(self, n_idx: Tensor, y_idx: Tensor, x_idx: Tensor) -> Tensor:
        """Explicit feature vectors of selected pixels.

        Parameters
        ----------
        n_idx, y_idx, x_idx : LongTensor of shape (P,)
            Image index and grid coordinates of each pixel.

        Returns
        -------
        Tensor of shape (P, D)
        """
        blocks = []
        for layer in self.layers:
            rows = gather_interp(layer.act_cl, layer.iy, layer.ix, n_idx, y_idx, x_idx)
            blocks.append(rows.mul_(self._at(layer.scale, n_idx, y_idx, x_idx).unsqueeze(1)))
        return torch.cat(blocks, dim=1)

    def label_sums_at(
        self, n: Tensor, y: Tensor, x: Tensor, labels: Tensor, weights: Tensor, n_labels: int,
        *, per_image: bool = True,
    ) -> Tuple[Tensor, Tensor]:
        """Weighted sums ``sum_p w_p f(p)`` of single pixels per label, and summed weights.

        The sparse counterpart of :meth:`label_sums`: with ``weights`` of +1 and -1 it
        gives the change of the label sums when a few pixels change label.

        Parameters
        ----------
        n, y, x, labels : LongTensor of shape (P,)
        weights : Tensor of shape (P,)
        n_labels : int
        per_image : bool

        Returns
        -------
        sums : Tensor of shape (N, K, D) if ``per_image`` else (K, D)
        counts : Tensor of shape (N, K) if ``per_image`` else (K,)
        """
        K = n_labels
        N = self.n_images
        P = int(n.numel())
        w = weights.to(self.dtype)
        bucket = n * K + labels if per_image else labels
        nb = N * K if per_image else K
        blocks = []
        for layer in self.layers:
            _, C, h, w_ = layer.act.shape
            taps = layer.iy.n_taps * layer.ix.n_taps
            ws = w * self._at(layer.scale, n, y, x)
            if GATHER_COST * P * C * taps < N * K * C * h * w_:
                rows = gather_interp(layer.act_cl, layer.iy, layer.ix, n, y, x)
                out = torch.zeros(nb, C, dtype=self.dtype, device=self.device)
                out.index_add_(0, bucket, rows.mul_(ws.unsqueeze(1)))
            else:
                low = torch.zeros(N, K, h, w_, dtype=self.dtype, device=self.device)
                yi, yw = layer.iy.index.index_select(0, y), layer.iy.weight.index_select(0, y)
                xi, xw = layer.ix.index.index_select(0, x), layer.ix.weight.index_select(0, x)
                flat = ((n * K + labels)[:, None, None] * h + yi[:, :, None]) * w_ + xi[:, None, :]
                vals = ws[:, None, None] * yw[:, :, None] * xw[:, None, :]
                low.view(-1).index_add_(0, flat.reshape(-1), vals.reshape(-1))
                out = layer.contract_adjoint(low, per_image).reshape(-1, C) if per_image else layer.contract_adjoint(low, False)
            blocks.append(out)
        counts = torch.zeros(nb, dtype=self.dtype, device=self.device).index_add_(0, bucket, w)
        sums = torch.cat(blocks, dim=-1)
        if per_image:
            return sums.reshape(N, K, -1), counts.reshape(N, K)
        return sums, counts


    def mean(self, *, per_image: bool = True) -> Tensor:
        """Mean feature vector, shape (N, D) if ``per_image`` else (D,)."""
        ones = torch.ones(self.n_images, 1, *self.grid, dtype=self.dtype, device=self.device)
        s = self.weighted_sum(ones, per_image=per_image)
        if per_image:
            return s[:, 0] / self.n_pixels
        return s[0] / (self.n_pixels * self.n_images)

    def materialize(self, image: Optional[int] = None, *, limit_bytes: Optional[int] = None) -> Tensor:
        """The explicit feature matrix of one image (H*W, D) or of the batch (N*H*W, D).

        Rows are in image-major, then row-major pixel order. Raises ``MemoryError`` when
        the matrix would exceed ``limit_bytes`` (default :data:`MATERIALIZE_LIMIT_BYTES`).
        """
        n_imgs = 1 if image is not None else self.n_images
        size = n_imgs * self.n_pixels * self.dim * torch.finfo(self.dtype).bits // 8
        limit = MATERIALIZE_LIMIT_BYTES if limit_bytes is None else limit_bytes
        if size > limit:
            raise MemoryError(
                f"materialising {n_imgs} x {self.n_pixels} x {self.dim} features needs "
                f"{size / 1e9:.1f} GB (limit {limit / 1e9:.1f} GB); use a smaller grid "
                "(resolution='layer') or an implicit clusterer ('kmeans', 'pca', 'ward')"
            )
        idx = range(self.n_images) if image is None else [image]
        mats = []
        for i in idx:
            blocks = []
            for layer in self.layers:
                u = layer.upsample(layer.act[i])  # (C, H, W)
                blocks.append((u * layer.scale[i]).reshape(layer.channels, -1).t())
            mats.append(torch.cat(blocks, dim=1))
        return torch.cat(mats, dim=0)
