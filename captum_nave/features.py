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

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["interpolation_matrix", "ImplicitFeatures", "LayerFeatures", "MATERIALIZE_LIMIT_BYTES"]

#: Largest explicit feature matrix :meth:`ImplicitFeatures.materialize` builds (bytes).
MATERIALIZE_LIMIT_BYTES = 4 * 1024**3


def interpolation_matrix(
    n_in: int, n_out: int, *, mode: str = "bicubic", device=None, dtype=torch.float32
) -> Optional[Tensor]:
    """Matrix ``R`` of shape (n_out, n_in) with ``interpolate(x) == R @ x`` along one axis.

    Built by interpolating the identity with :func:`torch.nn.functional.interpolate`
    (``align_corners=False``), so it reproduces PyTorch's 1-D bicubic weights including
    its border clamping. Returns ``None`` when ``n_in == n_out`` (bicubic interpolation
    to the same size is the identity).
    """
    if n_in == n_out:
        return None
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=False)
    return out[:, 0, :, 0].t().contiguous().to(device=device, dtype=dtype)


def _apply(R: Optional[Tensor], x: Tensor, dim: int) -> Tensor:
    """Apply ``R`` along dimension ``dim`` (-2 rows, -1 columns) of ``x``."""
    if R is None:
        return x
    if dim == -2:
        return torch.matmul(R, x)
    return torch.matmul(x, R.t())


def _apply_t(R: Optional[Tensor], x: Tensor, dim: int) -> Tensor:
    """Apply ``R^T`` (the adjoint) along dimension ``dim`` of ``x``."""
    if R is None:
        return x
    if dim == -2:
        return torch.matmul(R.t(), x)
    return torch.matmul(x, R)


@dataclass
class LayerFeatures:
    """One layer's share of the implicit features.

    Attributes
    ----------
    act : Tensor of shape (N, C, h, w)
        Low-resolution activation.
    Ry : Tensor of shape (H, h) or None
        Row interpolation matrix (None: identity).
    Rx : Tensor of shape (W, w) or None
        Column interpolation matrix (None: identity).
    scale : Tensor of shape (N, H, W)
        ``1 / ((1 + C) * ||u(p)||)``, zero where the upsampled pixel vector has zero norm.
    sq_norm : Tensor of shape (N, H, W)
        ``||s(p) u(p)||^2`` of this layer's block of the feature.
    """

    act: Tensor
    Ry: Optional[Tensor]
    Rx: Optional[Tensor]
    scale: Tensor
    sq_norm: Tensor

    @property
    def channels(self) -> int:
        return int(self.act.shape[1])

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

    def upsample(self, x: Tensor) -> Tensor:
        """Bicubic upsampling of (..., h, w) maps to (..., H, W) through the matrices."""
        return _apply(self.Rx, _apply(self.Ry, x, -2), -1)

    def downsample_adjoint(self, x: Tensor) -> Tensor:
        """Adjoint of :meth:`upsample`: (..., H, W) -> (..., h, w)."""
        return _apply_t(self.Rx, _apply_t(self.Ry, x, -2), -1)


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
        for a in activations:
            if a.dim() != 4 or a.shape[0] != n:
                raise ValueError(
                    f"activations: expected (N={n}, C, h, w) tensors, got {tuple(a.shape)}"
                )
            a = a.to(dtype)
            c, h, w = a.shape[1:]
            Ry = interpolation_matrix(h, H, mode=mode, device=a.device, dtype=dtype)
            Rx = interpolation_matrix(w, W, mode=mode, device=a.device, dtype=dtype)
            norm2 = self._pixel_sq_norms(a, Ry, Rx)
            norm = norm2.sqrt()
            weight = 1.0 / (1.0 + c)
            ok = norm > self.eps
            scale = torch.where(ok, weight / norm.clamp_min(self.eps), torch.zeros_like(norm))
            sq = torch.where(ok, torch.full_like(norm, weight * weight), torch.zeros_like(norm))
            self.layers.append(LayerFeatures(a, Ry, Rx, scale, sq))
        self.dim = sum(layer.channels for layer in self.layers)
        self.timings: dict = {}
        self._sq_norms = sum(layer.sq_norm for layer in self.layers)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _pixel_sq_norms(a: Tensor, Ry: Optional[Tensor], Rx: Optional[Tensor]) -> Tensor:
        """``||u(p)||^2`` for every grid pixel without upsampling the channels.

        Image by image, so the row-interpolated activation ``B = R_y A`` (C x H x w)
        exists for one image at a time. Returns a tensor of shape (N, H, W).
        """
        out = []
        for img in a:
            B = _apply(Ry, img, -2)  # (C, H, w)
            if Rx is None:
                out.append(B.pow(2).sum(0))
                continue
            # Gram per output row: G[y] = B[:, y, :]^T B[:, y, :]  -> (H, w, w)
            G = torch.matmul(B.permute(1, 2, 0), B.permute(1, 0, 2))
            # quadratic form per column x: sum_jk Rx[x, j] G[y, j, k] Rx[x, k]
            GR = torch.matmul(G, Rx.t())  # (H, w, W)
            out.append((GR * Rx.t()).sum(-2).clamp_min(0))
        return torch.stack(out)

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
                torch.cat([p.layers[i].act for p in parts]), layer.Ry, layer.Rx,
                torch.cat([p.layers[i].scale for p in parts]), torch.cat([p.layers[i].sq_norm for p in parts]),
            )
            for i, layer in enumerate(first.layers)
        ]
        return cls.from_layers(layers, first.grid, eps=first.eps, mode=first.mode)

    def select(self, images: Tensor) -> "ImplicitFeatures":
        """The features of a subset of the images (shares the interpolation matrices).

        Parameters
        ----------
        images : LongTensor of shape (M,)
            Image indices.
        """
        sub = object.__new__(ImplicitFeatures)
        sub.__dict__.update(self.__dict__)
        sub.layers = [
            LayerFeatures(l.act[images], l.Ry, l.Rx, l.scale[images], l.sq_norm[images]) for l in self.layers
        ]
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

    # ------------------------------------------------------------------ operations
    def sq_norms(self) -> Tensor:
        """``||f(p)||^2`` for every pixel, shape (N, H, W)."""
        return self._sq_norms

    def dot(self, vectors: Tensor) -> Tensor:
        """Dot products ``f(p) . v_m``.

        Parameters
        ----------
        vectors : Tensor of shape (M, D) or (B, M, D) with B in {1, N}
            Shared vectors, or one set per image.

        Returns
        -------
        Tensor of shape (N, M, H, W)
        """
        v = vectors.to(self.dtype)
        if v.dim() == 2:
            v = v.unsqueeze(0)
        out: Optional[Tensor] = None
        for layer, vl in zip(self.layers, self._split(v)):
            low = layer.contract(vl)  # (N, M, h, w)
            up = layer.upsample(low)  # a fresh tensor: safe to modify in place
            if out is None:
                out = up.mul_(layer.scale.unsqueeze(1))
            else:
                out.addcmul_(up, layer.scale.unsqueeze(1))
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
        densely in integer form: each layer's per-pixel scale is scattered into K maps.

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
        idx = labels.reshape(n, 1, -1)
        blocks = []
        for layer in self.layers:
            m = torch.zeros(n, n_labels, self.n_pixels, dtype=self.dtype, device=self.device)
            m.scatter_(1, idx, layer.scale.reshape(n, 1, -1))
            low = layer.downsample_adjoint(m.reshape(n, n_labels, *self.grid))
            blocks.append(layer.contract_adjoint(low, per_image))
        counts = torch.zeros(n, n_labels, dtype=self.dtype, device=self.device)
        counts.scatter_add_(1, labels.reshape(n, -1), torch.ones(1, 1, dtype=self.dtype, device=self.device).expand(n, self.n_pixels))
        if not per_image:
            counts = counts.sum(0)
        return torch.cat(blocks, dim=-1), counts

    def rows(self, n_idx: Tensor, y_idx: Tensor, x_idx: Tensor, *, chunk: int = 512) -> Tensor:
        """Explicit feature vectors of selected pixels.

        Parameters
        ----------
        n_idx, y_idx, x_idx : LongTensor of shape (P,)
            Image index and grid coordinates of each pixel.

        Returns
        -------
        Tensor of shape (P, D)
        """
        P = int(n_idx.numel())
        out = torch.zeros(P, self.dim, dtype=self.dtype, device=self.device)
        offset = 0
        for layer in self.layers:
            n_, c, h, w = layer.act.shape
            ry = layer.Ry[y_idx] if layer.Ry is not None else torch.nn.functional.one_hot(y_idx, h).to(self.dtype)
            rx = layer.Rx[x_idx] if layer.Rx is not None else torch.nn.functional.one_hot(x_idx, w).to(self.dtype)
            taps = (ry.unsqueeze(2) * rx.unsqueeze(1)).reshape(P, h * w)  # (P, h*w) interpolation weights
            block = torch.empty(P, c, dtype=self.dtype, device=self.device)
            for n in torch.unique(n_idx).tolist():  # one matrix product per image, no gather of act
                sel = torch.nonzero(n_idx == n).flatten()
                for s in range(0, int(sel.numel()), chunk):
                    part = sel[s : s + chunk]
                    # (C, h*w) @ (h*w, p): act is used in place, only the small taps are transposed
                    block[part] = torch.matmul(layer.act[n].reshape(c, h * w), taps[part].t()).t()
            out[:, offset : offset + c] = block * layer.scale[n_idx, y_idx, x_idx].unsqueeze(1)
            offset += c
        return out

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
