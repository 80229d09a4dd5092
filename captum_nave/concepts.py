"""``ConceptClusters``: NAVE clusters shared across a whole image set ("concepts").

A scikit-learn-style estimator that fits K concept centroids in the Algorithm-1
feature space of an explainer's layers by streaming mini-batch k-means over any
iterable of image batches (a tensor, a list, a ``DataLoader``). Memory is bounded by
one batch: every batch's features stay implicit (see :mod:`captum_nave.features`)
and only the K x D centroids and their counts persist between batches.

The update is the online-mean rule of mini-batch k-means (Sculley 2010; scikit-learn's
``MiniBatchKMeans``): every pixel of a batch is assigned to its nearest centroid and
each centroid moves to the running mean of all pixels ever assigned to it,
``c_k <- c_k + (S_k - n_k c_k) / N_k`` with ``S_k``, ``n_k`` the batch's sum and count
and ``N_k`` the total count. The centroids are seeded by k-means++ and a few Lloyd iterations on
the pixels of the first batch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._concepts_io import FORMAT, LOAD_LIMIT_BYTES, VERSION, read_concepts_file
from ._validation import InvalidParameterError, check_int, check_seed
from .clustering import check_grid_size
from .clustering.kmeans import implicit_kmeans, make_generator
from .explainer import LayerClusterExplainer, Resolution, check_resolution
from .features import ImplicitFeatures

__all__ = ["ConceptClusters", "LOAD_LIMIT_BYTES"]

_FORMAT, _VERSION = FORMAT, VERSION


def _batches(data: Any) -> Iterator[Tensor]:
    """Yield image tensors (N, C, H, W) from a tensor, or an iterable of batches.

    Items that are tuples / lists (``(images, labels)`` from a ``DataLoader``) or dicts
    with an ``"image"``/``"images"`` key contribute their image tensor.
    """
    if isinstance(data, Tensor):
        yield data
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data: expected a Tensor (N, C, H, W) or an iterable of image batches, got {type(data).__name__}"
        )
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        elif isinstance(item, dict):
            item = item.get("image", item.get("images"))
        if not isinstance(item, Tensor):
            raise TypeError(f"data: expected batches of image tensors, got an item of type {type(item).__name__}")
        yield item


class ConceptClusters:
    """K concepts shared across an image set, fitted by streaming mini-batch k-means.

    Parameters
    ----------
    explainer : LayerClusterExplainer
        Defines the model and layers whose activations are clustered.
    n_clusters : int
        Number of concepts K.
    resolution : "layer", "input" or (int, int)
        Clustering grid of every batch (see :meth:`LayerClusterExplainer.attribute`).
    n_epochs : int
        Passes over the data in :meth:`fit`.
    random_state : int or None
        Seed of the k-means++ seeding on the first batch.
    n_init : int
        Seedings of the first batch (k-means++ then ``init_max_iter`` Lloyd
        iterations each); the one with the lowest inertia on that batch is kept, as
        in scikit-learn's ``MiniBatchKMeans``. Concepts from k-means depend on the
        seeding: raise it (or compare a few ``random_state``) before naming concepts.
    init_max_iter : int
        Lloyd iterations of the k-means that seeds the centroids on the first batch
        (after k-means++). The mini-batch updates refine them, as in scikit-learn's
        ``MiniBatchKMeans``, so a full convergence on the first batch is not needed.
    progress : bool or None
        Show a progress bar; ``None`` (default) shows it only when stderr is a terminal.
    device : str or torch.device, optional
        Device the batches are moved to (default: the model's device).

    Attributes
    ----------
    cluster_centers_ : Tensor of shape (K, D)
        Concept centroids in feature space (``D = sum(C_l)``).
    counts_ : Tensor of shape (K,)
        Pixels assigned to each concept so far.
    n_features_in_ : int
        ``D``.
    layer_dims_ : list of int
        Channels of every layer (checked at predict time and when loading).
    n_steps_ : int
        Batches seen.
    inertia_ : float
        Sum of squared distances of the last batch's pixels to their concept.

    Examples
    --------
    >>> concepts = ConceptClusters(explainer, n_clusters=10, random_state=0).fit(loader)
    >>> seg = concepts.predict(images)   # (N, 1, H, W): ids consistent across images
    """

    def __init__(
        self,
        explainer: LayerClusterExplainer,
        n_clusters: int = 10,
        *,
        resolution: Resolution = "layer",
        n_epochs: int = 1,
        random_state: Optional[int] = None,
        n_init: int = 1,
        init_max_iter: int = 5,
        progress: Optional[bool] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        self.explainer = explainer
        self.n_clusters = n_clusters
        self.resolution = resolution
        self.n_epochs = n_epochs
        self.random_state = random_state
        self.n_init = n_init
        self.init_max_iter = init_max_iter
        self.progress = progress
        self.device = device

    # ------------------------------------------------------------------ helpers
    def _validate_params(self) -> None:
        if not isinstance(self.explainer, LayerClusterExplainer):
            raise TypeError(
                f"explainer: expected a LayerClusterExplainer, got {type(self.explainer).__name__}"
            )
        check_int(self.n_clusters, "n_clusters", low=2)
        check_int(self.n_epochs, "n_epochs", low=1)
        check_int(self.n_init, "n_init", low=1)
        check_int(self.init_max_iter, "init_max_iter", low=1)
        check_seed(self.random_state)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise InvalidParameterError(f"progress: expected a bool or None, got {self.progress!r}")
        check_resolution(self.resolution)

    def _device(self) -> Optional[torch.device]:
        if self.device is not None:
            return torch.device(self.device)
        model = self.explainer.model
        p = next(model.parameters(), None) if model is not None else None
        return p.device if p is not None else None

    def _features(self, images: Tensor) -> ImplicitFeatures:
        dev = self._device()
        if dev is not None:
            images = images.to(dev)
        feats = self.explainer.features(images, resolution=self.resolution)
        if hasattr(self, "layer_dims_") and feats.layer_dims != self.layer_dims_:
            raise ValueError(
                f"inputs: the explainer's layers give channels {feats.layer_dims}, but the concepts "
                f"were fitted on channels {self.layer_dims_}"
            )
        return feats

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("ConceptClusters: not fitted yet; call fit() or partial_fit() first")

    def _progress(self, it: Iterable, total: Optional[int]) -> Iterable:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc="concepts", unit="batch")

    # ------------------------------------------------------------------ estimator API
    def fit(self, data: Any) -> "ConceptClusters":
        """Fit the concepts on a tensor or an iterable of image batches.

        Parameters
        ----------
        data : Tensor of shape (N, C, H, W) or iterable of such batches
            ``(images, labels)`` tuples (a ``DataLoader``) are accepted.

        Returns
        -------
        self
        """
        self._validate_params()
        for attr in ("cluster_centers_", "counts_", "layer_dims_", "n_features_in_"):
            if hasattr(self, attr):
                delattr(self, attr)
        self.n_steps_ = 0
        total = len(data) if hasattr(data, "__len__") and not isinstance(data, Tensor) else None
        for _ in range(int(self.n_epochs)):
            for batch in self._progress(_batches(data), total):
                self.partial_fit(batch)
        if self.n_steps_ == 0:
            raise ValueError("data: expected at least one batch of images, got none")
        return self

    def partial_fit(self, images: Tensor) -> "ConceptClusters":
        """Update the concepts with one batch of images (N, C, H, W).

        The first call seeds the centroids with k-means++ and exact k-means on the
        batch's pixels (the batch must then hold at least ``n_clusters`` grid pixels).
        """
        self._validate_params()
        first = not hasattr(self, "cluster_centers_")
        if first:  # the seeding clusters the first batch's pixels together
            images, x = self.explainer._check_inputs(images, finite=False)
            res = check_resolution(self.resolution)
            if res != "layer":
                self._check_seeding_grid(self.explainer._grid(res, [], tuple(x.shape[-2:])), x.shape[0])
        feats = self._features(images)
        K = int(self.n_clusters)
        if first:
            self._check_seeding_grid(feats.grid, feats.n_images)
            n_pix = feats.n_images * feats.n_pixels
            if n_pix < K:
                raise ValueError(
                    f"n_clusters: the first batch has {n_pix} grid pixels, fewer than n_clusters={K}"
                )
            gen = make_generator(self.random_state, feats.device)
            km = implicit_kmeans(
                feats, K, shared=True, random_state=gen, n_init=int(self.n_init), max_iter=int(self.init_max_iter)
            )
            self.cluster_centers_ = km.centers[0].clone()
            counts = torch.bincount(km.labels.reshape(-1), minlength=K).to(feats.dtype)
            self.counts_ = counts
            self.layer_dims_ = feats.layer_dims
            self.n_features_in_ = feats.dim
            self.inertia_ = float(km.inertia[0])
            self.n_steps_ = getattr(self, "n_steps_", 0) + 1
            return self
        centers = self.cluster_centers_.to(device=feats.device, dtype=feats.dtype)
        labels, mind = self._assign(feats, centers)
        sums, n = feats.label_sums(labels, K, per_image=False)  # (K, D), (K,)
        counts = self.counts_.to(device=feats.device, dtype=feats.dtype) + n
        step = (sums - n.unsqueeze(1) * centers) / counts.clamp_min(1).unsqueeze(1)
        self.cluster_centers_ = centers + step
        self.counts_ = counts
        self.inertia_ = float(mind.sum())
        self.n_steps_ += 1
        return self

    def _check_seeding_grid(self, grid: Tuple[int, int], n_images: int) -> None:
        check_grid_size(
            "kmeans", grid, n_images, shared=True, param=f"resolution={self.resolution!r}",
            together="(the first batch, seeded together)", remedy="a smaller first batch",
        )

    def _assign(self, feats: ImplicitFeatures, centers: Tensor) -> Tuple[Tensor, Tensor]:
        """Nearest concept per grid pixel: labels (N, h, w) and squared distances."""
        d = self._sq_distances(feats, centers)
        mind, labels = d.min(1)
        return labels, mind

    @staticmethod
    def _sq_distances(feats: ImplicitFeatures, centers: Tensor) -> Tensor:
        dots = feats.dot(centers)  # (N, K, h, w)
        cn = centers.pow(2).sum(-1)[None, :, None, None]
        return (feats.sq_norms().unsqueeze(1) - 2 * dots + cn).clamp_min(0)

    def predict(self, images: Tensor) -> Tensor:
        """Concept id of every input pixel.

        Parameters
        ----------
        images : Tensor of shape (N, C, H, W)

        Returns
        -------
        LongTensor of shape (N, 1, H, W)
            Ids ``0..K-1`` refer to :attr:`cluster_centers_`, so they mean the same
            concept in every image (nearest resize from the grid).
        """
        self._check_fitted()
        images, x = self.explainer._check_inputs(images)
        feats = self._features(images)
        labels, _ = self._assign(feats, self.cluster_centers_.to(device=feats.device, dtype=feats.dtype))
        return self.explainer._segments(labels, check_resolution(self.resolution), tuple(x.shape[-2:])).to(x.device)

    def transform(self, images: Tensor) -> Tensor:
        """Distances of every grid pixel to every concept.

        Returns
        -------
        Tensor of shape (N, K, h, w)
            Euclidean distances on the clustering grid (not resized to the input).
        """
        self._check_fitted()
        images, _ = self.explainer._check_inputs(images)
        feats = self._features(images)
        centers = self.cluster_centers_.to(device=feats.device, dtype=feats.dtype)
        return self._sq_distances(feats, centers).sqrt()

    def fit_predict(self, data: Any) -> Tensor:
        """:meth:`fit` on ``data`` (a tensor), then :meth:`predict` on it."""
        if not isinstance(data, Tensor):
            raise TypeError("data: fit_predict needs a Tensor (N, C, H, W); use fit() then predict() for loaders")
        return self.fit(data).predict(data)

    def get_params(self, deep: bool = True) -> dict:
        """Constructor parameters (scikit-learn convention)."""
        return {
            "explainer": self.explainer, "n_clusters": self.n_clusters, "resolution": self.resolution,
            "n_epochs": self.n_epochs, "random_state": self.random_state,
            "n_init": self.n_init, "init_max_iter": self.init_max_iter, "progress": self.progress,
            "device": self.device,
        }

    def set_params(self, **params: Any) -> "ConceptClusters":
        """Set constructor parameters (scikit-learn convention)."""
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"set_params: unknown parameter {k!r}; valid: {', '.join(valid)}")
            setattr(self, k, v)
        return self

    # ------------------------------------------------------------------ persistence
    def _metadata(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "n_clusters": int(self.n_clusters),
            "n_features_in": int(self.n_features_in_),
            "layer_dims": [int(d) for d in self.layer_dims_],
            "layer_names": list(self.explainer.layer_names),
            "resolution": self.resolution if isinstance(self.resolution, str) else list(self.resolution),
            "n_steps": int(self.n_steps_),
            "model": type(self.explainer.model).__name__ if self.explainer.model is not None else None,
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the fitted concepts to ``path`` (``.npz``: arrays + JSON metadata, no pickle).

        The file is written to a temporary name and renamed, so an interrupted save
        never leaves a corrupt file.
        """
        self._check_fitted()
        path = os.fspath(path)
        meta = json.dumps(self._metadata()).encode("utf-8")
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                cluster_centers=self.cluster_centers_.detach().cpu().double().numpy(),
                counts=self.counts_.detach().cpu().double().numpy(),
                metadata=np.frombuffer(meta, dtype=np.uint8),
            )
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        explainer: LayerClusterExplainer,
        *,
        max_bytes: int = LOAD_LIMIT_BYTES,
        **params: Any,
    ) -> "ConceptClusters":
        """Read concepts written by :meth:`save` and attach them to ``explainer``.

        The file is not trusted: its zip directory and array headers are checked
        (names, dtypes, shapes, sizes) before any data is inflated, object arrays
        (pickles) are never loaded, and the metadata and the centres are validated.

        Parameters
        ----------
        path : str or PathLike
        explainer : LayerClusterExplainer
            Must have the layers the concepts were fitted on.
        max_bytes : int, default :data:`LOAD_LIMIT_BYTES` (256 MiB)
            Largest centres array accepted.
        **params
            Other constructor parameters (``resolution`` defaults to the saved one).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is damaged, not a captum-nave concepts file, holds objects,
            inconsistent or non-finite arrays, exceeds ``max_bytes``, or was fitted
            on other layers than the explainer's (the message names the file and the
            problem).
        """
        meta, centers, counts = read_concepts_file(path, max_bytes)
        if list(explainer.layer_names) != meta["layer_names"]:
            raise ValueError(
                f"explainer: the concepts were fitted on layers {meta['layer_names']}, "
                f"the explainer has {list(explainer.layer_names)}"
            )
        res = meta["resolution"]
        params.setdefault("resolution", res if isinstance(res, str) else tuple(res))
        obj = cls(explainer, n_clusters=meta["n_clusters"], **params)
        obj.cluster_centers_ = torch.as_tensor(centers, dtype=torch.float32)
        obj.counts_ = torch.as_tensor(counts, dtype=torch.float32)
        obj.layer_dims_ = list(meta["layer_dims"])
        obj.n_features_in_ = meta["n_features_in"]
        obj.n_steps_ = meta["n_steps"]
        return obj
