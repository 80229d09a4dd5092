"""Colours, input checks, overlays and the figure helpers shared by every figure."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from captum_nave._validation import check_int

#: Okabe-Ito colours (orange, sky blue, bluish green, yellow, blue, vermillion,
#: reddish purple, black), RGB in [0, 1].
OKABE_ITO: Tuple[Tuple[float, float, float], ...] = tuple(
    tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[misc]
    for h in ("E69F00", "56B4E9", "009E73", "F0E442", "0072B2", "D55E00", "CC79A7", "000000")
)

#: Paul Tol's muted scheme (indigo, cyan, teal, green, olive, sand, rose, wine, purple).
TOL_MUTED: Tuple[Tuple[float, float, float], ...] = tuple(
    tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[misc]
    for h in ("332288", "88CCEE", "44AA99", "117733", "999933", "DDCC77", "CC6677", "882255", "AA4499")
)

_BASE = np.array(OKABE_ITO + TOL_MUTED, dtype=np.float64)

#: Display names of attribution methods in figure titles.
METHOD_TITLES: Dict[str, str] = {
    "nave": "NAVE",
    "gradcam": "Grad-CAM",
    "grad_cam": "Grad-CAM",
    "ig": "IG",
    "integrated_gradients": "Integrated Gradients",
    "lrp": "LRP",
    "ablation": "Feature ablation",
}


# --------------------------------------------------------------------------- colours
def segment_colors(n: int) -> np.ndarray:
    """Colours of segment ids ``0..n-1`` (see the module docstring for the palette).

    Parameters
    ----------
    n : int
        Number of ids (>= 0).

    Returns
    -------
    ndarray of shape (n, 3), float64 RGB in [0, 1]
        Row ``i`` is always the colour of id ``i``, whatever ``n`` is.
    """
    n = check_int(n, "n", low=0)
    out = np.empty((int(n), 3))
    m = len(_BASE)
    for i in range(int(n)):
        base = _BASE[i % m]
        cycle = i // m
        if cycle == 0:
            out[i] = base
        else:
            towards = 1.0 if cycle % 2 == 1 else 0.0  # white, black, white, ...
            mix = min(0.4 * ((cycle + 1) // 2), 0.8)
            out[i] = base * (1 - mix) + towards * mix
    return out


#: Grey that legend swatches are blended over (what a segment looks like on a neutral area).
NEUTRAL_GREY = 0.5


def legend_colors(n: int, alpha: float = 0.45, background: float = NEUTRAL_GREY) -> np.ndarray:
    """Colours of legend swatches that match translucent overlays.

    :func:`overlay_segments` mixes ``alpha * colour + (1 - alpha) * image``; the swatch of
    id ``i`` is that mix over a neutral grey ``background``, so a legend entry has the
    colour its segment has on a neutral part of the image (a solid palette colour would
    be much more saturated than any overlaid pixel).

    Parameters
    ----------
    n : int
        Number of ids.
    alpha : float in [0, 1]
        The overlay's ``alpha``.
    background : float in [0, 1]
        Grey level of the neutral background.

    Returns
    -------
    ndarray of shape (n, 3), float64 RGB in [0, 1]
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a float in [0, 1], got {alpha!r}")
    if not 0.0 <= float(background) <= 1.0:
        raise ValueError(f"background: expected a grey level in [0, 1], got {background!r}")
    return (1.0 - alpha) * float(background) + alpha * segment_colors(n)


# --------------------------------------------------------------------------- input handling
def _to_numpy(x: Any, param: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu").numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{param}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _image_hwc(image: Any, param: str = "image") -> np.ndarray:
    """(3, H, W) / (1, 3, H, W) / (H, W, 3) in [0, 1] -> float (H, W, 3)."""
    a = _to_numpy(image, param).astype(np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] == 3:
        a = a.transpose(1, 2, 0)
    elif not (a.ndim == 3 and a.shape[-1] == 3):
        raise ValueError(
            f"{param}: expected shape (3, H, W), (1, 3, H, W) or (H, W, 3), got {tuple(a.shape)}"
        )
    if a.size and (np.nanmin(a) < -1e-3 or np.nanmax(a) > 1 + 1e-3):
        raise ValueError(
            f"{param}: expected values in [0, 1] (the image before normalisation), got range "
            f"[{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]"
        )
    return np.clip(a, 0.0, 1.0)


def _labels_hw(segments: Any, param: str = "segments", allow_bool: bool = False) -> np.ndarray:
    """(H, W) / (1, H, W) / (1, 1, H, W) integer labels -> int64 (H, W)."""
    a = _to_numpy(segments, param)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{param}: expected shape (H, W) or (1, H, W), got {tuple(a.shape)}")
    if allow_bool and a.dtype == np.bool_:
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{param}: expected integer segment ids, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{param}: expected non-negative segment ids, got minimum {a.min()}")
    return a.astype(np.int64)


def _check_same_size(img: np.ndarray, lab: np.ndarray, what: str = "segments") -> None:
    if img.shape[:2] != lab.shape:
        raise ValueError(
            f"{what}: expected the image's spatial size {img.shape[:2]}, got {lab.shape}"
        )


def segment_boundaries(labels: Any) -> np.ndarray:
    """Pixels on a segment boundary: those whose label differs from a 4-neighbour.

    Both pixels of a differing pair are marked, so boundaries are two pixels wide;
    the image border is not a boundary.

    Parameters
    ----------
    labels : Tensor or ndarray of shape (H, W) or (1, H, W), integer (or a bool mask)

    Returns
    -------
    ndarray of shape (H, W), bool
    """
    lab = _labels_hw(labels, "labels", allow_bool=True)
    edge = np.zeros(lab.shape, dtype=bool)
    dv = lab[1:, :] != lab[:-1, :]
    dh = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return edge


def overlay_segments(
    image: Any, segments: Any, *, alpha: float = 0.45, boundaries: bool = True,
    boundary_color: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """RGB image with every segment tinted in its palette colour.

    Parameters
    ----------
    image : (3, H, W) tensor/ndarray in [0, 1] (or (H, W, 3))
    segments : (H, W) or (1, H, W) integer ids
    alpha : float in [0, 1]
        Weight of the segment colour.
    boundaries : bool
        Paint :func:`segment_boundaries` in ``boundary_color``.

    Returns
    -------
    ndarray of shape (H, W, 3), float in [0, 1]
    """
    img = _image_hwc(image)
    lab = _labels_hw(segments)
    _check_same_size(img, lab)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a float in [0, 1], got {alpha!r}")
    colors = segment_colors(int(lab.max()) + 1 if lab.size else 0)
    out = (1 - alpha) * img + alpha * colors[lab]
    if boundaries:
        out[segment_boundaries(lab)] = np.asarray(boundary_color, dtype=np.float64)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------- figures
def _new_figure(nrows: int, ncols: int, figsize: Tuple[float, float], show: bool):
    if show:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=figsize, layout="constrained")
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _given_axes(plt_fig_axis: Any, shape: Tuple[int, int]):
    if not (isinstance(plt_fig_axis, tuple) and len(plt_fig_axis) == 2):
        raise TypeError(f"plt_fig_axis: expected a (Figure, Axes) tuple, got {plt_fig_axis!r}")
    fig, axes = plt_fig_axis
    arr = np.asarray(axes, dtype=object)
    if arr.size != shape[0] * shape[1]:
        raise ValueError(
            f"plt_fig_axis: expected {shape[0] * shape[1]} axes ({shape[0]} x {shape[1]}), "
            f"got {arr.size}"
        )
    return fig, arr.reshape(shape)


def _setup(plt_fig_axis: Any, shape: Tuple[int, int], figsize: Tuple[float, float], show: bool):
    if plt_fig_axis is None:
        return _new_figure(shape[0], shape[1], figsize, show)
    return _given_axes(plt_fig_axis, shape)


def _finish(fig: Any, show: bool) -> None:
    if show:
        import matplotlib.pyplot as plt

        plt.show()


def _clean(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _segment_label(k: int, names: Optional[Union[Sequence[str], Mapping[int, str]]]) -> str:
    if names is None:
        return f"segment {k}"
    if isinstance(names, Mapping):
        return str(names.get(k, f"segment {k}"))
    return str(names[k]) if k < len(names) else f"segment {k}"
