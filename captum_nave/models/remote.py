"""Loading Hugging Face ``transformers`` models (``hf:``) and torch-hub entries (``hub:``)."""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, Optional, Tuple

from torch import nn

from captum_nave.adapters import HFVisionAdapter
from captum_nave.adapters.hf import SUPPORTED_MODEL_TYPES

from . import network
from .loading import IMAGENET_MEAN, IMAGENET_STD, fetch, model_info

__all__ = ["load_hf", "load_hub"]

#: Full multimodal checkpoints whose vision tower is loaded (the class in transformers).
_VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ValueError(
            "name: 'hf:' models need Hugging Face transformers (pip install 'captum-nave[hf]', "
            "i.e. transformers>=4.48,<6)"
        ) from exc
    return transformers


def _hf_class(tf: Any, config: Any, display: str) -> Tuple[Any, Any]:
    """The transformers class to instantiate for ``config`` and the config it takes."""
    kind = getattr(config, "model_type", None)
    if kind in _VISION_TOWERS:
        return getattr(tf, _VISION_TOWERS[kind]), config.vision_config
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"name: {display!r} is a Hugging Face {kind!r} model; supported vision models: "
            f"{', '.join(SUPPORTED_MODEL_TYPES + tuple(_VISION_TOWERS))}"
        )
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(tf, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel):
            return cls, config
    return tf.AutoModel, config


def _hf_preprocessing(tf: Any, repo: str, config: Any, local_only: bool) -> Dict[str, Any]:
    """mean, std and input size from the repo's image processor (config defaults otherwise)."""
    size = getattr(config, "image_size", 224)
    out: Dict[str, Any] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (size, size)}
    try:
        proc = tf.AutoImageProcessor.from_pretrained(repo, local_files_only=local_only)
    except Exception:  # noqa: BLE001 - no preprocessor_config.json: keep the defaults
        return out
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if mean is not None and std is not None and len(mean) == 3 and len(std) == 3:
        out["mean"], out["std"] = tuple(mean), tuple(std)
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    target = crop or getattr(proc, "size", None) or {}
    if isinstance(target, dict) and "height" in target and "width" in target:
        out["input_size"] = (int(target["height"]), int(target["width"]))
    elif isinstance(target, dict) and "shortest_edge" in target:
        out["input_size"] = (int(target["shortest_edge"]),) * 2
    return out


def load_hf(display: str, repo: str, pretrained: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    """A Hugging Face vision model from a Hub repo id or a local folder (``save_pretrained``)."""
    if not repo:
        raise ValueError(f"name: expected 'hf:<repo id or folder>', got {display!r}")
    tf = _transformers()
    local = os.path.isdir(repo)

    def load(local_only: bool) -> Tuple[nn.Module, Dict[str, Any]]:
        config = tf.AutoConfig.from_pretrained(repo, local_files_only=local_only)
        cls, cfg = _hf_class(tf, config, display)
        if pretrained:
            model = cls.from_pretrained(repo, local_files_only=local_only)
        elif cls is tf.AutoModel:
            model = tf.AutoModel.from_config(cfg)
        else:
            model = cls(cfg)
        return model, _hf_preprocessing(tf, repo, getattr(model, "config", cfg), local_only)

    host = None if local else network.hf_endpoint_host()
    model, prep = fetch(display, host, lambda: load(network.hf_offline_env()), lambda: load(True), hf=True)
    if not HFVisionAdapter.matches(model):
        raise ValueError(
            f"name: {display!r} loads a {type(model).__name__}, which is not a supported vision model"
        )
    return model, model_info(
        model, source="hf", pretrained=pretrained, name=display, **prep
    )


def _split_hub(spec: str, display: str) -> Tuple[str, str]:
    repo, sep, entry = spec.rpartition(":")
    if not sep or not repo or not entry:
        raise ValueError(
            f"name: expected 'hub:<owner/repo[:ref] or folder>:<entry>' (e.g. "
            f"'hub:facebookresearch/dinov2:dinov2_vits14_reg'), got {display!r}"
        )
    return repo, entry


def _cached_hub_repo(repo: str) -> Optional[str]:
    """torch hub's cached copy of ``owner/repo[:ref]``, if any."""
    import torch

    owner_name, _, ref = repo.partition(":")
    if "/" not in owner_name:
        return None
    owner, name = owner_name.split("/", 1)
    pattern = f"{owner}_{name}_{ref.replace('/', '_')}" if ref else f"{owner}_{name}_*"
    hits = sorted(glob.glob(os.path.join(torch.hub.get_dir(), pattern)))
    return hits[0] if hits else None


def load_hub(display: str, spec: str, pretrained: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    """A torch-hub entry: ``owner/repo[:ref]:entry`` from GitHub, or ``folder:entry`` (hubconf.py)."""
    import torch

    repo, entry = _split_hub(spec, display)
    kwargs: Dict[str, Any] = {"pretrained": pretrained}

    def from_dir(path: str) -> nn.Module:
        return torch.hub.load(path, entry, source="local", **kwargs)

    if os.path.isdir(repo):
        model = fetch(display, None, lambda: from_dir(repo), lambda: from_dir(repo))
    else:
        def load() -> nn.Module:
            return torch.hub.load(repo, entry, trust_repo=True, verbose=False, **kwargs)

        def cached() -> nn.Module:
            path = _cached_hub_repo(repo)
            if path is None:
                raise FileNotFoundError(f"no cached copy of {repo} in {torch.hub.get_dir()}")
            with _weights_cache_only(display):
                return from_dir(path)

        model = fetch(display, "github.com", load, cached)
    if not isinstance(model, nn.Module):
        raise ValueError(f"name: {display!r} returned {type(model).__name__}, not an nn.Module")
    size = 224
    return model, model_info(
        model, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(size, size), source="torch-hub",
        pretrained=pretrained, name=display,
    )


class _weights_cache_only:
    """While active, torch hub weight downloads use the cache or fail at once, naming the URL."""

    def __init__(self, display: str) -> None:
        self.display = display

    def __enter__(self) -> "_weights_cache_only":
        import torch

        from .weights import WeightsUnavailableError

        self.real = torch.hub.load_state_dict_from_url
        display, real = self.display, self.real

        def cached_only(url: str, *args: Any, **kwargs: Any) -> Any:
            if network.torch_hub_cached_file(url) is None:
                raise WeightsUnavailableError(
                    f"model {display!r}: cannot fetch {url} (no network) and it is not in the local cache",
                    model=display,
                    what=url,
                )
            return real(url, *args, **kwargs)

        torch.hub.load_state_dict_from_url = cached_only
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.hub.load_state_dict_from_url = self.real
