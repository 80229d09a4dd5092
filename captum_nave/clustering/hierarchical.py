"""Hierarchical Ward clustering of implicit features.

Small problems (at most ``max_direct`` pixels per group) run scikit-learn's
``AgglomerativeClustering(linkage="ward")`` on the explicit feature matrix, which is
copied to the CPU (scikit-learn has no GPU path). Larger problems -- full input
resolution, or a whole set of images -- first over-cluster the pixels with implicit
k-means into ``n_prototypes`` prototypes and then run Ward on the prototypes, each
weighted by its pixel count (weighted Ward: the merge cost of clusters a and b is
``n_a n_b / (n_a + n_b) ||c_a - c_b||^2``, the increase of within-cluster variance,
which is exactly what Ward on the underlying pixels would pay for merging those two
groups). Limit: pixels inside one prototype are never separated, so the result is
Ward on a k-means quantisation of the pixels, not on every pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..features import ImplicitFeatures
from .kmeans import implicit_kmeans

__all__ = ["ward", "weighted_ward"]


def weighted_ward(centers: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """Ward agglomeration of weighted points down to ``n_clusters`` groups.

    Parameters
    ----------
    centers : ndarray of shape (P, D)
    weights : ndarray of shape (P,)
        Positive point masses (pixel counts).
    n_clusters : int

    Returns
    -------
    ndarray of shape (P,), int
        Group id per point, 0..n_clusters-1 in order of first appearance.
    """
    c = np.asarray(centers, dtype=np.float64).copy()
    w = np.asarray(weights, dtype=np.float64).copy()
    P = c.shape[0]
    owner = np.arange(P)
    active = w > 0
    sq = (c * c).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * c @ c.T
    cost = (w[:, None] * w[None, :]) / np.maximum(w[:, None] + w[None, :], 1e-300) * np.maximum(d2, 0)
    cost[~active, :] = np.inf
    cost[:, ~active] = np.inf
    np.fill_diagonal(cost, np.inf)
    n_active = int(active.sum())
    while n_active > n_clusters:
        flat = int(np.argmin(cost))
        a, b = divmod(flat, P)
        if a > b:
            a, b = b, a
        wa, wb = w[a], w[b]
        c[a] = (wa * c[a] + wb * c[b]) / (wa + wb)
        w[a] = wa + wb
        w[b] = 0
        owner[owner == b] = a
        cost[b, :] = np.inf
        cost[:, b] = np.inf
        others = np.nonzero((w > 0) & (np.arange(P) != a))[0]
        diff = c[others] - c[a]
        new = w[others] * w[a] / (w[others] + w[a]) * (diff * diff).sum(1)
        cost[a, others] = new
        cost[others, a] = new
        n_active -= 1
    _, labels = np.unique(owner, return_inverse=True)
    # relabel by first appearance for a deterministic order
    order = {}
    out = np.empty(P, dtype=np.int64)
    for i, l in enumerate(labels):
        out[i] = order.setdefault(int(l), len(order))
    return out


def ward(
    feats: ImplicitFeatures,
    n_clusters: int,
    *,
    shared: bool = False,
    max_direct: int = 4096,
    n_prototypes: int = 256,
    random_state=None,
) -> Tensor:
    """Ward clustering of each image's pixels (or the batch's, if ``shared``).

    Returns
    -------
    LongTensor of shape (N, H, W) on the features' device.
    """
    from sklearn.cluster import AgglomerativeClustering

    N = feats.n_images
    H, W = feats.grid
    per_group = feats.n_pixels * (N if shared else 1)
    if per_group <= max_direct:
        groups = [None] if shared else list(range(N))
        out = []
        for g in groups:
            X = feats.materialize(g).double().cpu().numpy()
            lab = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(X)
            out.append(torch.as_tensor(lab, dtype=torch.long))
        labels = torch.cat(out).reshape(N, H, W)
        return labels.to(feats.device)
    n_proto = max(n_clusters, min(n_prototypes, per_group))
    km = implicit_kmeans(
        feats, n_proto, shared=shared, random_state=random_state, max_iter=20, init="random"
    )
    labels = torch.empty(N, H, W, dtype=torch.long)
    proto_labels = km.labels.cpu()
    for g in range(km.centers.shape[0]):
        lab_g = proto_labels if shared else proto_labels[g]
        counts = torch.bincount(lab_g.reshape(-1), minlength=n_proto).double().numpy()
        merged = weighted_ward(km.centers[g].double().cpu().numpy(), counts, n_clusters)
        mapped = torch.as_tensor(merged)[lab_g]
        if shared:
            labels = mapped
        else:
            labels[g] = mapped
    return labels.to(feats.device)
