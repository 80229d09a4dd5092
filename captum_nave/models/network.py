"""Knowing early that pretrained weights cannot be fetched, instead of after minutes of retries.

Offline, ``timm`` and ``transformers`` downloads retry each request several times with
back-off (about 40 lines of warnings and 30-120 s before the final error). Before a
download, :func:`unreachable` opens one TCP connection to the host (through the HTTPS
proxy when one is configured) with a short timeout; when that fails, or when the user
set ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, loaders use their local caches only
and fail at once with one line naming what could not be fetched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Dict, Iterator, Optional
from urllib.parse import urlparse

__all__ = ["hf_endpoint_host", "hf_offline_env", "hf_cache_only", "torch_hub_cached_file", "unreachable"]

#: Seconds allowed for the connection probe.
PROBE_TIMEOUT = 3.0

_probed: Dict[str, Optional[str]] = {}


def _truthy(value: Optional[str]) -> bool:
    return str(value or "").strip().lower() in ("1", "on", "yes", "true")


def hf_offline_env() -> bool:
    """Whether the user asked for the Hugging Face offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hf_endpoint_host() -> str:
    """Host of the Hugging Face Hub (``HF_ENDPOINT``, default ``huggingface.co``)."""
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def unreachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """``None`` if a TCP connection to ``host`` opens within ``timeout`` s, else the reason.

    With ``HTTPS_PROXY`` / ``https_proxy`` set, the proxy is probed instead. The answer
    is remembered for the rest of the process.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target, tport = host, port
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            target, tport = parsed.hostname, parsed.port or 80
    key = f"{target}:{tport}"
    if key not in _probed:
        try:
            with socket.create_connection((target, tport), timeout=timeout):
                _probed[key] = None
        except OSError as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            _probed[key] = f"{target} unreachable: {text}" if target != host else text
    return _probed[key]


@contextlib.contextmanager
def hf_cache_only() -> Iterator[None]:
    """Make ``huggingface_hub`` (used by timm and transformers) read its cache only, for a while.

    Sets ``huggingface_hub.constants.HF_HUB_OFFLINE``, which every download checks at call
    time, and restores it afterwards.
    """
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is None:
        try:
            import huggingface_hub.constants as hub  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            yield
            return
    old = getattr(hub, "HF_HUB_OFFLINE", False)
    hub.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old  # type: ignore[attr-defined]


def torch_hub_cached_file(url: str) -> Optional[str]:
    """Path of ``url`` in torch hub's checkpoint cache if it is there, else None."""
    import torch

    name = os.path.basename(urlparse(url).path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    return path if name and os.path.isfile(path) else None
