"""PCA-argmax grouping (NAVE paper, appendix F) on implicit features.

The features are centred, the top-K principal directions are found, and every pixel
gets the index of the component with the largest absolute projection. The principal
directions come from a randomised range finder (Halko, Martinsson & Tropp 2011) that
only needs products with the implicit feature matrix (``F @ V`` via
:meth:`ImplicitFeatures.dot`, ``F^T @ Y`` via :meth:`ImplicitFeatures.weighted_sum`),
so the matrix is never built. With ``n_oversamples`` extra directions and
``n_power_iter`` power iterations the subspace is accurate to floating-point precision
whenever the feature spectrum decays past rank K+p (always true for K+p >= D); the
limit: for nearly flat spectra the components are approximate, as in scikit-learn's
``PCA(svd_solver="randomized")``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..features import ImplicitFeatures
from .kmeans import _as_group_maps, make_generators

__all__ = ["implicit_pca", "pca_argmax"]


def implicit_pca(
    feats: ImplicitFeatures,
    n_components: int,
    *,
    shared: bool = False,
    n_oversamples: int = 10,
    n_power_iter: int = 4,
    random_state=None,
) -> Tuple[Tensor, Tensor]:
    """Top principal directions of the (centred) implicit features.

    Returns
    -------
    components : Tensor of shape (G, K, D)
        Orthonormal principal directions per group (G = 1 if ``shared`` else N).
    mean : Tensor of shape (G, D)
        The feature mean of each group.
    """
    G = 1 if shared else feats.n_images
    gens = make_generators(random_state, G, feats.device)
    L = min(n_components + n_oversamples, feats.dim)
    mean = feats.mean(per_image=not shared)
    mean = mean.unsqueeze(0) if shared else mean  # (G, D)
    omega = torch.stack(  # one sketch per group from its own generator: batch-independent
        [torch.randn(L, feats.dim, generator=g, device=feats.device, dtype=feats.dtype) for g in gens]
    )

    def forward(V: Tensor) -> Tensor:  # (G, L, D) -> centred F V, (G, P, L)
        y = _as_group_maps(feats.dot(V), shared)  # (G, L, P)
        y = y - torch.einsum("gd,gld->gl", mean, V).unsqueeze(-1)
        return y.transpose(1, 2)

    def adjoint(Y: Tensor) -> Tensor:  # (G, P, L) -> centred F^T Y, (G, L, D)
        maps = _ungroup(Y.transpose(1, 2), feats, shared)  # (N, L, H, W)
        s = feats.weighted_sum(maps, per_image=not shared)
        s = s.unsqueeze(0) if shared else s
        return s - Y.sum(1).unsqueeze(-1) * mean.unsqueeze(1)

    Q, _ = torch.linalg.qr(forward(omega))
    for _ in range(n_power_iter):
        Z, _ = torch.linalg.qr(adjoint(Q).transpose(1, 2))  # (G, D, L)
        Q, _ = torch.linalg.qr(forward(Z.transpose(1, 2)))
    B = adjoint(Q)  # (G, L, D) = Q^T F_c
    _, _, Vh = torch.linalg.svd(B, full_matrices=False)
    return Vh[:, :n_components], mean


def _ungroup(y: Tensor, feats: ImplicitFeatures, shared: bool) -> Tensor:
    """(G, M, P) -> (N, M, H, W), the inverse of ``_as_group_maps``."""
    N = feats.n_images
    H, W = feats.grid
    M = y.shape[1]
    if shared:
        return y[0].reshape(M, N, H, W).permute(1, 0, 2, 3)
    return y.reshape(N, M, H, W)


def pca_argmax(
    feats: ImplicitFeatures, n_components: int, *, shared: bool = False, random_state=None
) -> Tuple[Tensor, Tensor, Tensor]:
    """Label each pixel with the principal component of largest absolute projection.

    Returns
    -------
    labels : LongTensor of shape (N, H, W)
    components : Tensor of shape (G, K, D)
    mean : Tensor of shape (G, D)
    """
    comps, mean = implicit_pca(feats, n_components, shared=shared, random_state=random_state)
    # (N, K, H, W) minus the projection of the mean; G = 1 broadcasts over the batch
    proj = feats.dot(comps) - torch.einsum("gd,gkd->gk", mean, comps)[..., None, None]
    labels = proj.abs().argmax(1)
    return labels, comps, mean
