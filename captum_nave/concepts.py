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

Under ``torch.distributed`` (``torchrun``; see :mod:`captum_nave.distributed`) every
rank streams its own part of the data and the fit is one global mini-batch k-means:
global batch ``t`` is the union of the ranks' ``t``-th batches (in rank order). The
first global batch's features are gathered on rank 0, which seeds the centroids
exactly as a single process would on that batch and broadcasts them; afterwards the
batch statistics ``S_k``, ``n_k`` and the inertia are all-reduced, so every rank
applies the same update and holds the same centroids. The result equals the
single-process fit over the same global batches (up to the order of floating-point
sums), whatever the number of ranks.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import distributed as dist_utils
from ._concepts_io import FORMAT, LOAD_LIMIT_BYTES, VERSION, read_concepts_file
from ._validation import InvalidParameterError, check_int, check_seed
from .clustering import check_grid_size
from .clustering.kmeans import implicit_kmeans, make_generator
from .explainer import LayerClusterExplainer, Resolution, check_resolution
from .features import ImplicitFeatures, LayerFeatures, interpolation_matrix

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
    distributed : "auto", True or False
        Fit across the processes of the default ``torch.distributed`` process group:
        ``"auto"`` (default) when one is initialised with more than one process,
        ``True`` to require it, ``False`` for an independent fit in every process.
        In a distributed fit, :meth:`fit` and :meth:`partial_fit` are collectives
        (every rank calls them, with its own part of the data; a rank whose loader is
        exhausted earlier simply contributes nothing to the later batches);
        :meth:`predict` and :meth:`transform` run on each rank alone; :meth:`save`
        writes on rank 0 only.

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
        Sum of squared distances of the last (global) batch's pixels to their concept.
    world_size_ : int
        Processes that took part in the fit (1 unless distributed).

    Examples
    --------
    >>> concepts = ConceptClusters(explainer, n_clusters=10, random_state=0).fit(loader)
    >>> seg = concepts.predict(images)   # (N, 1, H, W): ids consistent across images

    Under ``torchrun --nproc-per-node G script.py`` (model on ``cuda:LOCAL_RANK``):

    >>> from torch.utils.data import DataLoader, DistributedSampler
    >>> sampler = DistributedSampler(dataset, shuffle=False)   # this rank's images
    >>> loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    >>> concepts = ConceptClusters(explainer, n_clusters=10, random_state=0).fit(loader)
    >>> concepts.save("concepts.npz")   # rank 0 writes; the centroids are the same on every rank
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
        distributed: Union[bool, str] = "auto",
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
        self.distributed = distributed

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
        if not (isinstance(self.distributed, bool) or self.distributed == "auto"):
            raise InvalidParameterError(f"distributed: expected 'auto', True or False, got {self.distributed!r}")

    def _world(self) -> int:
        """Processes taking part in the fit: the default process group's size, or 1."""
        if self.distributed is False:
            return 1
        if not dist_utils.is_initialized():
            if self.distributed is True:
                raise RuntimeError(
                    "distributed: True requires an initialised torch.distributed process group "
                    "(start with torchrun and call captum_nave.distributed.init_distributed() or "
                    "torch.distributed.init_process_group()); got none"
                )
            return 1
        return dist_utils.get_world_size()

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
        if not show or not dist_utils.is_main_process():
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
        world = self._world()
        for attr in ("cluster_centers_", "counts_", "layer_dims_", "n_features_in_"):
            if hasattr(self, attr):
                delattr(self, attr)
        self.n_steps_ = 0
        total = len(data) if hasattr(data, "__len__") and not isinstance(data, Tensor) else None
        for _ in range(int(self.n_epochs)):
            batches = iter(self._progress(_batches(data), total))
            while True:
                try:
                    images: Optional[Tensor] = next(batches, None)
                    error: Optional[BaseException] = None
                except Exception as exc:  # a bad item: every rank must learn of it
                    if world == 1:
                        raise
                    images, error = None, exc
                if not self._step(images, world, error):
                    break
        if self.n_steps_ == 0:
            raise ValueError("data: expected at least one batch of images, got none")
        return self

    def partial_fit(self, images: Optional[Tensor]) -> "ConceptClusters":
        """Update the concepts with one batch of images (N, C, H, W).

        The first call seeds the centroids with k-means++ and exact k-means on the
        batch's pixels (the batch must then hold at least ``n_clusters`` grid pixels).
        In a distributed fit this is a collective: every rank calls it once per global
        batch with its own images, or with ``None`` when it has none for this batch.
        """
        self._validate_params()
        world = self._world()
        if images is None and world == 1:
            raise TypeError("images: expected a Tensor (N, C, H, W), got None")
        self._step(images, world, None)
        return self

    def _step(self, images: Optional[Tensor], world: int, error: Optional[BaseException]) -> bool:
        """One (global) mini-batch; False when no rank had a batch."""
        feats: Optional[ImplicitFeatures] = None
        if images is not None and error is None:
            try:
                if not hasattr(self, "cluster_centers_"):
                    images = self._check_first_batch(images)
                feats = self._features(images)
            except Exception as exc:
                if world == 1:
                    raise
                error = exc
        if world == 1:
            if feats is None:
                return False
        else:
            dist_utils.check_all_ok(error)
            active = dist_utils.all_reduce(torch.tensor([0.0 if feats is None else 1.0]))
            if float(active[0]) == 0:
                return False
        self.world_size_ = world
        if not hasattr(self, "cluster_centers_"):
            self._seed(feats, world)
        else:
            self._update(feats, world)
        self.n_steps_ = getattr(self, "n_steps_", 0) + 1
        return True

    def _check_first_batch(self, images: Tensor) -> Tensor:
        """The seeding clusters the first batch's pixels together: refuse a grid too large for it early."""
        images, x = self.explainer._check_inputs(images, finite=False)
        res = check_resolution(self.resolution)
        if res != "layer":
            self._check_seeding_grid(self.explainer._grid(res, [], tuple(x.shape[-2:])), x.shape[0])
        return images

    def _seed_state(self, feats: ImplicitFeatures) -> Dict[str, Any]:
        """k-means++ and a few Lloyd iterations on one batch: centroids, counts, inertia."""
        self._check_seeding_grid(feats.grid, feats.n_images)  # distributed: the whole first global batch
        K = int(self.n_clusters)
        n_pix = feats.n_images * feats.n_pixels
        if n_pix < K:
            raise ValueError(f"n_clusters: the first batch has {n_pix} grid pixels, fewer than n_clusters={K}")
        gen = make_generator(self.random_state, feats.device)
        km = implicit_kmeans(
            feats, K, shared=True, random_state=gen, n_init=int(self.n_init), max_iter=int(self.init_max_iter)
        )
        return {
            "centers": km.centers[0].clone(),
            "counts": torch.bincount(km.labels.reshape(-1), minlength=K).to(feats.dtype),
            "inertia": float(km.inertia[0]),
            "layer_dims": feats.layer_dims,
            "dim": feats.dim,
        }

    def _seed(self, feats: Optional[ImplicitFeatures], world: int) -> None:
        """Seed on the first (global) batch; in a distributed fit rank 0 seeds on the gathered batch."""
        if world == 1:
            assert feats is not None
            state = self._seed_state(feats)
            device = feats.device
        else:
            whole = _gather_features(feats, self._device())
            device = feats.device if feats is not None else (self._device() or torch.device("cpu"))

            def seed_on_main() -> Dict[str, Any]:
                assert whole is not None
                st = self._seed_state(whole)
                st["centers"], st["counts"] = st["centers"].cpu(), st["counts"].cpu()
                return st

            state = dist_utils.run_on_main(seed_on_main)
        self.cluster_centers_ = state["centers"].to(device)
        self.counts_ = state["counts"].to(device)
        self.layer_dims_ = list(state["layer_dims"])
        self.n_features_in_ = int(state["dim"])
        self.inertia_ = float(state["inertia"])

    def _update(self, feats: Optional[ImplicitFeatures], world: int) -> None:
        """Online-mean update with the (all-reduced) batch sums, counts and inertia."""
        K = int(self.n_clusters)
        if feats is not None:
            centers = self.cluster_centers_.to(device=feats.device, dtype=feats.dtype)
            labels, mind = self._assign(feats, centers)
            sums, n = feats.label_sums(labels, K, per_image=False)  # (K, D), (K,)
            inertia = mind.sum()
        else:  # a rank without a batch this time contributes nothing
            centers = self.cluster_centers_
            sums, n = torch.zeros_like(centers), centers.new_zeros(K)
            inertia = centers.new_zeros(())
        if world > 1:
            packed = dist_utils.all_reduce(torch.cat([sums.reshape(-1), n, inertia.reshape(1)]))
            sums, n, inertia = packed[: sums.numel()].reshape(sums.shape), packed[sums.numel() : -1], packed[-1]
        counts = self.counts_.to(device=centers.device, dtype=centers.dtype) + n
        step = (sums - n.unsqueeze(1) * centers) / counts.clamp_min(1).unsqueeze(1)
        self.cluster_centers_ = centers + step
        self.counts_ = counts
        self.inertia_ = float(inertia)

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
            "device": self.device, "distributed": self.distributed,
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

        The file is written to a temporary file in the same folder and renamed
        (:func:`captum_nave.files.atomic_write`), so an interrupted save never leaves a
        corrupt file, nor a temporary one. After a distributed fit (every rank holds the
        same centroids) only rank 0 writes; the other ranks return at once without
        waiting, so ``if rank == 0: save(...)`` works as well (add a
        :func:`~captum_nave.distributed.barrier` before other ranks read the file).

        Raises
        ------
        ValueError
            ``path`` is a folder.
        FileNotFoundError
            The folder of ``path`` does not exist.
        """
        from captum_nave.files import atomic_write

        self._check_fitted()
        if getattr(self, "world_size_", 1) > 1 and not dist_utils.is_main_process():
            return
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"path: {path!r} is a folder; expected a file name such as {os.path.join(path, 'concepts.npz')!r}")
        meta = json.dumps(self._metadata()).encode("utf-8")
        with atomic_write(path, "wb") as fh:
            np.savez(
                fh,
                cluster_centers=self.cluster_centers_.detach().cpu().double().numpy(),
                counts=self.counts_.detach().cpu().double().numpy(),
                metadata=np.frombuffer(meta, dtype=np.uint8),
            )

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


def _gather_features(feats: Optional[ImplicitFeatures], device: Optional[torch.device]) -> Optional[ImplicitFeatures]:
    """The features of every rank's batch, concatenated in rank order, on rank 0 (None elsewhere).

    A collective. A rank without a batch passes ``None`` and contributes no image.
    The ranks' batches must agree on the grid, the layers and the dtype, as one
    concatenated batch would; otherwise every rank raises the same ``ValueError``.
    """
    header = None
    if feats is not None:
        header = {
            "grid": list(feats.grid), "shapes": [list(l.act.shape[1:]) for l in feats.layers],
            "dtype": str(feats.dtype).replace("torch.", ""), "mode": feats.mode, "eps": feats.eps,
        }
    headers = dist_utils.all_gather_object(header)
    present = [(r, h) for r, h in enumerate(headers) if h is not None]
    r0, ref = present[0]
    for r, h in present[1:]:
        if h != ref:
            raise ValueError(
                f"inputs: the ranks' batches must give features of the same grid, layers and dtype to be "
                f"clustered together; rank {r0} has {ref}, rank {r} has {h}"
            )
    dtype = getattr(torch, ref["dtype"])
    dev = feats.device if feats is not None else (device or torch.device("cpu"))
    H, W = ref["grid"]
    gathered: List[List[Optional[List[Tensor]]]] = []
    for i, (c, h, w) in enumerate(ref["shapes"]):
        if feats is not None:
            layer = feats.layers[i]
            local = [layer.act, layer.scale, layer.sq_norm]
        else:
            local = [
                torch.zeros(0, c, h, w, dtype=dtype, device=dev),
                torch.zeros(0, H, W, dtype=dtype, device=dev),
                torch.zeros(0, H, W, dtype=dtype, device=dev),
            ]
        gathered.append([dist_utils.gather(t.to(dtype)) for t in local])
    if not dist_utils.is_main_process():
        return None
    layers = []
    for (c, h, w), (acts, scales, sqs) in zip(ref["shapes"], gathered):
        layers.append(
            LayerFeatures(
                torch.cat(acts),
                interpolation_matrix(h, H, mode=ref["mode"], device=dev, dtype=dtype),
                interpolation_matrix(w, W, mode=ref["mode"], device=dev, dtype=dtype),
                torch.cat(scales), torch.cat(sqs),
            )
        )
    return ImplicitFeatures.from_layers(layers, (H, W), eps=ref["eps"], mode=ref["mode"])
