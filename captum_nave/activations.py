"""Layer resolution and activation capture (first step of the NAVE data flow).

model + layer specs -> one forward pass under ``torch.no_grad()`` -> one spatial
activation tensor ``(N, C, h, w)`` per selected layer.

CNN layers already produce ``(N, C, h, w)``. ViT blocks produce tokens
``(N, T, C)``; the prefix tokens (CLS, distillation and register tokens) are
removed and the remaining patch tokens are reshaped to the patch grid. The
number of prefix tokens is read from the model's adapter
(:mod:`captum_nave.adapters`: timm, torch-hub DINOv2, Hugging Face, ...) or
given explicitly; the grid is derived from the input size and the patch size.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .adapters import get_adapter
from ._validation import InvalidParameterError

__all__ = [
    "LayerSpec",
    "resolve_layers",
    "layer_spec_list",
    "find_blocks",
    "layer_names",
    "num_prefix_tokens",
    "patch_size_of",
    "tokens_to_grid",
    "capture_activations",
    "preserve_model_state",
    "StopForward",
    "run_until_stopped",
]

LayerSpec = Union[str, int, nn.Module]


# --------------------------------------------------------------------------- layers
def layer_names(model: nn.Module) -> List[str]:
    """Dotted names of every submodule of ``model`` (``named_modules`` without the root)."""
    return [name for name, _ in model.named_modules() if name]


def find_blocks(model: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """The dotted path and container of the model's sequence of blocks, if any.

    As reported by the model's adapter (:meth:`captum_nave.adapters.ModelAdapter.block_container`):
    timm ``blocks``, Hugging Face ``encoder.layer`` / ``layers``, torchvision
    ``encoder.layers``, torch-hub DINOv2 ``blocks`` (possibly chunked), ...
    """
    return get_adapter(model).block_container()


def _resolve_one(model: nn.Module, spec: LayerSpec, names: List[str]) -> nn.Module:
    if isinstance(spec, nn.Module):
        if not any(m is spec for m in model.modules()):
            raise ValueError(
                f"layers: the module {type(spec).__name__} is not a submodule of the model"
            )
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise TypeError(
            "layers: expected module objects, dotted names (str) or block indices (int), "
            f"got {type(spec).__name__}: {spec!r}"
        )
    if isinstance(spec, int):
        blocks = get_adapter(model).blocks()
        if not blocks:
            raise ValueError(
                f"layers: integer index {spec} needs a model with a sequence of blocks "
                "(e.g. timm ViT 'blocks'); give a dotted layer name instead"
            )
        n = len(blocks)
        if not -n <= spec < n:
            raise ValueError(f"layers: block index must be in [{-n}, {n - 1}], got {spec}")
        return blocks[spec][1]
    # dotted name; each integer part may be negative (e.g. "blocks.-1")
    obj: nn.Module = model
    for part in spec.split("."):
        child: Optional[nn.Module] = None
        if isinstance(obj, (nn.Sequential, nn.ModuleList)) and _is_int(part):
            idx = int(part)
            if -len(obj) <= idx < len(obj):
                child = obj[idx]
        else:
            got = getattr(obj, part, None) if part else None
            child = got if isinstance(got, nn.Module) else None
        if child is None:
            close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
            hint = f"; closest valid names: {', '.join(close)}" if close else ""
            raise ValueError(f"layers: no layer named {spec!r} in {type(model).__name__}{hint}")
        obj = child
    return obj


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def layer_spec_list(specs: Any) -> List[LayerSpec]:
    """``specs`` as a non-empty list: one spec (module, name, index) or an iterable of them.

    Raises
    ------
    TypeError
        ``specs`` is neither a spec nor an iterable (e.g. ``3.5``), or holds other types.
    ValueError
        An empty list.
    """
    if isinstance(specs, (str, nn.Module)) or (isinstance(specs, Integral) and not isinstance(specs, bool)):
        return [specs]
    expected = "a module, a dotted name (str), a block index (int) or a list of them"
    if isinstance(specs, (bytes, dict, Tensor)) or not isinstance(specs, Iterable):
        raise InvalidParameterError(f"layers: expected {expected}, got {specs!r}")
    out = list(specs)
    if not out:
        raise ValueError("layers: expected at least one layer, got an empty list")
    for s in out:
        if isinstance(s, bool) or not isinstance(s, (str, Integral, nn.Module)):
            raise InvalidParameterError(f"layers: expected {expected}, got an item {s!r}")
    return [int(s) if isinstance(s, Integral) else s for s in out]


def resolve_layers(model: nn.Module, specs: Union[LayerSpec, Sequence[LayerSpec]]) -> List[nn.Module]:
    """Resolve layer specifications to submodules of ``model``.

    Parameters
    ----------
    model : nn.Module
        The model that owns the layers.
    specs : module, str, int or a sequence of them
        Module objects, dotted names (``"layer4"``, ``"blocks.11"``, ``"blocks.-1"``) or
        integer block indices (negative counts from the end, ViT-style ``blocks``).

    Returns
    -------
    list of nn.Module
        One module per spec, in the given order.

    Raises
    ------
    ValueError
        For an unknown name (the closest valid names are listed), an empty list or an
        out-of-range index.
    """
    specs = layer_spec_list(specs)
    names = layer_names(model)
    return [_resolve_one(model, s, names) for s in specs]


# --------------------------------------------------------------------------- token layout
def num_prefix_tokens(model: nn.Module) -> Optional[int]:
    """Number of non-patch tokens (CLS, distillation, registers) that precede the patches.

    As reported by the model's adapter (:func:`captum_nave.adapters.get_adapter`): timm
    ``num_prefix_tokens``, torch-hub DINOv2 ``num_register_tokens`` + CLS, Hugging Face
    configs (DeiT: CLS + distillation; SigLIP: none), ... ``None`` when the model says
    nothing (CNNs, unknown transformers: pass ``num_prefix_tokens=`` explicitly).
    """
    return get_adapter(model).num_prefix_tokens


def patch_size_of(model: nn.Module) -> Optional[Tuple[int, int]]:
    """Patch size ``(ph, pw)`` of a ViT-like model (from its adapter), or ``None``."""
    return get_adapter(model).patch_size


def tokens_to_grid(
    tokens: Tensor,
    num_prefix: int,
    input_hw: Tuple[int, int],
    patch_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Drop prefix tokens and reshape patch tokens to the patch grid.

    Parameters
    ----------
    tokens : Tensor of shape (N, T, C)
        Block output tokens, prefix tokens first.
    num_prefix : int
        Number of leading non-patch tokens to drop.
    input_hw : (int, int)
        Spatial size of the model input.
    patch_size : (int, int), optional
        Patch size. The grid is ``(H // ph, W // pw)`` when the model crops a remainder
        and ``(ceil(H / ph), ceil(W / pw))`` when it pads; whichever matches the token
        count is used. Without a patch size, a grid with the input's aspect ratio is
        searched for.

    Returns
    -------
    Tensor of shape (N, C, h, w)
    """
    if tokens.dim() != 3:
        raise ValueError(f"tokens: expected shape (N, T, C), got {tuple(tokens.shape)}")
    n, t, c = tokens.shape
    n_patch = t - num_prefix
    if n_patch <= 0:
        raise ValueError(
            f"num_prefix_tokens: {num_prefix} prefix tokens leave no patch tokens out of {t}"
        )
    h, w = _infer_grid(n_patch, input_hw, patch_size)
    patches = tokens[:, num_prefix:, :]
    return patches.transpose(1, 2).reshape(n, c, h, w)


def _infer_grid(
    n_patch: int, input_hw: Tuple[int, int], patch_size: Optional[Tuple[int, int]]
) -> Tuple[int, int]:
    H, W = input_hw
    if patch_size is not None:
        ph, pw = patch_size
        for h, w in ((H // ph, W // pw), (math.ceil(H / ph), math.ceil(W / pw))):
            if h * w == n_patch:
                return h, w
        raise ValueError(
            f"tokens: {n_patch} patch tokens do not form a grid for input {H}x{W} with patch "
            f"size {ph}x{pw}; check num_prefix_tokens / patch_size"
        )
    # no patch size: find h*w == n_patch with h/w closest to H/W
    best = None
    for h in range(1, n_patch + 1):
        if n_patch % h == 0:
            w = n_patch // h
            err = abs(math.log((h / w) / (H / W)))
            if best is None or err < best[0]:
                best = (err, h, w)
    assert best is not None
    if best[0] > 0.05:
        raise ValueError(
            f"tokens: cannot infer the patch grid of {n_patch} tokens for input {H}x{W}; "
            "pass patch_size="
        )
    return best[1], best[2]


# --------------------------------------------------------------------------- state
class preserve_model_state:
    """Context manager that restores a model's mode, ``requires_grad`` flags and buffers.

    NAVE only reads activations, but a model left in training mode updates its
    BatchNorm running statistics during a forward pass. Buffers are copied before and
    written back after, so the user's model is left exactly as it was, also on failure.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> "preserve_model_state":
        m = self.model
        self._modes = [(mod, mod.training) for mod in m.modules()]
        self._grads = [(p, p.requires_grad) for p in m.parameters()]
        self._buffers = (
            [(b, b.detach().clone()) for b in m.buffers()] if any(t for _, t in self._modes) else []
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        for mod, mode in self._modes:
            mod.training = mode
        for p, rg in self._grads:
            p.requires_grad_(rg)
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)


# --------------------------------------------------------------------------- capture
@dataclass
class _Capture:
    value: Optional[Tensor] = None


def _first_tensor(obj: Any) -> Optional[Tensor]:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for key in ("last_hidden_state", "hidden_states", "out"):
            if key in obj:
                return _first_tensor(obj[key])
    lhs = getattr(obj, "last_hidden_state", None)
    if isinstance(lhs, Tensor):
        return lhs
    return None


def capture_activations(
    model: Callable[..., Any],
    layers: Sequence[nn.Module],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    *,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    num_prefix: Optional[int] = None,
    patch_size: Optional[Tuple[int, int]] = None,
    layer_labels: Optional[Sequence[str]] = None,
) -> List[Tensor]:
    """Run one forward pass without gradients and return each layer's spatial activation.

    Parameters
    ----------
    model : callable
        The forward function (usually the ``nn.Module``).
    layers : sequence of nn.Module
        Resolved layers.
    inputs : Tensor of shape (N, C, H, W) or tuple whose first element is that tensor
        Model input; the first tensor defines the spatial size.
    additional_forward_args : any, optional
        Extra positional arguments passed after the inputs (Captum convention).
    attribute_to_layer_input : bool
        Capture the layer's input instead of its output.
    num_prefix : int, optional
        Prefix tokens to drop for token outputs (``None``: CNN-only; a 3-D output raises).
    patch_size : (int, int), optional
        Patch size used to derive the token grid.
    layer_labels : sequence of str, optional
        Names for error messages.

    Returns
    -------
    list of Tensor, each of shape (N, C_i, h_i, w_i)
        On the device of the model's outputs; never copied to the CPU.

    Notes
    -----
    Hooks are removed in a ``finally`` block, and the model's mode, ``requires_grad``
    flags and buffers are restored (see :class:`preserve_model_state`). The forward pass
    stops as soon as the last selected layer has run, by raising an internal signal.
    """
    inputs_t = inputs if isinstance(inputs, tuple) else (inputs,)
    H, W = inputs_t[0].shape[-2:]
    labels = list(layer_labels) if layer_labels is not None else [f"layer {i}" for i in range(len(layers))]
    captures: List[_Capture] = [_Capture() for _ in layers]
    handles = []

    def make_hook(slot: _Capture) -> Callable[..., None]:
        if attribute_to_layer_input:
            def pre_hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
                if slot.value is None:
                    slot.value = _first_tensor(args)
                _maybe_stop()
            return pre_hook

        def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            if slot.value is None:
                slot.value = _first_tensor(output)
            _maybe_stop()
        return hook

    def _maybe_stop() -> None:
        if all(c.value is not None for c in captures):
            raise StopForward

    extra = additional_forward_args
    if extra is None:
        extra_t: Tuple[Any, ...] = ()
    elif isinstance(extra, tuple):
        extra_t = extra
    else:
        extra_t = (extra,)

    mod = model if isinstance(model, nn.Module) else None
    stochastic = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if mod is not None and any(m.training and isinstance(m, stochastic) for m in mod.modules()):
        warnings.warn(
            "the model is in training mode: dropout and batch statistics make the activations "
            "random; call model.eval() for reproducible explanations (the model's state is "
            "restored after the forward pass)",
            UserWarning,
            stacklevel=3,
        )
    state = preserve_model_state(mod) if mod is not None else None
    try:
        if state is not None:
            state.__enter__()
        for layer, slot in zip(layers, captures):
            if attribute_to_layer_input:
                handles.append(layer.register_forward_pre_hook(make_hook(slot)))
            else:
                handles.append(layer.register_forward_hook(make_hook(slot)))
        run_until_stopped(model, *inputs_t, *extra_t)
    finally:
        for h in handles:
            h.remove()
        if state is not None:
            state.__exit__(None, None, None)

    out: List[Tensor] = []
    for label, slot in zip(labels, captures):
        act = slot.value
        if act is None:
            raise ValueError(f"layers: {label} did not run during the forward pass")
        if act.dim() == 3:
            if num_prefix is None:
                raise ValueError(
                    f"layers: {label} outputs tokens of shape {tuple(act.shape)} but the number "
                    "of prefix tokens is unknown; pass num_prefix_tokens= (and patch_size=)"
                )
            act = tokens_to_grid(act, num_prefix, (int(H), int(W)), patch_size)
        elif act.dim() != 4:
            raise ValueError(
                f"layers: {label} output of shape {tuple(act.shape)} is not spatial; expected "
                "(N, C, h, w) feature maps or (N, T, C) tokens"
            )
        act = act.detach()
        if not torch.isfinite(act).all():
            raise ValueError(f"layers: {label} produced NaN or inf activations")
        out.append(act)
    return out


class StopForward(Exception):
    """Raised by a hook once everything needed from a forward pass is captured.

    The layers after it (the rest of the network, the classifier head) never run:
    NAVE and the register measures need the forward pass only up to the deepest
    layer they read. Hooks that raise it must be removed, and the model's state
    restored, in a ``finally`` block (see :func:`capture_activations`).
    """


def run_until_stopped(forward: Callable[..., Any], *args: Any) -> bool:
    """Call ``forward(*args)`` without gradients until a hook raises :class:`StopForward`.

    Works for any model whose hooks run inside its forward pass (every family: the
    signal is an exception, not a model-specific option such as timm's
    ``forward_intermediates(stop_early=True)``).

    Returns
    -------
    bool
        True if a hook stopped the forward pass, False if it ran to the end.
    """
    with torch.no_grad():
        try:
            forward(*args)
        except StopForward:
            return True
    return False
