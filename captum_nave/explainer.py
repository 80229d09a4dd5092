"""``LayerClusterExplainer``: NAVE as a Captum layer attribution method."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr._utils.attribution import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from ._validation import (
    InvalidParameterError,
    check_bool,
    check_finite,
    check_float_dtype,
    check_images,
    check_int,
    check_int_pair,
    check_real,
    check_seed,
    model_float_dtype,
)
from .activations import (
    LayerSpec,
    capture_activations,
    layer_spec_list,
    resolve_layers,
)
from .adapters import get_adapter
from .clustering import BUILTIN_CLUSTERERS, check_grid_memory, check_grid_size, cluster
from .features import ImplicitFeatures
from .segments import relabel_by_area, resize_labels

__all__ = ["LayerClusterExplainer", "NaveResult"]

Resolution = Union[str, Tuple[int, int]]


@dataclass
class NaveResult:
    """Everything one NAVE run produced.

    Attributes
    ----------
    segments : LongTensor of shape (N, 1, H, W)
        Segment id per input pixel (nearest resize of ``grid_labels``; by patch geometry
        for a ViT's patch grid), a Captum
        ``feature_mask``. Ids are ordered by decreasing area (per image, or over the
        batch when ``shared``).
    grid_labels : LongTensor of shape (N, h, w)
        Segment id per pixel of the clustering grid.
    centroids : Tensor of shape (G, K, D)
        Mean Algorithm-1 feature of each segment (G = 1 if shared else N; rows of
        absent segments are NaN). ``D = sum(C_l)``.
    inertia : Tensor of shape (G,)
        Within-segment sum of squared distances to the centroids.
    n_clusters : LongTensor of shape (G,)
        K used per group (differs from the request only with ``n_clusters="auto"``).
    layer_names : list of str
    layer_shapes : list of (int, int, int)
        ``(C, h, w)`` of every layer's spatial activation.
    grid : (int, int)
        The clustering grid ``(h, w)``.
    config : dict
        The full configuration of the call.
    timings : dict
        Seconds spent in ``forward``, ``features``, ``clustering`` and ``total``.
    """

    segments: Tensor
    grid_labels: Tensor
    centroids: Tensor
    inertia: Tensor
    n_clusters: Tensor
    layer_names: List[str]
    layer_shapes: List[Tuple[int, int, int]]
    grid: Tuple[int, int]
    config: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)


class LayerClusterExplainer(LayerAttribution):
    r"""Neuro-Activated Vision Explanations (NAVE) for any list of layers.

    NAVE (Boubekki, Fadel & Mair, arXiv 2411.19700) explains what a frozen encoder
    has learned by clustering its activations: the activations of the selected layers
    are bicubic-upsampled to a common grid, every pixel's vector is L2-normalised per
    layer and weighted by ``1 / (1 + channels)``, the layers are concatenated and the
    pixels clustered into K groups. The cluster id per pixel is the explanation: a
    segmentation of the input into the parts the network processes alike.

    This implementation never builds the upsampled feature matrix (see
    :mod:`captum_nave.features`): k-means, PCA and Ward work on the low-resolution
    activations with exact interpolation operators, so the result equals Algorithm 1
    at a cost nearly independent of the grid resolution.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model (or a function calling it). Layer names need an ``nn.Module``.
    layers : module, str, int or a sequence of them
        Layers whose outputs are clustered: module objects, dotted names
        (``"layer4"``, ``"blocks.11"``, ``"blocks.-1"``) or ViT block indices (``-1``).
    device_ids : list of int, optional
        Captum's argument for DataParallel models (accepted for API compatibility).
    num_prefix_tokens : int, optional
        Number of non-patch tokens (CLS, distillation, registers) before the patch
        tokens of transformer layers. Default: read from the model's adapter
        (:func:`captum_nave.adapters.get_adapter`: timm ``num_prefix_tokens``, torch-hub
        ``num_register_tokens`` + CLS, Hugging Face configs, ...).
    patch_size : int or (int, int), optional
        Patch size of a ViT; default: read from the model's adapter. Inputs that are not a multiple of it: the grid is
        ``floor(H / p)`` if the model crops the remainder (timm's default strict
        patch embedding rejects such inputs; convolution-style embeddings crop) or
        ``ceil(H / p)`` if it pads (timm ``dynamic_img_pad=True``); the token count
        decides. Segment maps cover the full input: each pixel takes the
        label of the patch that covers it (the last patch for a cropped remainder).

    Examples
    --------
    >>> import torch, torchvision
    >>> from captum_nave import LayerClusterExplainer
    >>> model = torchvision.models.resnet18(weights=None).eval()
    >>> explainer = LayerClusterExplainer(model, ["layer3", "layer4"])
    >>> images = torch.randn(2, 3, 64, 96)
    >>> seg = explainer.attribute(images, n_clusters=4, random_state=0)
    >>> seg.shape, seg.dtype          # (N, 1, H, W) segment ids, a Captum feature_mask
    (torch.Size([2, 1, 64, 96]), torch.int64)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: Union[LayerSpec, Sequence[LayerSpec]],
        device_ids: Optional[List[int]] = None,
        *,
        num_prefix_tokens: Optional[int] = None,
        patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        model = forward_func if isinstance(forward_func, nn.Module) else getattr(forward_func, "__self__", None)
        specs = _layer_specs(layers)
        if model is None:
            if not all(isinstance(s, nn.Module) for s in specs):
                raise TypeError(
                    "layers: names and indices need forward_func to be an nn.Module; "
                    "pass module objects when forward_func is a plain function"
                )
            modules = list(specs)
        else:
            modules = resolve_layers(model, specs)
        LayerAttribution.__init__(self, forward_func, modules, device_ids)
        self.model: Optional[nn.Module] = model
        self.layers: List[nn.Module] = modules
        self.layer_names: List[str] = [self._name_of(s, m) for s, m in zip(specs, modules)]
        for j, (spec, module) in enumerate(zip(specs, modules)):
            for i in range(j):
                if modules[i] is module:
                    raise ValueError(
                        f"layers: expected distinct layers, got {_spec_text(specs[i])} and "
                        f"{_spec_text(spec)} (both the module {self.layer_names[i]!r})"
                    )
        num_prefix_tokens = check_int(num_prefix_tokens, "num_prefix_tokens", low=0, allow_none=True)
        adapter = get_adapter(model) if model is not None else None
        self.num_prefix_tokens = (
            num_prefix_tokens if num_prefix_tokens is not None
            else (adapter.num_prefix_tokens if adapter is not None else None)
        )
        if patch_size is not None:
            patch_size = check_int_pair(patch_size, "patch_size")
        self.patch_size = patch_size if patch_size is not None else (
            adapter.patch_size if adapter is not None else None
        )

    def _name_of(self, spec: LayerSpec, module: nn.Module) -> str:
        """Display name of a layer: the given name, else its dotted path in the model."""
        if isinstance(spec, str):
            return spec
        if self.model is not None:
            for name, m in self.model.named_modules():
                if m is module and name:
                    return name
        return type(module).__name__

    # ------------------------------------------------------------------ captum API
    @property
    def multiplies_by_inputs(self) -> bool:
        """NAVE does not multiply by the inputs."""
        return False

    def has_convergence_delta(self) -> bool:
        """NAVE has no convergence delta."""
        return False

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        n_clusters: Union[int, str] = 5,
        *,
        shared: bool = False,
        resolution: Resolution = "layer",
        clusterer: Union[str, Any] = "kmeans",
        random_state: Optional[Union[int, torch.Generator]] = None,
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        k_range: Sequence[int] = tuple(range(3, 11)),
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        interpolation: str = "bicubic",
        eps: float = 1e-8,
        dtype: Optional[torch.dtype] = None,
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""Segment the inputs by clustering the selected layers' activations.

        Parameters
        ----------
        inputs : Tensor of shape (N, C, H, W), or a tuple whose first element is one
            Images. With a tuple, the first tensor is the image; the others are passed
            to the model too.
        n_clusters : int or "auto"
            K, between 2 and the number of grid pixels. ``"auto"`` picks K per image
            (or for the batch when ``shared``) from ``k_range`` by the inertia-elbow
            rule of the authors' script.
        shared : bool
            False: every image is clustered on its own. True: all pixels of the batch
            are clustered together, so an id means the same concept in every image.
        resolution : "layer", "input" or (int, int)
            Clustering grid: the first selected layer's resolution (the paper's
            recommendation, default), the input resolution, or an explicit ``(h, w)``.
        clusterer : "kmeans", "ward", "pca", "auto" or estimator
            Grouping method (see :mod:`captum_nave.clustering`): exact implicit
            k-means with k-means++ seeding (default, on the inputs' device); Ward
            (CPU; exact up to 4096 pixels per group, prototype-based above); PCA
            argmax (appendix F); or any object with ``fit_predict`` (scikit-learn
            style, run on the explicit matrix copied to the CPU).
        random_state : int, torch.Generator or None
            Seed for k-means++ / PCA sketches. Same seed, same segments.
        n_init, max_iter, tol : int, int, float
            k-means restarts (best inertia kept) and Lloyd stopping rules.
        k_range : sequence of int
            Candidate K for ``n_clusters="auto"``.
        additional_forward_args : any, optional
            Extra arguments passed to the model after the inputs (Captum convention).
        attribute_to_layer_input : bool
            Cluster the layers' inputs instead of their outputs.
        interpolation : "bicubic" or "bilinear"
            Upsampling of the layers to the grid (Algorithm 1: bicubic).
        eps : float
            Pixels whose upsampled activation norm is <= eps get a zero feature.
        dtype : torch.dtype, optional
            Computation dtype of the features (default float32; float64 for
            bit-exact comparisons).

        Returns
        -------
        LongTensor of shape (N, 1, H, W), or a 1-tuple of it for tuple inputs
            Segment ids ``0..K-1`` at input resolution (nearest resize), ordered by
            decreasing area. Usable directly as a Captum ``feature_mask``.

        Examples
        --------
        >>> seg = explainer.attribute(images, n_clusters=5, random_state=0)
        >>> from captum.attr import FeatureAblation
        >>> scores = FeatureAblation(model).attribute(images, target=3, feature_mask=seg)
        """
        res = self._run(
            inputs, n_clusters, shared=shared, resolution=resolution, clusterer=clusterer,
            random_state=random_state, n_init=n_init, max_iter=max_iter, tol=tol,
            k_range=k_range, additional_forward_args=additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input, interpolation=interpolation,
            eps=eps, dtype=dtype, want_details=False,
        )
        return (res.segments,) if isinstance(inputs, tuple) else res.segments

    def explain(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        n_clusters: Union[int, str] = 5,
        **kwargs: Any,
    ) -> NaveResult:
        """Like :meth:`attribute` (same parameters) but return a :class:`NaveResult`.

        Returns
        -------
        NaveResult
            Segments, grid labels, centroids (G, K, D), inertia, layer shapes, grid,
            the full configuration and timings.
        """
        return self._run(inputs, n_clusters, want_details=True, **kwargs)

    # ------------------------------------------------------------------ internals
    def _run(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        n_clusters: Union[int, str],
        *,
        shared: bool = False,
        resolution: Resolution = "layer",
        clusterer: Union[str, Any] = "kmeans",
        random_state: Optional[Union[int, torch.Generator]] = None,
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        k_range: Sequence[int] = tuple(range(3, 11)),
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        interpolation: str = "bicubic",
        eps: float = 1e-8,
        dtype: Optional[torch.dtype] = None,
        want_details: bool = True,
    ) -> NaveResult:
        t0 = time.perf_counter()
        inputs, x = self._check_inputs(inputs, finite=False)  # the O(size) scan after the grid check
        auto = (isinstance(n_clusters, str) and n_clusters == "auto") or (isinstance(clusterer, str) and clusterer == "auto")
        k_range = _check_k_range(k_range)
        if auto:
            clusterer = "auto"
        else:
            n_clusters = _check_n_clusters(n_clusters)
        n_init, max_iter, tol = _check_options(clusterer, n_init, max_iter, tol, shared)
        eps, dtype, attribute_to_layer_input = _check_feature_options(
            eps, dtype, attribute_to_layer_input, interpolation
        )
        random_state = check_seed(random_state)
        resolution = check_resolution(resolution)
        self._check_device(x)

        feat_itemsize = torch.finfo(dtype or torch.promote_types(x.dtype, torch.float32)).bits // 8

        def check_grid(grid: Tuple[int, int], n_features: Optional[int] = None, itemsize: int = feat_itemsize) -> None:
            check_grid_size(clusterer, grid, x.shape[0], shared=shared, n_features=n_features, itemsize=itemsize)
            check_grid_memory(
                grid, x.shape[0], n_layers=len(self.layers), itemsize=itemsize, input_hw=tuple(x.shape[-2:]),
                device=x.device, param=f"resolution={resolution!r}",
            )

        if resolution != "layer":  # known before the forward pass: refuse before it
            check_grid(self._grid(resolution, [], tuple(x.shape[-2:])))
        check_finite(x, "inputs")
        feats, acts = self._features(
            inputs, x, resolution, additional_forward_args, attribute_to_layer_input,
            interpolation, eps, dtype, check_grid,
        )
        t1 = t0 + feats.timings["forward"]
        grid = feats.grid
        n_grid = grid[0] * grid[1] * (x.shape[0] if shared else 1)
        k_check = max(k_range) if auto else n_clusters
        if k_check > n_grid:
            raise ValueError(
                f"n_clusters: must be at most the number of grid pixels ({grid[0]}x{grid[1]}"
                f"{f' x {x.shape[0]} images' if shared else ''} = {n_grid}), got {k_check}"
            )
        t2 = time.perf_counter()
        outcome = cluster(
            feats, 0 if auto else int(n_clusters), clusterer, shared=shared,
            random_state=random_state, n_init=n_init, max_iter=max_iter, tol=tol, k_range=k_range,
        )
        grid_labels = relabel_by_area(outcome.labels, per_image=not shared)
        t3 = time.perf_counter()
        segments = self._segments(grid_labels, resolution, tuple(x.shape[-2:])).to(x.device)
        k_max = int(outcome.n_clusters.max())
        centroids, inertia = (
            _centroids_and_inertia(feats, grid_labels, k_max, shared) if want_details
            else (torch.empty(0), torch.empty(0))
        )
        t4 = time.perf_counter()
        config = {
            "layers": list(self.layer_names),
            "n_clusters": n_clusters,
            "shared": shared,
            "resolution": resolution if isinstance(resolution, str) else tuple(resolution),
            "clusterer": clusterer if isinstance(clusterer, str) else repr(clusterer),
            "random_state": random_state if not isinstance(random_state, torch.Generator) else "Generator",
            "n_init": n_init,
            "max_iter": max_iter,
            "tol": tol,
            "k_range": list(k_range),
            "interpolation": interpolation,
            "eps": eps,
            "dtype": str(feats.dtype),
            "attribute_to_layer_input": attribute_to_layer_input,
            "num_prefix_tokens": self.num_prefix_tokens,
            "patch_size": self.patch_size,
            "input_shape": tuple(x.shape),
        }
        return NaveResult(
            segments=segments,
            grid_labels=grid_labels,
            centroids=centroids,
            inertia=inertia,
            n_clusters=outcome.n_clusters,
            layer_names=list(self.layer_names),
            layer_shapes=[tuple(int(s) for s in a.shape[1:]) for a in acts],  # type: ignore[misc]
            grid=grid,
            config=config,
            timings={
                "forward": t1 - t0,
                "features": t2 - t1,
                "clustering": t3 - t2,
                "total": t4 - t0,
            },
        )

    def features(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        *,
        resolution: Resolution = "layer",
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        interpolation: str = "bicubic",
        eps: float = 1e-8,
        dtype: Optional[torch.dtype] = None,
    ) -> ImplicitFeatures:
        """Algorithm-1 features of the inputs on the clustering grid, kept implicit.

        One forward pass without gradients; see :class:`~captum_nave.features.ImplicitFeatures`
        for the operations it offers (dot products, weighted sums, explicit rows).
        Parameters as in :meth:`attribute`.

        Returns
        -------
        ImplicitFeatures
            For N images on the grid ``(h, w)``, ``dim = sum(C_l)``.
        """
        inputs, x = self._check_inputs(inputs)
        self._check_device(x)
        eps, dtype, attribute_to_layer_input = _check_feature_options(
            eps, dtype, attribute_to_layer_input, interpolation
        )
        resolution = check_resolution(resolution)
        feats, _ = self._features(
            inputs, x, resolution, additional_forward_args, attribute_to_layer_input,
            interpolation, eps, dtype,
        )
        return feats

    def _features(self, inputs, x, resolution, additional_forward_args, attribute_to_layer_input,
                  interpolation, eps, dtype, check_grid=None) -> Tuple[ImplicitFeatures, List[Tensor]]:
        """Forward pass and implicit features; ``check_grid(grid, n_features, itemsize)``
        runs between the two (the grid of ``resolution="layer"`` is known only then)."""
        t0 = time.perf_counter()
        acts = capture_activations(
            self.forward_func, self.layers, inputs,
            additional_forward_args=additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input,
            num_prefix=self.num_prefix_tokens, patch_size=self.patch_size,
            layer_labels=self.layer_names,
        )
        t1 = time.perf_counter()
        grid = self._grid(resolution, acts, tuple(x.shape[-2:]))
        if check_grid is not None:
            feat_dtype = dtype or torch.promote_types(acts[0].dtype, torch.float32)
            check_grid(grid, sum(int(a.shape[1]) for a in acts), torch.finfo(feat_dtype).bits // 8)
        feats = ImplicitFeatures(acts, grid, eps=eps, dtype=dtype, mode=interpolation)
        feats.timings = {"forward": t1 - t0, "features": time.perf_counter() - t1}
        return feats, acts

    def _check_inputs(
        self, inputs: Union[Tensor, Tuple[Tensor, ...]], finite: bool = True
    ) -> Tuple[Union[Tensor, Tuple[Tensor, ...]], Tensor]:
        """Check the images (the first tensor of a tuple) and convert them to the model's
        floating dtype; return the inputs to pass to the model and the images."""
        x = inputs[0] if isinstance(inputs, tuple) and len(inputs) > 0 else inputs
        x = check_images(x, "inputs", dtype=model_float_dtype(self.model), finite=finite)
        return ((x, *inputs[1:]) if isinstance(inputs, tuple) else x), x

    def _check_device(self, x: Tensor) -> None:
        if self.model is None:
            return
        p = next(self.model.parameters(), None)
        if p is None:
            p = next(self.model.buffers(), None)
        if p is not None and p.device != x.device:
            raise ValueError(
                f"inputs: expected a tensor on the model's device {p.device}, got a tensor on {x.device}"
            )

    def _segments(self, grid_labels: Tensor, resolution: Resolution, input_hw: Tuple[int, int]) -> Tensor:
        """Grid labels (N, h, w) -> segments (N, 1, H, W) at input resolution.

        A ViT's patch grid (``resolution="layer"`` with a known patch size, the grid
        ``floor`` or ``ceil`` of the input over the patch) maps by patch geometry, so
        every pixel gets the label of the patch that saw it, also when the input is
        not a multiple of the patch size; any other grid by pixel centres.
        """
        H, W = input_hw
        h, w = grid_labels.shape[-2:]
        cell = None
        if resolution == "layer" and self.patch_size is not None and (H, W) != (h, w):
            ph, pw = self.patch_size
            if h in (H // ph, -(-H // ph)) and w in (W // pw, -(-W // pw)):
                cell = (ph, pw)
        return resize_labels(grid_labels[:, None], (H, W), cell=cell)

    def _grid(self, resolution: Resolution, acts: List[Tensor], input_hw: Tuple[int, int]) -> Tuple[int, int]:
        resolution = check_resolution(resolution)
        if resolution == "layer":
            return (int(acts[0].shape[-2]), int(acts[0].shape[-1]))
        if resolution == "input":
            return (int(input_hw[0]), int(input_hw[1]))
        return resolution  # type: ignore[return-value]


def check_resolution(resolution: Any) -> Union[str, Tuple[int, int]]:
    """``"layer"``, ``"input"`` or a pair of positive ints ``(h, w)`` (returned as ints)."""
    if isinstance(resolution, str) and resolution in ("layer", "input"):
        return resolution
    if (
        isinstance(resolution, (tuple, list)) and len(resolution) == 2
        and all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in resolution)
    ):
        return (int(resolution[0]), int(resolution[1]))
    raise ValueError(
        f"resolution: expected 'layer', 'input' or a pair of positive ints (h, w), got {resolution!r}"
    )


def _spec_text(spec: LayerSpec) -> str:
    return type(spec).__name__ if isinstance(spec, nn.Module) else repr(spec)


def _layer_specs(layers: Any) -> List[LayerSpec]:
    return layer_spec_list(layers)


def _check_n_clusters(n_clusters: Any) -> int:
    if isinstance(n_clusters, str):
        raise ValueError(f"n_clusters: expected an int >= 2 or 'auto', got {n_clusters!r}")
    return check_int(n_clusters, "n_clusters", low=2, expected="an int >= 2 or 'auto'")  # type: ignore[return-value]


def _check_k_range(k_range: Sequence[int]) -> List[int]:
    msg = f"k_range: expected at least two ints >= 2, got {k_range!r}"
    try:
        ks = list(k_range)
    except TypeError:
        raise InvalidParameterError(msg) from None
    msg = f"k_range: expected at least two ints >= 2, got {ks!r}"
    if any(isinstance(k, bool) or not isinstance(k, Integral) for k in ks):
        raise InvalidParameterError(msg)
    if len(set(int(k) for k in ks)) < 2 or any(k < 2 for k in ks):
        raise ValueError(msg)
    return sorted(set(int(k) for k in ks))


def _check_options(clusterer: Any, n_init: Any, max_iter: Any, tol: Any, shared: Any) -> Tuple[int, int, float]:
    if isinstance(clusterer, str) and clusterer not in BUILTIN_CLUSTERERS:
        raise ValueError(
            f"clusterer: expected one of {', '.join(map(repr, BUILTIN_CLUSTERERS))} or an object "
            f"with fit_predict, got {clusterer!r}"
        )
    if not isinstance(clusterer, str) and not callable(getattr(clusterer, "fit_predict", None)):
        raise TypeError(
            f"clusterer: expected a name or an object with fit_predict(X), got {type(clusterer).__name__}"
        )
    n_init = check_int(n_init, "n_init", low=1)
    max_iter = check_int(max_iter, "max_iter", low=1)
    tol = check_real(tol, "tol", low=0.0)
    check_bool(shared, "shared")
    return n_init, max_iter, tol  # type: ignore[return-value]


def _check_feature_options(
    eps: Any, dtype: Any, attribute_to_layer_input: Any, interpolation: Any
) -> Tuple[float, Optional[torch.dtype], bool]:
    if not isinstance(interpolation, str) or interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation: expected 'bicubic' or 'bilinear', got {interpolation!r}")
    return (
        check_real(eps, "eps", low=0.0),  # type: ignore[return-value]
        check_float_dtype(dtype),
        check_bool(attribute_to_layer_input, "attribute_to_layer_input"),
    )


def _centroids_and_inertia(feats: ImplicitFeatures, labels: Tensor, k: int, shared: bool) -> Tuple[Tensor, Tensor]:
    """Segment means (G, K, D) and inertia (G,) from the closed form sum||f||^2 - sum n_k||c_k||^2."""
    sums, counts = feats.label_sums(labels, k, per_image=not shared)
    if shared:
        sums, counts = sums.unsqueeze(0), counts.unsqueeze(0)
        total = feats.sq_norms().sum().reshape(1)
    else:
        total = feats.sq_norms().sum((1, 2))
    cent = sums / counts.clamp_min(1).unsqueeze(-1)
    inertia = (total - (counts * cent.pow(2).sum(-1)).sum(-1)).clamp_min(0)
    cent = torch.where(counts.unsqueeze(-1) > 0, cent, torch.full_like(cent, float("nan")))
    return cent, inertia
