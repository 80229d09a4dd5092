"""One entry point for pixel attribution methods, looked up by name.

``attribute(method, model, inputs, target, **options)`` checks the inputs, resolves
the target (``"auto"`` = the predicted class), calls the method registered under
``method`` with the user's model protected (mode, ``requires_grad`` flags, buffers
and ``.grad`` restored afterwards, also on failure) and returns an
:class:`AttributionResult` whose ``maps`` have shape (N, 1, H, W) at input resolution,
ready to be compared with a NAVE segment map.

A method is a function ``fn(model, inputs, target, **options)`` where ``target`` is
already a LongTensor of shape (N,); it returns ``(maps, raw, delta)``,
``(maps, raw, delta, resolved_options)`` or ``(maps, raw, delta, resolved_options,
relative_delta)``:

* ``maps`` : float Tensor (N, 1, H, W), one value per input pixel;
* ``raw`` : the method's native output (e.g. (N, C, H, W) or a layer-resolution map);
* ``delta`` : Tensor (N,) convergence delta, or ``None``;
* ``resolved_options`` : dict of the options actually used (defaults filled in);
* ``relative_delta`` : Tensor (N,), the delta relative to what the attributions
  should sum to (the logit for LRP, ``F(x) - F(baseline)`` for IG), or ``None``.

Built-in methods: ``"gradcam"`` (:mod:`.gradcam`), ``"ig"``
(:mod:`.integrated_gradients`) and ``"lrp"`` (:func:`.lrp.lrp_attribute`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_nave._validation import check_images, model_float_dtype
from captum_nave.activations import preserve_model_state
from captum_nave.adapters import logits_function, output_logits

__all__ = [
    "AttributionResult",
    "MethodFn",
    "TargetLike",
    "attribute",
    "available_methods",
    "register_method",
    "unregister_method",
    "resolve_target",
]

TargetLike = Union[None, str, int, Sequence[int], Tensor]
MethodFn = Callable[..., Tuple[Any, ...]]

_METHODS: Dict[str, MethodFn] = {}


@dataclass
class AttributionResult:
    """What one attribution method produced for a batch.

    Attributes
    ----------
    maps : Tensor of shape (N, 1, H, W), floating point
        One relevance value per input pixel (channels summed where the method gives
        per-channel values; layer maps upsampled to the input size).
    raw : Tensor
        The method's native output: (N, C, H, W) input attributions for ``"ig"`` and
        ``"lrp"``, the layer-resolution map (N, 1, h, w) for ``"gradcam"``.
    delta : Tensor of shape (N,) or None
        Convergence delta (IG: ``sum(attr) - (f(x) - f(baseline))``; LRP:
        ``sum(relevance) - logit``); ``None`` when the method has none.
    method : str
        Registered name of the method.
    target : LongTensor of shape (N,)
        The class explained for each image (after resolving ``"auto"``).
    options : dict
        The options used, defaults included (e.g. the Grad-CAM layer name).
    relative_delta : Tensor of shape (N,) or None
        ``delta`` divided by the magnitude of what the attributions should sum to:
        ``|logit|`` for LRP, ``|F(x) - F(baseline)|`` for IG. Comparable across
        models whatever the scale of their logits; ``None`` when the method has no
        delta.
    """

    maps: Tensor
    raw: Tensor
    delta: Optional[Tensor]
    method: str
    target: Tensor
    options: Dict[str, Any] = field(default_factory=dict)
    relative_delta: Optional[Tensor] = None


# --------------------------------------------------------------------------- registry
def register_method(name: str, fn: MethodFn, *, overwrite: bool = False) -> None:
    """Make ``fn`` available as ``attribute(name, ...)``.

    Parameters
    ----------
    name : str
        Lower-case identifier (letters, digits, ``_``, ``-``).
    fn : callable
        ``fn(model, inputs, target, **options) -> (maps, raw, delta[, options])`` with
        ``inputs`` a Tensor (N, C, H, W), ``target`` a LongTensor (N,) and ``maps`` a
        float Tensor (N, 1, H, W) (see the module docstring).
    overwrite : bool, default False
        Replace an existing method of the same name (otherwise that raises).

    Raises
    ------
    TypeError
        ``name`` is not a str or ``fn`` is not callable.
    ValueError
        ``name`` is empty, malformed or already taken (without ``overwrite``).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    key = name.strip().lower()
    if not key or not all(ch.isalnum() or ch in "_-" for ch in key):
        raise ValueError(
            f"name: expected a non-empty identifier of letters, digits, '_' or '-', got {name!r}"
        )
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    if key in _METHODS and not overwrite:
        raise ValueError(f"name: a method {key!r} is already registered; pass overwrite=True to replace it")
    _METHODS[key] = fn


def unregister_method(name: str) -> None:
    """Remove a registered method (no error if it is absent)."""
    _METHODS.pop(str(name).strip().lower(), None)


def available_methods() -> List[str]:
    """Names accepted by :func:`attribute`, sorted."""
    return sorted(_METHODS)


# --------------------------------------------------------------------------- checks
def _forward_args(additional_forward_args: Any) -> Tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _target_tensor(target: TargetLike, n: int) -> Optional[Tensor]:
    """An explicit target as a LongTensor (n,) (range not checked), or None for "auto"."""
    if target is None or (isinstance(target, str) and target.strip().lower() == "auto"):
        return None
    if isinstance(target, str):
        raise ValueError(f"target: expected 'auto', None, an int or one int per image, got {target!r}")
    if isinstance(target, bool):
        raise TypeError("target: expected an int, a sequence of ints or an integer Tensor, got bool")
    if isinstance(target, Integral):
        t = torch.full((n,), int(target), dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got dtype {target.dtype}")
        if target.dim() == 0:
            t = torch.full((n,), int(target), dtype=torch.long)
        elif target.dim() == 1 and target.shape[0] == n:
            t = target.detach().to("cpu", torch.long)
        else:
            raise ValueError(
                f"target: expected a tensor of shape () or ({n},) (one class per image), "
                f"got shape {tuple(target.shape)}"
            )
    elif isinstance(target, (list, tuple)):
        if len(target) != n or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in target):
            raise ValueError(f"target: expected {n} ints (one class per image), got {target!r}")
        t = torch.tensor([int(v) for v in target], dtype=torch.long)
    else:
        raise TypeError(
            f"target: expected 'auto', None, an int, a sequence of ints or an integer Tensor, "
            f"got {type(target).__name__}"
        )
    if bool((t < 0).any()):
        raise ValueError(f"target: expected class indices >= 0, got {t[t < 0].tolist()}")
    return t


def _check_logits(logits: Any) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"model: expected the forward pass to return a Tensor (N, K), got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"model: expected an output of shape (N, K) (class scores), got shape {tuple(logits.shape)}"
        )
    return logits


def _check_range(t: Tensor, k: int) -> None:
    bad = (t < 0) | (t >= k)
    if bool(bad.any()):
        raise ValueError(
            f"target: expected class indices in [0, {k - 1}] (the model has {k} outputs), got {t[bad].tolist()}"
        )


def resolve_target(
    target: TargetLike, logits: Tensor
) -> Tensor:
    """Turn ``target`` into a LongTensor (N,) of class indices within ``logits``' classes.

    Parameters
    ----------
    target : None, "auto", int, sequence of int or integer Tensor of shape () or (N,)
        ``None`` / ``"auto"``: the arg-max class of each image.
    logits : Tensor of shape (N, K)
        The model's output for the inputs.

    Returns
    -------
    LongTensor of shape (N,), on ``logits``' device
    """
    logits = _check_logits(logits)
    n, k = logits.shape
    t = _target_tensor(target, n)
    if t is None:
        return logits.detach().argmax(dim=1)
    _check_range(t, k)
    return t.to(logits.device)


class _RangeCheck:
    """Forward hook that checks an explicit target against the model's first output.

    An integer target needs no forward pass of its own: the method's first forward
    pass through the model (Grad-CAM, IG) gives the number of classes.
    """

    def __init__(self, model: nn.Module, target: Tensor) -> None:
        self.target = target
        self.done = False
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.done:
            return
        self.done = True
        _check_range(self.target, _check_logits(output_logits(module, output)).shape[1])

    def remove(self) -> None:
        self.handle.remove()


class _Guard:
    """Restore the model's mode, requires_grad, buffers and ``.grad`` (also on failure)."""

    def __init__(self, model: Optional[nn.Module]) -> None:
        self.state = preserve_model_state(model) if model is not None else None
        self.grads = [(p, p.grad) for p in model.parameters()] if model is not None else []

    def __enter__(self) -> "_Guard":
        if self.state is not None:
            self.state.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.state is not None:
            self.state.__exit__(*exc)
        for p, g in self.grads:
            p.grad = g


# --------------------------------------------------------------------------- entry point
def attribute(
    method: str,
    model: Union[nn.Module, Callable[..., Tensor]],
    inputs: Tensor,
    /,
    target: TargetLike = "auto",
    **options: Any,
) -> AttributionResult:
    """Attribute the model's class score to the input pixels with a registered method.

    Parameters
    ----------
    method : str
        A name from :func:`available_methods`: ``"gradcam"``, ``"ig"``, ``"lrp"`` or one
        added with :func:`register_method`.
    model : nn.Module (or callable for methods that only need a forward function)
        Classifier returning scores of shape (N, K); a Hugging Face ``ModelOutput`` is
        unwrapped to its logits by the model's adapter (:mod:`captum_nave.adapters`). Never modified: its train/eval
        mode, ``requires_grad`` flags, buffers and ``.grad`` are restored and every hook
        is removed, also when the call fails.
    inputs : Tensor of shape (N, C, H, W)
        Model inputs (normalised images), on the model's device.
    target : "auto", None, int, sequence of int or integer Tensor of shape () or (N,)
        Class explained per image; ``"auto"`` / ``None``: the predicted (arg-max) class,
        which costs one forward pass. An explicit target costs none: it is checked
        against the number of classes on the method's own first forward pass.
    **options
        Method options (``method``, ``model`` and ``inputs`` are positional-only, so an
        option may be called ``method``, as IG's integration rule is), e.g. ``layer=`` for ``"gradcam"``, ``baselines=``, ``n_steps=``,
        ``internal_batch_size=`` for ``"ig"``, ``composite=``, ``name_map=``, ``epsilon=`` for
        ``"lrp"``; see
        :func:`~captum_nave.attribution.gradcam.gradcam`,
        :func:`~captum_nave.attribution.integrated_gradients.integrated_gradients` and
        :func:`~captum_nave.attribution.lrp.lrp_attribute`.

    Returns
    -------
    AttributionResult
        ``maps`` (N, 1, H, W) float, ``raw``, ``delta`` (N,) or None, ``method``,
        ``target`` (N,), ``options``.

    Raises
    ------
    ValueError, TypeError
        Unknown method, bad inputs, target or options (the message names the parameter).

    Examples
    --------
    >>> import torch, torchvision
    >>> from captum_nave.attribution import attribute
    >>> model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    >>> x = torch.randn(2, 3, 64, 64)
    >>> res = attribute("gradcam", model, x, target="auto")      # layer4 by default
    >>> res.maps.shape, res.raw.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 1, 2, 2]))
    >>> ig = attribute("ig", model, x, target=3, baselines="blur", n_steps=32)
    >>> ig.delta.shape                                            # convergence delta
    torch.Size([2])
    """
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method name (str), got {type(method).__name__}")
    key = method.strip().lower()
    if key not in _METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, available_methods()))}, got {method!r}")
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    x = check_images(inputs, "inputs", dtype=model_float_dtype(model))
    module = model if isinstance(model, nn.Module) else None
    if module is not None and module.training:
        warnings.warn(
            "the model is in training mode: dropout and batch statistics make attributions "
            "random; call model.eval() first (the model's state is restored afterwards)",
            UserWarning,
            stacklevel=2,
        )
    fn = _METHODS[key]
    with _Guard(module):
        t = _target_tensor(target, x.shape[0])
        if t is None or module is None:
            # "auto" needs the prediction; a plain callable cannot be hooked
            with torch.no_grad():
                logits = logits_function(model)(x.detach(), *_forward_args(options.get("additional_forward_args")))
            t = resolve_target(target, logits)
            out = fn(model, x, t, **options)
        else:
            t = t.to(x.device)
            check = _RangeCheck(module, t)
            try:
                out = fn(model, x, t, **options)
            finally:
                check.remove()
    if not isinstance(out, tuple) or len(out) not in (3, 4, 5):
        raise TypeError(
            f"method {key!r} returned {type(out).__name__}; registered methods must return "
            "(maps, raw, delta), (maps, raw, delta, options) or (maps, raw, delta, options, relative_delta)"
        )
    maps, raw, delta = out[:3]
    relative = out[4] if len(out) == 5 else None
    used = dict(options)
    if len(out) >= 4 and out[3]:
        used.update(out[3])
    expected = (x.shape[0], 1, x.shape[2], x.shape[3])
    if not isinstance(maps, Tensor) or tuple(maps.shape) != expected or not maps.is_floating_point():
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"method {key!r} returned maps {got}; expected a float tensor of shape {expected}")
    return AttributionResult(
        maps=maps.detach(),
        raw=raw.detach() if isinstance(raw, Tensor) else raw,
        delta=delta.detach() if isinstance(delta, Tensor) else delta,
        method=key,
        target=t.detach(),
        options=used,
        relative_delta=relative.detach() if isinstance(relative, Tensor) else None,
    )
