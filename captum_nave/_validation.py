"""Argument checks shared by the public API.

Every public function and estimator checks its arguments with these helpers, so the
same mistake gets the same message everywhere, in scikit-learn's style: the
parameter's name, what was expected and the value given
(``"n_clusters: expected an int >= 2, got 1"``).

Numbers are accepted as :class:`numbers.Integral` / :class:`numbers.Real` (Python and
NumPy scalars alike), never ``bool``. A value of the wrong type raises
:class:`InvalidParameterError`, which is both a ``TypeError`` and a ``ValueError`` (as
scikit-learn's error of the same name), so code catching either keeps working; a value
of the right type outside its range raises ``ValueError``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "InvalidParameterError",
    "check_bool",
    "check_finite",
    "check_float_dtype",
    "check_images",
    "check_int",
    "check_int_pair",
    "check_real",
    "check_seed",
    "model_float_dtype",
]

#: Seeds ``torch.Generator.manual_seed`` accepts.
SEED_RANGE = (-(2**63), 2**64 - 1)


class InvalidParameterError(ValueError, TypeError):
    """An argument of the wrong type (a ``TypeError`` that is also a ``ValueError``)."""


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _range_text(kind: str, low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    low = _num(low) if low is not None else None  # type: ignore[assignment]
    high = _num(high) if high is not None else None  # type: ignore[assignment]
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(
    value: Any,
    name: str,
    *,
    low: Optional[int] = None,
    high: Optional[int] = None,
    allow_none: bool = False,
    expected: Optional[str] = None,
) -> Optional[int]:
    """``value`` as a Python int, checked against ``low <= value <= high``.

    Parameters
    ----------
    value : any
        Accepted: ``numbers.Integral`` (``int``, ``numpy.int64``, ...) but not ``bool``;
        ``None`` when ``allow_none``.
    name : str
        Parameter name for the message.
    low, high : int, optional
        Inclusive bounds.
    allow_none : bool
        Return ``None`` for ``None``.
    expected : str, optional
        Replaces the generated description (``"an int >= 2 or 'auto'"``).

    Raises
    ------
    InvalidParameterError
        Not an integer.
    ValueError
        Out of range.
    """
    if value is None and allow_none:
        return None
    if expected is None:
        expected = _range_text("an int", low, high, False, False) + (" or None" if allow_none else "")
    if not _is_int(value):
        raise InvalidParameterError(f"{name}: expected {expected}, got {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return v


def check_real(
    value: Any,
    name: str,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Optional[float]:
    """``value`` as a finite Python float within the given bounds.

    Accepted: ``numbers.Real`` (``int``, ``float``, NumPy scalars) but not ``bool``;
    NaN and infinities are always refused. ``low_open`` / ``high_open`` make a bound
    strict.

    Raises
    ------
    InvalidParameterError
        Not a real number.
    ValueError
        NaN, infinite or out of range.
    """
    if value is None and allow_none:
        return None
    expected = _range_text("a finite number", low, high, low_open, high_open) + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidParameterError(f"{name}: expected {expected}, got {value!r}")
    v = float(value)
    if (
        not math.isfinite(v)
        or (low is not None and (v <= low if low_open else v < low))
        or (high is not None and (v >= high if high_open else v > high))
    ):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return v


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a ``bool`` (NumPy ``bool_`` too), else :class:`InvalidParameterError`."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_" and type(value).__module__ == "numpy":
        return bool(value)
    raise InvalidParameterError(f"{name}: expected a bool, got {value!r}")


def check_seed(
    value: Any, name: str = "random_state", *, allow_generator: bool = True
) -> Union[None, int, torch.Generator]:
    """A seed: ``None``, an int that ``torch.Generator.manual_seed`` accepts, or a Generator.

    Raises
    ------
    InvalidParameterError
        Another type.
    ValueError
        An int outside ``[-2**63, 2**64 - 1]``.
    """
    if value is None or (allow_generator and isinstance(value, torch.Generator)):
        return value
    kinds = "an int, a torch.Generator or None" if allow_generator else "an int or None"
    if not _is_int(value):
        raise InvalidParameterError(f"{name}: expected {kinds}, got {value!r}")
    v = int(value)
    if not SEED_RANGE[0] <= v <= SEED_RANGE[1]:
        raise ValueError(f"{name}: expected an int in [-2**63, 2**64 - 1], got {value!r}")
    return v


def check_int_pair(value: Any, name: str, *, low: int = 1) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``low``, as a tuple ``(a, b)``.

    Used for sizes such as ``patch_size``: ``16`` means ``(16, 16)``.
    """
    items = (value, value) if _is_int(value) else value
    if (
        not isinstance(items, (tuple, list))
        or len(items) != 2
        or not all(_is_int(v) for v in items)
    ):
        raise InvalidParameterError(f"{name}: expected an int >= {low} or a pair of them, got {value!r}")
    if not all(int(v) >= low for v in items):
        raise ValueError(f"{name}: expected an int >= {low} or a pair of them, got {value!r}")
    return int(items[0]), int(items[1])


def check_float_dtype(value: Any, name: str = "dtype") -> Optional[torch.dtype]:
    """``None`` or a floating point ``torch.dtype`` (float16, bfloat16, float32, float64)."""
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise InvalidParameterError(f"{name}: expected a floating point torch.dtype or None, got {value!r}")
    if not value.is_floating_point:
        raise ValueError(
            f"{name}: expected a floating point torch.dtype (e.g. torch.float32, torch.float64), got {value}"
        )
    return value


def model_float_dtype(model: Any) -> Optional[torch.dtype]:
    """The floating dtype of a module's first floating parameter (or buffer), else ``None``."""
    if not isinstance(model, nn.Module):
        return None
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def check_images(
    x: Any, name: str = "inputs", *, dtype: Optional[torch.dtype] = None, finite: bool = True
) -> Tensor:
    """Check a batch of images (N, C, H, W) and return it, converted to ``dtype``.

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W)
        Floating point and finite. Integer images (``uint8`` photos) are refused: the
        model expects normalised floats, and a silent ``/ 255`` would guess wrong for
        other ranges.
    name : str
        Parameter name for the messages.
    dtype : torch.dtype, optional
        Floating dtype to convert to (the model's); ``None`` keeps the input's.
    finite : bool
        Also check that every value is finite (:func:`check_finite`); ``False`` leaves
        that O(N C H W) scan to the caller, to run it after cheaper checks.

    Raises
    ------
    TypeError
        Not a tensor, or not floating point.
    ValueError
        Not 4-D, an empty batch, or NaN / infinite values (the first one is located).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating point tensor of normalised images, got dtype {x.dtype} "
            "(convert it, e.g. x.float() / 255, then normalise as the model expects)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got N = 0")
    if finite:
        check_finite(x, name)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def check_finite(x: Tensor, name: str = "inputs") -> None:
    """Refuse a tensor (N, C, H, W) holding NaN or infinite values, naming the first one.

    Any NaN or infinity makes the sum non-finite, so one reduction (no full-size
    temporary) decides; only a non-finite sum (or a finite overflow) is looked at
    element by element.
    """
    if x.device.type == "meta" or x.numel() == 0:
        return
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(x.sum(dtype=acc))):
        return
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return  # the sum overflowed; every value is finite
    first = [int(i) for i in torch.nonzero(bad)[0]]
    n_nan = int(torch.isnan(x).sum())
    raise ValueError(
        f"{name}: expected finite values, got {n_nan} NaN and {int(bad.sum()) - n_nan} infinite "
        f"(first at image {first[0]}, channel {first[1]}, row {first[2]}, column {first[3]})"
    )
