"""Clustering of implicit Algorithm-1 features (third step of the NAVE data flow).

:func:`cluster` dispatches on the ``clusterer`` argument:

``"kmeans"`` (default)
    exact k-means with k-means++ seeding on the implicit features, on the features'
    device (:mod:`.kmeans`);
``"ward"``
    hierarchical Ward (:mod:`.hierarchical`; CPU, via scikit-learn or prototypes);
``"pca"``
    PCA with K components and per-pixel argmax of the absolute projection (paper
    appendix F; :mod:`.pca`);
``"auto"``
    k-means with K chosen by the inertia-elbow rule (:mod:`.auto_k`);
any object with ``fit_predict(X)``
    a scikit-learn-style estimator run on the explicit feature matrix, copied to the
    CPU as a NumPy array (``sklearn.base.clone`` is used per image when available).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._memory import check_grid_memory
from ..features import MATERIALIZE_LIMIT_BYTES, ImplicitFeatures
from .auto_k import auto_kmeans
from .hierarchical import ward
from .kmeans import implicit_kmeans
from .pca import pca_argmax

__all__ = ["ClusterOutcome", "cluster", "check_grid_memory", "check_grid_size", "BUILTIN_CLUSTERERS"]

BUILTIN_CLUSTERERS = ("kmeans", "ward", "pca", "auto")


@dataclass
class ClusterOutcome:
    """Labels on the grid and the K used per group (G = 1 if shared else N)."""

    labels: Tensor  # (N, H, W) int64
    n_clusters: Tensor  # (G,) int64
    n_iter: Optional[int] = None


def cluster(
    feats: ImplicitFeatures,
    n_clusters: int,
    clusterer: Union[str, Any] = "kmeans",
    *,
    shared: bool = False,
    random_state=None,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    k_range: Sequence[int] = tuple(range(3, 11)),
) -> ClusterOutcome:
    """Cluster the grid pixels of ``feats``; see the module docstring for ``clusterer``."""
    G = 1 if shared else feats.n_images
    dev = feats.device
    ks = torch.full((G,), n_clusters, dtype=torch.long, device=dev)
    if isinstance(clusterer, str):
        if clusterer == "kmeans":
            r = implicit_kmeans(
                feats, n_clusters, shared=shared, n_init=n_init, max_iter=max_iter, tol=tol,
                random_state=random_state,
            )
            return ClusterOutcome(r.labels, ks, r.n_iter)
        if clusterer == "ward":
            return ClusterOutcome(ward(feats, n_clusters, shared=shared, random_state=random_state), ks)
        if clusterer == "pca":
            labels, _, _ = pca_argmax(feats, n_clusters, shared=shared, random_state=random_state)
            return ClusterOutcome(labels, ks)
        if clusterer == "auto":
            r, chosen = auto_kmeans(
                feats, k_range, shared=shared, n_init=n_init, random_state=random_state,
                max_iter=max_iter, tol=tol,
            )
            return ClusterOutcome(r.labels, chosen)
        raise ValueError(
            f"clusterer: expected one of {', '.join(map(repr, BUILTIN_CLUSTERERS))} or an object "
            f"with fit_predict, got {clusterer!r}"
        )
    if not callable(getattr(clusterer, "fit_predict", None)):
        raise TypeError(
            "clusterer: expected a name or an object with a fit_predict(X) method, "
            f"got {type(clusterer).__name__}"
        )
    return ClusterOutcome(_run_estimator(feats, clusterer, shared), ks)


def check_grid_size(
    clusterer: Union[str, Any],
    grid: Tuple[int, int],
    n_images: int = 1,
    *,
    shared: bool = False,
    n_features: Optional[int] = None,
    itemsize: int = 4,
) -> None:
    """Refuse, before any work, an estimator's explicit feature matrix that is too large.

    An estimator with ``fit_predict`` gets the explicit feature matrix of one clustering
    (an image, or the batch when ``shared``), at most
    :data:`~captum_nave.features.MATERIALIZE_LIMIT_BYTES` (checked when ``n_features``
    is known). The implicit clusterers (``"kmeans"``, ``"auto"``, ``"ward"``, ``"pca"``)
    have no limit on the number of pixels: their per-pixel memory is checked by
    :func:`check_grid_memory`.

    Parameters
    ----------
    clusterer : str or estimator
    grid : (int, int)
        Clustering grid ``(h, w)``.
    n_images : int
        Images in the batch (they form one clustering when ``shared``).
    shared : bool
    n_features : int, optional
        Feature dimension ``D`` (known after the forward pass).
    itemsize : int
        Bytes per feature value.

    Raises
    ------
    ValueError
        Naming the estimator, the grid, the matrix size and the limit.
    """
    if isinstance(clusterer, str) or n_features is None:
        return
    h, w = int(grid[0]), int(grid[1])
    n = int(n_images) if shared else 1
    pixels = h * w * n
    where = f"{n} images x {h}x{w} = {pixels} pixels (shared=True)" if n > 1 else f"{h}x{w} = {pixels} pixels"
    size = pixels * int(n_features) * int(itemsize)
    if size > MATERIALIZE_LIMIT_BYTES:
        raise ValueError(
            f"clusterer: {type(clusterer).__name__} runs on the explicit feature matrix, which for a "
            f"grid of {where} x {n_features} features takes {size / 1e9:.1f} GB, more than the "
            f"{MATERIALIZE_LIMIT_BYTES / 1e9:.1f} GB limit (captum_nave.features.MATERIALIZE_LIMIT_BYTES); "
            "choose a coarser resolution or an implicit clusterer ('kmeans', 'ward', 'pca')"
        )


def _run_estimator(feats: ImplicitFeatures, estimator: Any, shared: bool) -> Tensor:
    try:
        from sklearn.base import clone
    except ImportError:  # pragma: no cover
        clone = None  # type: ignore[assignment]
    N = feats.n_images
    H, W = feats.grid
    groups = [None] if shared else list(range(N))
    out = []
    for g in groups:
        est = estimator
        if clone is not None and hasattr(estimator, "get_params"):
            est = clone(estimator)
        X = feats.materialize(g).cpu().numpy()
        lab = torch.as_tensor(est.fit_predict(X), dtype=torch.long).reshape(-1)
        if lab.numel() != X.shape[0]:
            raise ValueError(
                f"clusterer: fit_predict returned {lab.numel()} labels for {X.shape[0]} pixels"
            )
        out.append(lab)
    return torch.cat(out).reshape(N, H, W).to(feats.device)
