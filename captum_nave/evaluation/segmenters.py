"""Segmenters: image -> label map at the scale the CorLoc protocol runs at.

A *segmenter* is any callable ``segmenter(image) -> labels`` taking an RGB
``uint8`` array of shape (H, W, 3) at its original resolution and returning an
integer label map of shape (H', W') with ``H' >= H`` and ``W' >= W`` (the image
zero-padded at the bottom / right), plus a ``config()`` method returning a
JSON-serialisable description used to refuse resuming a run with different
settings. :class:`NaveSegmenter` wraps the core explainer; the baselines live
in :mod:`captum_nave.evaluation.baselines`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

from captum_nave._validation import check_int, check_int_pair
import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Segmenter",
    "NaveSegmenter",
    "padded_size",
    "prepare_image",
]

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@runtime_checkable
class Segmenter(Protocol):
    """What the runner needs from a method under evaluation."""

    def __call__(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        ...

    def config(self) -> Dict[str, Any]:  # pragma: no cover - protocol
        ...


def _pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    return check_int_pair(value, name)


def padded_size(height: int, width: int, multiple: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """Smallest ``(H', W') >= (height, width)`` that are multiples of ``multiple``."""
    mh, mw = _pair(multiple, "pad_multiple")
    return int(math.ceil(height / mh) * mh), int(math.ceil(width / mw) * mw)


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image: expected a numpy array (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image: expected shape (H, W, 3), got {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8 (values 0-255), got {image.dtype}")
    return image


def prepare_image(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pad_multiple: Union[int, Sequence[int]] = 1,
) -> torch.Tensor:
    """Normalise an RGB image and zero-pad it at the bottom / right.

    As the authors' script: no resizing, ``(x / 255 - mean) / std``, then zeros
    appended so that height and width are multiples of ``pad_multiple``.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    mean, std : sequence of 3 floats
        Per-channel normalisation (ImageNet by default).
    pad_multiple : int or (int, int), default 1
        Usually the ViT patch size.

    Returns
    -------
    x : Tensor of shape (1, 3, H', W'), float32
    """
    img = _check_image(image)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(3, 1, 1)
    if mean_t.numel() != 3 or std_t.numel() != 3:
        raise ValueError(f"mean/std: expected 3 values each, got {list(mean)} and {list(std)}")
    if torch.any(std_t <= 0):
        raise ValueError(f"std: expected positive values, got {list(std)}")
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    x = (x - mean_t) / std_t
    h, w = img.shape[:2]
    hp, wp = padded_size(h, w, pad_multiple)
    out = torch.zeros(1, 3, hp, wp, dtype=torch.float32)
    out[0, :, :h, :w] = x
    return out


class NaveSegmenter:
    """NAVE label maps of one image at a time, at the padded image size.

    Runs ``LayerClusterExplainer(model, layers).explain(x, n_clusters=...,
    random_state=...)`` on the normalised, zero-padded image and resizes the
    label map NEAREST to the padded size. The model is neither moved nor put
    in eval mode: pass it ready (e.g. ``model.eval()``); the input goes to the
    device of the model's first parameter unless ``device`` is given.

    Parameters
    ----------
    model : nn.Module
    layers : layer spec or sequence of layer specs
        As accepted by :class:`captum_nave.LayerClusterExplainer`.
    n_clusters : int or "auto", default 5
        K (the paper uses 5). ``"auto"`` picks K per image by the inertia-elbow rule
        over ``explain_kwargs["k_range"]`` (default 3..10).
    mean, std : sequence of 3 floats, default ImageNet
    pad_multiple : int or (int, int), optional
        Pad height / width to multiples of this. Default: the model's patch
        size if it has one (ViTs), else 1 (no padding; CNNs accept any size).
    random_state : int, default 0
        Seed of the clustering, the same for every image (so that sharded and
        unsharded runs agree).
    device : str or torch.device, optional
    explain_kwargs : mapping, optional
        Extra keyword arguments of ``explain`` (``clusterer``, ``resolution``, ...).
    explainer_kwargs : mapping, optional
        Extra keyword arguments of the explainer (``num_prefix_tokens``, ``patch_size``).
    name : str, optional
        Recorded in :meth:`config` (e.g. the model name).
    metadata : mapping, optional
        More JSON-serialisable facts recorded in :meth:`config` (e.g. a weights
        checksum), so that a resumed run refuses different weights.

    Examples
    --------
    >>> seg = NaveSegmenter(model.eval(), ["layer3", "layer4"], n_clusters=5)
    >>> labels = seg(image)            # (H', W') int64, H' >= image.shape[0]
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any,
        *,
        n_clusters: Union[int, str] = 5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pad_multiple: Optional[Union[int, Sequence[int]]] = None,
        random_state: int = 0,
        device: Optional[Union[str, torch.device]] = None,
        explain_kwargs: Optional[Mapping[str, Any]] = None,
        explainer_kwargs: Optional[Mapping[str, Any]] = None,
        name: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> None:
        from captum_nave.explainer import LayerClusterExplainer
        from captum_nave.activations import patch_size_of

        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not (isinstance(n_clusters, str) and n_clusters == "auto"):
            n_clusters = check_int(n_clusters, "n_clusters", low=2, expected="an int >= 2 or 'auto'")
        self.model = model
        self.layers = layers
        self.n_clusters = n_clusters
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        explainer_kwargs = dict(explainer_kwargs or {})
        if pad_multiple is None:
            patch = explainer_kwargs.get("patch_size") or patch_size_of(model)
            pad_multiple = patch if patch is not None else 1
        self.pad_multiple = _pair(pad_multiple, "pad_multiple")
        self.random_state = random_state
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.explain_kwargs = dict(explain_kwargs or {})
        self.name = name
        self.metadata = dict(metadata or {})
        self.explainer = LayerClusterExplainer(model, layers, **explainer_kwargs)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Label map of shape (H', W'), int64, for an RGB uint8 image (H, W, 3)."""
        from captum_nave.evaluation.corloc import _resize_nearest, as_label_map

        x = prepare_image(image, self.mean, self.std, self.pad_multiple).to(self.device)
        res = self.explainer.explain(
            x, n_clusters=self.n_clusters, random_state=self.random_state, **self.explain_kwargs
        )
        labels = as_label_map(res.segments[0])
        return _resize_nearest(labels, (int(x.shape[2]), int(x.shape[3])))

    def config(self) -> Dict[str, Any]:
        """JSON-serialisable settings (checked when a run is resumed)."""
        layers = self.layers if isinstance(self.layers, (list, tuple)) else [self.layers]
        return {
            "method": "nave",
            "name": self.name,
            "model": type(self.model).__name__,
            "layers": [x if isinstance(x, (str, int)) else type(x).__name__ for x in layers],
            "n_clusters": self.n_clusters,
            "mean": list(self.mean),
            "std": list(self.std),
            "pad_multiple": list(self.pad_multiple),
            "random_state": self.random_state,
            "explain_kwargs": {k: repr(v) for k, v in sorted(self.explain_kwargs.items())},
            "metadata": {k: self.metadata[k] for k in sorted(self.metadata)},
        }
