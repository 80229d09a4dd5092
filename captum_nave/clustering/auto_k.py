"""Automatic choice of K by the inertia-elbow rule of the NAVE authors' script.

k-means is run for every K in ``k_range`` (3..10 by default); for consecutive values
the relative drop of inertia ``(I[K-1] - I[K]) / I[K-1]`` is computed and the K that
ends the largest drop is chosen. Per-image clustering chooses K per image.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from ..features import ImplicitFeatures
from .kmeans import KMeansResult, implicit_kmeans, make_generator

__all__ = ["select_k_by_inertia_drop", "auto_kmeans"]


def select_k_by_inertia_drop(ks: Sequence[int], inertias: Tensor) -> Tensor:
    """Pick K after the largest relative inertia drop.

    Parameters
    ----------
    ks : sequence of int, increasing, length >= 2
    inertias : Tensor of shape (len(ks), G)

    Returns
    -------
    LongTensor of shape (G,): the chosen index into ``ks`` per group.
    """
    prev, nxt = inertias[:-1], inertias[1:]
    drop = (prev - nxt) / prev.clamp_min(torch.finfo(inertias.dtype).tiny)
    return drop.argmax(0) + 1


def auto_kmeans(
    feats: ImplicitFeatures,
    k_range: Sequence[int] = tuple(range(3, 11)),
    *,
    shared: bool = False,
    n_init: int = 1,
    random_state=None,
    **kwargs,
) -> Tuple[KMeansResult, Tensor]:
    """k-means with K chosen per group by :func:`select_k_by_inertia_drop`.

    Returns
    -------
    result : KMeansResult
        Labels of the chosen K per group (centres padded to max(k_range) with NaN rows).
    chosen_k : LongTensor of shape (G,)
    """
    ks = sorted(int(k) for k in k_range)
    if len(ks) < 2 or ks[0] < 2:
        raise ValueError(f"k_range: expected at least two values >= 2, got {list(k_range)}")
    gen = make_generator(random_state, feats.device)
    runs = [
        implicit_kmeans(feats, k, shared=shared, n_init=n_init, random_state=gen, **kwargs) for k in ks
    ]
    inertias = torch.stack([r.inertia for r in runs])  # (len(ks), G)
    idx = select_k_by_inertia_drop(ks, inertias)
    G = inertias.shape[1]
    kmax = ks[-1]
    labels = torch.empty_like(runs[0].labels)
    centers = torch.full((G, kmax, feats.dim), float("nan"), dtype=feats.dtype, device=feats.device)
    inertia = torch.empty(G, dtype=feats.dtype, device=feats.device)
    for g in range(G):
        r = runs[int(idx[g])]
        if shared:
            labels = r.labels
        else:
            labels[g] = r.labels[g]
        k = r.centers.shape[1]
        centers[g, :k] = r.centers[g]
        inertia[g] = r.inertia[g]
    chosen = torch.tensor([ks[int(i)] for i in idx], device=feats.device)
    return KMeansResult(labels, centers, inertia, 0), chosen
