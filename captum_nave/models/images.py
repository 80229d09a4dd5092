"""Reading, resizing and normalising images for a model."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from ..images import _parse_size, _resize, load_image

__all__ = [
    "SAMPLE_IMAGE_NAMES",
    "load_image",
    "normalize",
    "preprocess",
    "resize_images",
    "sample_images",
]

#: The scikit-image photos returned by :func:`sample_images`, in this order.
SAMPLE_IMAGE_NAMES: Tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket")


def sample_images() -> Dict[str, Tensor]:
    """The scikit-image photos chelsea (a cat), coffee, astronaut and rocket.

    Returns
    -------
    dict of str to Tensor of shape (3, H, W), float32 in [0, 1]
        Original resolutions (chelsea 300x451, coffee 400x600, astronaut 512x512,
        rocket 427x640).
    """
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise ImportError("sample_images needs scikit-image (pip install scikit-image)") from exc
    out: Dict[str, Tensor] = {}
    for key in SAMPLE_IMAGE_NAMES:
        arr = getattr(data, key)()
        out[key] = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return out


def _as_batch(images: Tensor, param: str = "images") -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"{param}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{param}: expected shape (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"{param}: expected a float tensor with values in [0, 1], got {images.dtype}")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(
            f"{param}: expected values in [0, 1] (not yet normalised), got range "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]"
        )
    return images


def resize_images(
    images: Tensor, size: Union[int, Tuple[int, int]], *, crop: bool = True
) -> Tensor:
    """Resize images in [0, 1] to the model's input size (no normalisation).

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W) or (3, H, W), float in [0, 1]
    size : int or (int, int)
        Output (H', W'); an int means square.
    crop : bool, default True
        ``True``: resize so that the image covers ``size`` with its aspect ratio kept
        (shorter side to fit), then take the centre crop - what ImageNet evaluation does
        (without its extra border crop). ``False``: resize the whole image to ``size``,
        distorting the aspect ratio but keeping everything in view.

    Returns
    -------
    Tensor of shape (N, 3, H', W'), float in [0, 1]
    """
    x = _as_batch(images)
    th, tw = _parse_size(size)  # type: ignore[misc]
    if not crop:
        return _resize(x, (th, tw))
    h, w = x.shape[-2:]
    s = max(th / h, tw / w)
    rh, rw = max(th, round(h * s)), max(tw, round(w * s))
    x = _resize(x, (rh, rw))
    top, left = (rh - th) // 2, (rw - tw) // 2
    return x[..., top : top + th, left : left + tw]


def normalize(images: Tensor, info: Mapping[str, Any]) -> Tensor:
    """``(images - mean) / std`` with the model's statistics from ``info``.

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W) or (3, H, W), float in [0, 1]
    info : mapping with ``"mean"`` and ``"std"`` (3 floats each)

    Returns
    -------
    Tensor of shape (N, 3, H, W)
    """
    x = _as_batch(images)
    mean = torch.as_tensor(info["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(info["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(
    images: Tensor,
    info: Mapping[str, Any],
    size: Optional[Union[int, Tuple[int, int]]] = None,
    *,
    crop: bool = True,
) -> Tensor:
    """Resize (and centre-crop) images in [0, 1] and normalise them for the model.

    ``normalize(resize_images(images, size, crop=crop), info)``.

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W) or (3, H, W), float in [0, 1]
    info : dict returned by :func:`load_model`
    size : int or (int, int), optional
        Default ``info["input_size"]``. NAVE works at any size; larger inputs give finer maps.
    crop : bool, default True
        See :func:`resize_images`.

    Returns
    -------
    Tensor of shape (N, 3, H', W'), float32
    """
    target = _parse_size(size) if size is not None else tuple(info["input_size"])
    return normalize(resize_images(images, target, crop=crop), info)  # type: ignore[arg-type]
