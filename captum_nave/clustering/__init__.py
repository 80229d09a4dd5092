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

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..features import MATERIALIZE_LIMIT_BYTES, ImplicitFeatures
from .auto_k import auto_kmeans
from .hierarchical import ward
from .kmeans import KMEANS_MAX_PIXELS, implicit_kmeans
from .pca import pca_argmax

__all__ = [
    "ClusterOutcome", "cluster", "check_grid_memory", "check_grid_size", "BUILTIN_CLUSTERERS", "KMEANS_MAX_PIXELS",
]

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
    param: str = "resolution",
    together: str = "(shared=True)",
    remedy: str = "shared=False",
    example: Optional[str] = None,
) -> None:
    """Refuse, before any work, a clustering grid that ``clusterer`` cannot handle.

    The limits are those of the code paths, not guesses: ``"kmeans"`` and ``"auto"``
    seed with ``torch.multinomial`` over the pixels of one clustering (an image, or the
    batch when ``shared``), which accepts at most :data:`KMEANS_MAX_PIXELS` = 2**24 of
    them; an estimator with ``fit_predict`` gets the explicit feature matrix of one
    clustering, at most :data:`~captum_nave.features.MATERIALIZE_LIMIT_BYTES` (checked
    when ``n_features`` is known). ``"ward"`` (implicit prototypes above 4096 pixels)
    and ``"pca"`` have no such limit; their memory grows with the grid.

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
    param, together, remedy, example : str
        Wording of the message: the parameter (and value) to name, what makes the
        images one clustering, the alternative to suggest, and an example of a valid
        grid.

    Raises
    ------
    ValueError
        Naming ``param``, the grid, its size and the limit.
    """
    h, w = int(grid[0]), int(grid[1])
    n = int(n_images) if shared else 1
    pixels = h * w * n
    where = f"{n} images x {h}x{w} = {pixels} pixels {together}" if n > 1 else f"{h}x{w} = {pixels} pixels"
    if isinstance(clusterer, str):
        if clusterer in ("kmeans", "auto") and pixels > KMEANS_MAX_PIXELS:
            example = example or f"'layer' or (h, w) with h * w <= {KMEANS_MAX_PIXELS}"
            raise ValueError(
                f"{param}: a clustering grid of {where} is more than k-means can seed (at most "
                f"{KMEANS_MAX_PIXELS} = 2**24 pixels per clustering, the limit of torch.multinomial); "
                f"choose a coarser resolution, e.g. {example}{f', or {remedy}' if n > 1 else ''}"
            )
        return
    if n_features is not None:
        size = pixels * int(n_features) * int(itemsize)
        if size > MATERIALIZE_LIMIT_BYTES:
            raise ValueError(
                f"clusterer: {type(clusterer).__name__} runs on the explicit feature matrix, which for a "
                f"grid of {where} x {n_features} features takes {size / 1e9:.1f} GB, more than the "
                f"{MATERIALIZE_LIMIT_BYTES / 1e9:.1f} GB limit (captum_nave.features.MATERIALIZE_LIMIT_BYTES); "
                "choose a coarser resolution or an implicit clusterer ('kmeans', 'ward', 'pca')"
            )


def check_grid_memory(
    grid: Tuple[int, int],
    n_images: int,
    *,
    n_layers: int,
    itemsize: int = 4,
    input_hw: Optional[Tuple[int, int]] = None,
    device: Any = None,
    param: str = "resolution",
) -> None:
    """Refuse a clustering whose per-pixel state cannot fit in the device's free memory.

    Whatever the clusterer, a NAVE run keeps per grid pixel at least its label and the
    relabelling's inverse index (2 x 8 bytes), one scale per layer and the squared norm
    (``(n_layers + 1) * itemsize``), and per input pixel the int64 segment map. That
    lower bound is compared with the memory available now (``MemAvailable`` of
    ``/proc/meminfo`` on the CPU, ``torch.cuda.mem_get_info`` on a GPU); nothing is
    refused when the available memory is unknown.

    Raises
    ------
    ValueError
        Naming ``param``, the grid, the memory needed and the memory available.
    """
    h, w = int(grid[0]), int(grid[1])
    n = int(n_images)
    need = n * h * w * (16 + (int(n_layers) + 1) * int(itemsize))
    if input_hw is not None:
        need += n * int(input_hw[0]) * int(input_hw[1]) * 8
    avail = _available_bytes(device)
    if avail is not None and need > avail:
        batch = f"{n} x " if n > 1 else ""
        raise ValueError(
            f"{param}: a clustering grid of {batch}{h}x{w} pixels needs at least {need / 1e9:.1f} GB for its "
            f"per-pixel state (labels, per-layer scales, norms, the segment map), more than the "
            f"{avail / 1e9:.1f} GB available on {torch.device(device) if device is not None else 'cpu'}; "
            "choose a coarser resolution or fewer images per call"
        )


def _available_bytes(device: Any) -> Optional[int]:
    """Free memory of ``device`` in bytes, or None when it cannot be read."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except RuntimeError:
            return None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


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
