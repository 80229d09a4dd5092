"""Reading image files faithfully: real bit depth, EXIF orientation, size limits.

:func:`load_image` returns what a photo viewer shows, as an RGB float tensor in [0, 1]:

* 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``PA``, ``CMYK``,
  ``YCbCr``, ``HSV``, ``LAB``, ...) are converted to RGB by Pillow and divided by 255
  (transparency is dropped);
* 16-bit grey images (Pillow modes ``I;16``, ``I;16B``, ``I;16L``, and ``I`` for PNG,
  PNM and unsigned 16-bit TIFF files) are divided by 65535, not clipped to 255;
* 48/64-bit RGB(A) PNG and TIFF files, which Pillow decodes to 8 bits per channel
  (the high byte), keep their colours at 8-bit precision;
* 32-bit float images (mode ``F``) are used as they are when every value is finite
  and in [0, 1];
* the EXIF orientation tag is applied (as photo viewers and
  ``PIL.ImageOps.exif_transpose`` do).

Anything that cannot be converted faithfully is refused with a ``ValueError`` naming
the file and its mode: float images outside [0, 1] or with NaN, integer images whose
value range is unknown (32-bit, signed), files Pillow cannot decode (for instance
multi-channel float TIFF). An image over Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``, by default about 89.5 million pixels; Pillow warns
above it and refuses above twice it) raises :class:`ImageTooLargeError`.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor

__all__ = ["ImageTooLargeError", "load_image", "read_image_array"]

#: Modes Pillow converts to RGB without losing information beyond 8-bit rounding.
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "PA", "CMYK", "YCbCr", "HSV", "LAB"}
)
#: Formats whose integer mode ``I`` holds 16-bit samples (0..65535).
_SIXTEEN_BIT_I_FORMATS = frozenset({"PNG", "PPM"})
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT = 258, 339


class ImageTooLargeError(ValueError):
    """An image file is over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _refuse(path: str, mode: str, why: str) -> ValueError:
    return ValueError(f"path: cannot convert {path!r} (Pillow mode {mode!r}) faithfully: {why}")


def _tiff_sample_kind(img: Any) -> Tuple[Optional[int], int]:
    """(bits per sample, sample format: 1 unsigned, 2 signed, 3 float) of a TIFF image."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None, 1
    bits = tags.get(_TIFF_BITS_PER_SAMPLE)
    fmt = tags.get(_TIFF_SAMPLE_FORMAT, 1)
    bits = bits[0] if isinstance(bits, tuple) else bits
    fmt = fmt[0] if isinstance(fmt, tuple) else fmt
    return (int(bits) if bits is not None else None), int(fmt)


def _grey_to_unit(img: Any, path: str, fmt: Optional[str], tiff: Tuple[Optional[int], int]) -> "np.ndarray":
    """Single-channel 16-bit / 32-bit modes -> float32 (H, W) in [0, 1], or refuse."""
    import numpy as np

    mode = img.mode
    if mode.startswith("I;16"):
        if mode not in ("I;16", "I;16L", "I;16B", "I;16N"):
            raise _refuse(path, mode, "signed 16-bit samples have no [0, 1] scale")
        return np.asarray(img).astype(np.float32) / np.float32(65535.0)
    if mode == "I":
        if fmt == "TIFF":
            bits, kind = tiff
            if bits != 16 or kind != 1:
                sign = {1: "unsigned", 2: "signed", 3: "float"}.get(kind, "unknown-format")
                raise _refuse(
                    path, mode, f"{bits}-bit {sign} integer samples have no known value range; "
                    "save the image as 8- or 16-bit unsigned, or as float in [0, 1]",
                )
        elif fmt not in _SIXTEEN_BIT_I_FORMATS:
            raise _refuse(path, mode, "32-bit integer samples have no known value range")
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise _refuse(path, mode, f"values in [{a.min():g}, {a.max():g}], expected 16-bit 0..65535")
        return (a / 65535.0).astype(np.float32)
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise _refuse(path, mode, "the float samples contain NaN or infinity")
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            raise _refuse(
                path, mode, f"float samples in [{a.min():g}, {a.max():g}]; expected values in [0, 1] "
                "(rescale the image, e.g. divide by its maximum)",
            )
        return a.copy()
    raise _refuse(path, mode, "this mode has no known conversion to RGB")


def read_image_array(
    path: Union[str, "os.PathLike[str]"], *, exif_orientation: bool = True
) -> "np.ndarray":
    """Decode an image file to a float32 RGB array in [0, 1] (see the module docstring).

    Parameters
    ----------
    path : str or path-like
    exif_orientation : bool, default True
        Apply the EXIF orientation tag (rotate / mirror as photo viewers do). Turn it off
        for annotations made on the stored pixel grid.

    Returns
    -------
    ndarray of shape (H, W, 3), float32 in [0, 1]

    Raises
    ------
    FileNotFoundError
        No such file.
    ImageTooLargeError
        Over Pillow's decompression-bomb limit (a ``ValueError``).
    ValueError
        Not an image Pillow can read, or not convertible faithfully (the message names the
        file and its Pillow mode).
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.isfile(p):
        if os.path.isdir(p):
            raise IsADirectoryError(f"path: {p!r} is a folder, expected an image file")
        raise FileNotFoundError(f"path: image file {p!r} does not exist")
    try:
        with Image.open(p) as img:
            fmt = img.format
            img.load()
            tiff = _tiff_sample_kind(img)
            if exif_orientation:
                img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode in _EIGHT_BIT_MODES:
                if mode in ("P", "PA", "LA", "RGBa") or "transparency" in img.info:
                    img = img.convert("RGBA")
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
                return rgb.astype(np.float32) / np.float32(255.0)
            grey = _grey_to_unit(img, p, fmt, tiff)
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{m.group(1)} pixels, " if m else ""
        raise ImageTooLargeError(
            f"path: {p!r} is too large to decode safely ({size}over twice Pillow's "
            f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels); if you trust the file, "
            "raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"path: cannot read {p!r} as an image ({_one_line(exc)})") from None
    return np.repeat(grey[..., None], 3, axis=2)


def _parse_size(size: Any, param: str = "size") -> Optional[Tuple[int, int]]:
    """``None``, an int or ``(height, width)`` of positive ints -> ``(height, width)``."""
    if size is None:
        return None
    from captum_nave._validation import check_int_pair

    return check_int_pair(size, param)


def _resize(x: "Tensor", size: Tuple[int, int]) -> "Tensor":
    """Bilinear, anti-aliased resize of (N, C, H, W) images in [0, 1] (clamped)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def load_image(
    path: Union[str, "os.PathLike[str]"], size: Optional[Union[int, Tuple[int, int]]] = None
) -> "Tensor":
    """Read an image file as an RGB float tensor in [0, 1], as a photo viewer shows it.

    Bit depth, EXIF orientation and limits as described in :mod:`captum_nave.images`.

    Parameters
    ----------
    path : str or path-like
        Any image Pillow reads (PNG, JPEG, TIFF, BMP, GIF, WebP, PNM, ...).
    size : int or (int, int), optional
        ``int``: the shorter side is resized to ``size`` (aspect ratio kept);
        ``(H, W)``: resized to exactly that size. Bilinear with anti-aliasing.

    Returns
    -------
    Tensor of shape (3, H, W), float32 in [0, 1]

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        ``path`` is missing or a folder.
    ImageTooLargeError
        Over Pillow's decompression-bomb limit (a ``ValueError``).
    ValueError
        Unreadable, or not convertible faithfully (the message names the file and mode).
    """
    import torch

    target = _parse_size(size)
    x = torch.from_numpy(read_image_array(path)).permute(2, 0, 1).contiguous()
    if target is None:
        return x
    if isinstance(size, int):
        h, w = x.shape[-2:]
        s = size / min(h, w)
        target = (max(1, round(h * s)), max(1, round(w * s)))
    return _resize(x[None], target)[0]
