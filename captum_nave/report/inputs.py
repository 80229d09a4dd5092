"""The report's inputs checked and put in one form: images, models, sizes, boxes, class names."""

from __future__ import annotations

import os
from numbers import Integral
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_nave._validation import InvalidParameterError, check_int_pair, check_seed

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- input parsing
def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _parse_images(images: Any, image_names: Optional[Sequence[str]]) -> Tuple[List[Tensor], List[str]]:
    """-> list of (3, H, W) float tensors in [0, 1] and their names."""
    from captum_nave.models import load_image

    names: List[str]
    if isinstance(images, Tensor):
        x = images
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected a tensor of shape (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
        items: List[Any] = list(x)
        names = [f"image {i}" for i in range(len(items))]
    elif isinstance(images, Mapping):
        items = list(images.values())
        names = [str(k) for k in images.keys()]
    elif isinstance(images, (list, tuple)):
        items = list(images)
        names = [
            os.path.splitext(os.path.basename(os.fspath(s)))[0] if _is_pathlike(s) else f"image {i}"
            for i, s in enumerate(items)
        ]
    elif _is_pathlike(images):
        items = [images]
        names = [os.path.splitext(os.path.basename(os.fspath(images)))[0]]
    else:
        raise TypeError(
            "images: expected a Tensor (N, 3, H, W) in [0, 1], a sequence of image tensors or "
            f"file paths, or a mapping name -> image, got {type(images).__name__}"
        )
    if not items:
        raise ValueError("images: expected at least one image, got none")
    out: List[Tensor] = []
    for i, item in enumerate(items):
        if _is_pathlike(item):
            item = load_image(item)
        if not isinstance(item, Tensor):
            raise TypeError(f"images[{i}]: expected a Tensor (3, H, W) or a file path, got {type(item).__name__}")
        if item.dim() == 4 and item.shape[0] == 1:
            item = item[0]
        if item.dim() != 3 or item.shape[0] != 3:
            raise ValueError(f"images[{i}]: expected shape (3, H, W), got {tuple(item.shape)}")
        if not item.is_floating_point():
            raise TypeError(f"images[{i}]: expected a float tensor with values in [0, 1], got {item.dtype}")
        lo, hi = float(item.min()), float(item.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"images[{i}]: expected values in [0, 1] (not normalised), got range [{lo:.3g}, {hi:.3g}]"
            )
        out.append(item.detach().to("cpu", torch.float32))
    if image_names is not None:
        if isinstance(image_names, str) or len(image_names) != len(out):
            raise ValueError(f"image_names: expected {len(out)} names (one per image), got {image_names!r}")
        names = [str(n) for n in image_names]
    return out, names


def _model_defaults(model: nn.Module) -> Dict[str, Any]:
    from captum_nave.adapters import get_adapter

    mean, std = get_adapter(model).normalization() or (_IMAGENET_MEAN, _IMAGENET_STD)
    return {
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "source": "user model",
        "pretrained": None,
    }


def _parse_models(models: Any) -> List[Tuple[str, nn.Module, Dict[str, Any]]]:
    """-> [(name, module, info)] where info has at least mean and std."""
    if isinstance(models, nn.Module) or (isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], nn.Module) and isinstance(models[1], Mapping)):
        models = [models]
    if isinstance(models, Mapping):
        pairs = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, (list, tuple)):
        pairs = []
        for i, v in enumerate(models):
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
                pairs.append((v[0], v[1]))
            else:
                m = v[0] if isinstance(v, tuple) else v
                pairs.append((type(m).__name__, v))
        counts: Dict[str, int] = {}
        for n, _ in pairs:
            counts[n] = counts.get(n, 0) + 1
        seen: Dict[str, int] = {}
        renamed = []
        for n, v in pairs:
            if counts[n] > 1:
                seen[n] = seen.get(n, 0) + 1
                n = f"{n} #{seen[n]}"
            renamed.append((n, v))
        pairs = renamed
    else:
        raise TypeError(
            "models: expected an nn.Module, a mapping name -> model (or (model, info)), or a "
            f"list of them, got {type(models).__name__}"
        )
    if not pairs:
        raise ValueError("models: expected at least one model, got none")
    out = []
    names = set()
    for name, entry in pairs:
        if name in names:
            raise ValueError(f"models: duplicate model name {name!r}")
        names.add(name)
        info: Dict[str, Any] = {}
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Mapping):
            module, user_info = entry
            info.update(user_info)
        else:
            module = entry
        if not isinstance(module, nn.Module):
            raise TypeError(f"models[{name!r}]: expected an nn.Module (or (nn.Module, info)), got {type(module).__name__}")
        defaults = _model_defaults(module)
        for k, v in defaults.items():
            info.setdefault(k, v)
        out.append((name, module, info))
    return out


def _parse_size(size: Any) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    size = check_int_pair(size, "size", low=8)
    return int(size[0]), int(size[1])


def _resize_geometry(hw: Tuple[int, int], size: Tuple[int, int], crop: bool) -> Tuple[float, float, int, int]:
    """(scale_y, scale_x, top, left) of :func:`captum_nave.models.resize_images`."""
    h, w = hw
    th, tw = size
    if not crop:
        return th / h, tw / w, 0, 0
    s = max(th / h, tw / w)
    rh, rw = max(th, round(h * s)), max(tw, round(w * s))
    return rh / h, rw / w, (rh - th) // 2, (rw - tw) // 2


def transform_boxes(
    boxes: Any, hw: Tuple[int, int], size: Tuple[int, int], crop: bool = True
) -> np.ndarray:
    """Map boxes from an original image to the resized (and centre-cropped) image.

    Parameters
    ----------
    boxes : array-like of shape (M, 4)
        ``(x_min, y_min, x_max, y_max)`` in pixels of the original image of size ``hw``.
    hw : (int, int)
        Original (H, W).
    size : (int, int)
        Report image size (H', W').
    crop : bool
        As :func:`captum_nave.models.resize_images`.

    Returns
    -------
    ndarray of shape (M', 4), float64
        Boxes clipped to the new image; boxes with no area left are dropped.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
        raise ValueError(f"boxes: expected an array of shape (M, 4) of finite numbers, got shape {arr.shape}")
    if np.any(arr[:, 2] <= arr[:, 0]) or np.any(arr[:, 3] <= arr[:, 1]):
        raise ValueError(f"boxes: expected x_max > x_min and y_max > y_min, got {arr.tolist()}")
    sy, sx, top, left = _resize_geometry(hw, size, crop)
    out = arr.copy()
    out[:, [0, 2]] = out[:, [0, 2]] * sx - left
    out[:, [1, 3]] = out[:, [1, 3]] * sy - top
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, size[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[0])
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep]


def _class_namer(class_names: Any, num_classes: Optional[int], pretrained: Any) -> Callable[[int], str]:
    if callable(class_names):
        return lambda k: str(class_names(k))
    if isinstance(class_names, Mapping):
        return lambda k: str(class_names.get(k, f"class {k}"))
    if isinstance(class_names, (list, tuple)):
        return lambda k: str(class_names[k]) if 0 <= k < len(class_names) else f"class {k}"
    if class_names is not None:
        raise TypeError(
            f"class_names: expected a sequence, a mapping, a callable or None, got {type(class_names).__name__}"
        )
    if num_classes == 1000 and pretrained is not False:
        from captum_nave.models import imagenet_class_name

        return lambda k: f"{imagenet_class_name(k)} ({k})"
    return lambda k: f"class {k}"


def _check_choice_list(values: Any, param: str) -> List[str]:
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{param}: expected a non-empty sequence of method names, got {values!r}")
    out: List[str] = []
    for v in values:
        key = v.strip().lower()
        if key not in out:
            out.append(key)
    return out


def _check_seeds(seeds: Any) -> List[int]:
    if isinstance(seeds, Integral) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, Integral) and not isinstance(s, bool) for s in seeds):
        raise InvalidParameterError(f"seeds: expected a non-empty sequence of ints, got {seeds!r}")
    seeds = [check_seed(s, "seeds", allow_generator=False) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {list(seeds)!r}")
    return [int(s) for s in seeds]
