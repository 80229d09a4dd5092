"""Figures for NAVE explanations and the attribution maps shown beside them.

Every plotting function returns ``(Figure, Axes)`` (or ``(Figure, ndarray of Axes)``),
accepts ``plt_fig_axis=(fig, axes)`` to draw into existing axes (Captum's convention) and
never opens a window unless ``show=True``. Without ``plt_fig_axis`` the figure is a plain
:class:`matplotlib.figure.Figure` that pyplot does not track (nothing to close, safe
headless); save it with ``fig.savefig(path)``. matplotlib is imported inside the functions.

Colours
-------
Segment ids use one categorical palette everywhere (:func:`segment_colors`), so the same
id has the same colour in every panel of every figure:

* ids 0-7: the Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008), which
  stays distinguishable under the common colour-vision deficiencies; black is last
  because it is the weakest overlay;
* ids 8-16: Paul Tol's "muted" qualitative scheme (https://personal.sron.nl/~pault/);
* ids 17 and above: the 17 colours again, mixed 40 % towards white, then towards black,
  and so on. They remain distinct from each other but are no longer guaranteed to be
  colour-blind safe; prefer K <= 17.

Continuous maps use ``viridis`` (non-negative maps such as Grad-CAM) or ``RdBu_r``
centred at 0 (signed maps such as Integrated Gradients and LRP), both readable with
colour-vision deficiencies, with symmetric limits at the 99th percentile of ``|value|``
of each map so that a few extreme pixels do not wash the map out.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_nave._validation import check_int

__all__ = [
    "OKABE_ITO",
    "TOL_MUTED",
    "segment_colors",
    "legend_colors",
    "segment_boundaries",
    "overlay_segments",
    "plot_segments",
    "plot_side_by_side",
    "plot_segment_relevance",
    "stability_ari",
    "stability_image",
    "plot_stability",
    "concept_top_images",
    "plot_concept_gallery",
]

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


def plot_segments(
    image: Any,
    segments: Any,
    *,
    alpha: float = 0.45,
    boundaries: bool = True,
    legend: bool = True,
    title: Optional[str] = None,
    segment_names: Optional[Union[Sequence[str], Mapping[int, str]]] = None,
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    show: bool = False,
):
    """Overlay a segment map on its image, with boundaries and a legend.

    Parameters
    ----------
    image : Tensor or ndarray of shape (3, H, W), values in [0, 1]
        The image as the model saw it, before normalisation.
    segments : Tensor or ndarray of shape (H, W) or (1, H, W), integer ids
    alpha : float
        Weight of the segment colours.
    boundaries : bool
        Draw segment boundaries (white).
    legend : bool
        One legend entry per id present in the map, in id order; its swatch is the
        segment colour at the same ``alpha`` over neutral grey (:func:`legend_colors`),
        the colour the segment has on a neutral part of the image.
    title : str, optional
    segment_names : sequence or mapping of id to str, optional
        Legend labels; default ``"segment k"``.
    plt_fig_axis : (Figure, Axes), optional
        Draw into this axes.
    show : bool
        Call ``plt.show()``.

    Returns
    -------
    (Figure, Axes)
    """
    img = _image_hwc(image)
    lab = _labels_hw(segments)
    _check_same_size(img, lab)
    fig, axes = _setup(plt_fig_axis, (1, 1), (6.0, 6.0 * img.shape[0] / max(img.shape[1], 1) + 0.6), show)
    ax = axes[0, 0]
    ax.imshow(overlay_segments(img, lab, alpha=alpha, boundaries=boundaries), interpolation="nearest")
    _clean(ax)
    if title is not None:
        ax.set_title(title)
    if legend:
        from matplotlib.patches import Patch

        present = np.unique(lab)
        colors = legend_colors(int(present.max()) + 1 if present.size else 0, alpha)
        handles = [
            Patch(facecolor=colors[k], edgecolor="black", label=_segment_label(int(k), segment_names))
            for k in present
        ]
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
            fontsize="small", borderaxespad=0.0,
        )
    _finish(fig, show)
    return fig, ax


def _draw_heatmap(ax: Any, img: np.ndarray, values: np.ndarray) -> None:
    """Float map over a faded grey copy of the image."""
    grey = img.mean(axis=2)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, alpha=1.0, interpolation="nearest")
    finite = values[np.isfinite(values)]
    lim = float(np.percentile(np.abs(finite), 99)) if finite.size else 0.0
    if lim <= 0:
        lim = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    if finite.size and finite.min() < 0:
        ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7, interpolation="nearest")
    else:
        ax.imshow(values, cmap="viridis", vmin=0, vmax=lim, alpha=0.6, interpolation="nearest")


def _map_hw(maps: Any, i: int, shape: Tuple[int, int], where: str) -> np.ndarray:
    a = _to_numpy(maps, where)
    if a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"{where}: expected maps of shape (N, 1, H, W), got {tuple(a.shape)}")
    m = a[i, 0]
    if m.shape != shape:
        raise ValueError(f"{where}: expected spatial size {shape} (the images'), got {m.shape}")
    return m


def _is_segment_map(method: str, maps: Any) -> bool:
    if method.lower() == "nave":
        return True
    a = maps.dtype if isinstance(maps, (Tensor, np.ndarray)) else None
    if isinstance(maps, Tensor):
        return not maps.is_floating_point() and maps.dtype != torch.bool
    return a is not None and np.issubdtype(a, np.integer)


def plot_side_by_side(
    images: Any,
    panels: Mapping[str, Mapping[str, Any]],
    *,
    models_as: str = "rows",
    image_names: Optional[Sequence[str]] = None,
    alpha: float = 0.45,
    panel_size: float = 2.4,
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    show: bool = False,
):
    """The comparison grid: image | NAVE | Grad-CAM | IG | LRP ..., for images x models.

    Parameters
    ----------
    images : Tensor or ndarray of shape (N, 3, H, W), values in [0, 1]
    panels : mapping ``{model_name: {method_name: maps}}``
        ``maps`` of shape (N, 1, H, W). Integer maps (or method ``"nave"``) are segment
        maps, drawn with the categorical palette and boundaries; float maps are heatmaps
        over a grey copy of the image (``viridis`` for non-negative maps, ``RdBu_r``
        centred at 0 for signed maps; limits at the 99th percentile of ``|value|``).
        Methods appear in the order first seen; a model without a method gets an empty
        panel marked "n/a".
    models_as : "rows" or "columns"
        ``"rows"``: one row per (image, model), columns image | methods.
        ``"columns"``: one row per image, columns image | (model, method) pairs.
    image_names : sequence of str, optional
        Row labels (default ``"image i"``).
    alpha : float
        Weight of segment colours.
    panel_size : float
        Inches per panel.
    plt_fig_axis : (Figure, ndarray of Axes), optional
        Axes to draw into, shaped (rows, cols) as described above.
    show : bool
        Call ``plt.show()``.

    Returns
    -------
    (Figure, ndarray of Axes of shape (rows, cols))
    """
    imgs = _to_numpy(images, "images")
    if imgs.ndim == 3:
        imgs = imgs[None]
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(imgs.shape)}")
    n = imgs.shape[0]
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels: expected a non-empty mapping {model_name: {method_name: maps}}")
    if models_as not in ("rows", "columns"):
        raise ValueError(f"models_as: expected 'rows' or 'columns', got {models_as!r}")
    if image_names is not None and len(image_names) != n:
        raise ValueError(f"image_names: expected {n} names, got {len(image_names)}")
    models = list(panels)
    methods: List[str] = []
    for mname in models:
        if not isinstance(panels[mname], Mapping) or not panels[mname]:
            raise ValueError(f"panels[{mname!r}]: expected a non-empty mapping {{method_name: maps}}")
        for meth in panels[mname]:
            if meth not in methods:
                methods.append(meth)
    names = list(image_names) if image_names is not None else [f"image {i}" for i in range(n)]
    hw = tuple(imgs.shape[-2:])
    if models_as == "rows":
        cells = [[(i, mname, meth) for meth in methods] for i in range(n) for mname in models]
        row_labels = [
            f"{names[i]}\n{mname}" if len(models) > 1 else names[i] for i in range(n) for mname in models
        ]
        row_image = [i for i in range(n) for _ in models]
        col_titles = [METHOD_TITLES.get(m.lower(), m) for m in methods]
    else:
        cells = [[(i, mname, meth) for mname in models for meth in methods] for i in range(n)]
        row_labels = names
        row_image = list(range(n))
        col_titles = [
            f"{mname}\n{METHOD_TITLES.get(m.lower(), m)}" if len(models) > 1 else METHOD_TITLES.get(m.lower(), m)
            for mname in models for m in methods
        ]
    nrows, ncols = len(cells), 1 + len(cells[0])
    fig, axes = _setup(plt_fig_axis, (nrows, ncols), (panel_size * ncols, panel_size * nrows), show)
    for r in range(nrows):
        i = row_image[r]
        img = _image_hwc(imgs[i], f"images[{i}]")
        ax = axes[r, 0]
        ax.imshow(img, interpolation="nearest")
        _clean(ax)
        ax.set_ylabel(row_labels[r], fontsize="small")
        if r == 0:
            ax.set_title("Image")
        for c, (i, mname, meth) in enumerate(cells[r], start=1):
            ax = axes[r, c]
            _clean(ax)
            if r == 0:
                ax.set_title(col_titles[c - 1], fontsize="medium")
            maps = panels[mname].get(meth)
            if maps is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, color="0.5")
                continue
            where = f"panels[{mname!r}][{meth!r}]"
            m = _map_hw(maps, i, hw, where)  # type: ignore[arg-type]
            if _is_segment_map(meth, maps):
                ax.imshow(overlay_segments(img, _labels_hw(m, where), alpha=alpha), interpolation="nearest")
            else:
                _draw_heatmap(ax, img, m.astype(np.float64))
    _finish(fig, show)
    return fig, axes


def plot_segment_relevance(
    relevance: Any,
    *,
    area_share: Optional[Any] = None,
    segment_ids: Optional[Sequence[int]] = None,
    title: Optional[str] = None,
    ylabel: str = "relevance share",
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    show: bool = False,
):
    """Bar chart of per-segment relevance, bars in the segments' palette colours.

    Parameters
    ----------
    relevance : sequence of float or Tensor of shape (K,)
        One value per segment (e.g. the relevance share of
        ``captum_nave.attribution.segment_relevance``).
    area_share : sequence of float or Tensor of shape (K,), optional
        Drawn as a second, hatched grey bar beside each segment's bar.
    segment_ids : sequence of int, optional
        The id of each entry (default ``0..K-1``); decides the colours and labels.
    title, ylabel : str
    plt_fig_axis : (Figure, Axes), optional
    show : bool

    Returns
    -------
    (Figure, Axes)
    """
    rel = np.asarray(_to_numpy(relevance, "relevance") if isinstance(relevance, (Tensor, np.ndarray)) else relevance, dtype=np.float64)
    if rel.ndim != 1 or rel.size == 0:
        raise ValueError(f"relevance: expected a non-empty 1-D sequence, got shape {rel.shape}")
    k = rel.size
    ids = np.arange(k) if segment_ids is None else np.asarray(list(segment_ids), dtype=np.int64)
    if ids.shape != (k,):
        raise ValueError(f"segment_ids: expected {k} ids, got {len(ids)}")
    if (ids < 0).any():
        raise ValueError(f"segment_ids: expected non-negative ids, got {ids.tolist()}")
    area = None
    if area_share is not None:
        area = np.asarray(_to_numpy(area_share, "area_share") if isinstance(area_share, (Tensor, np.ndarray)) else area_share, dtype=np.float64)
        if area.shape != (k,):
            raise ValueError(f"area_share: expected shape ({k},), got {area.shape}")
    fig, axes = _setup(plt_fig_axis, (1, 1), (max(4.0, 0.6 * k + 2), 3.5), show)
    ax = axes[0, 0]
    colors = segment_colors(int(ids.max()) + 1)[ids]
    x = np.arange(k, dtype=np.float64)
    width = 0.4 if area is not None else 0.7
    offset = width / 2 if area is not None else 0.0
    ax.bar(x - offset, rel, width=width, color=colors, edgecolor="black", linewidth=0.6)
    if area is not None:
        from matplotlib.patches import Patch

        ax.bar(x + offset, area, width=width, color="0.85", edgecolor="0.3", hatch="//", linewidth=0.6)
        handles = [
            Patch(facecolor="white", edgecolor="black", label=f"{ylabel} (segment colour)"),
            Patch(facecolor="0.85", edgecolor="0.3", hatch="//", label="area share"),
        ]
        ax.legend(handles=handles, frameon=False, fontsize="small")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([str(int(i)) for i in ids])
    ax.set_xlabel("segment")
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    _finish(fig, show)
    return fig, ax


# --------------------------------------------------------------------------- stability
def _seed_maps(segment_maps: Any, param: str = "segment_maps") -> np.ndarray:
    a = _to_numpy(segment_maps, param)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{param}: expected shape (R, 1, H, W) or (R, H, W), got {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{param}: expected integer segment ids, got dtype {a.dtype}")
    if a.shape[0] < 2:
        raise ValueError(f"{param}: expected maps from at least 2 seeds, got {a.shape[0]}")
    return a.astype(np.int64)


def stability_ari(segment_maps: Any) -> float:
    """Mean adjusted Rand index over all pairs of segment maps (seeds).

    Parameters
    ----------
    segment_maps : Tensor or ndarray of shape (R, 1, H, W) or (R, H, W), integer, R >= 2
        Maps of the same image from R runs (e.g. k-means seeds).

    Returns
    -------
    float
        1.0 when every run gives the same partition (ids may be permuted); about 0 for
        unrelated partitions.
    """
    from sklearn.metrics import adjusted_rand_score

    maps = _seed_maps(segment_maps)
    flat = maps.reshape(maps.shape[0], -1)
    scores = [adjusted_rand_score(flat[a], flat[b]) for a, b in combinations(range(len(flat)), 2)]
    return float(np.mean(scores))


def stability_image(image: Any, segment_maps: Any) -> np.ndarray:
    """Paper Fig. 4: each pixel's segment-mean colour, averaged over seeds.

    For every seed map, each segment is painted with the mean image colour inside it; the
    R painted images are averaged. Stable regions look like a clean posterised image,
    unstable ones blur.

    Parameters
    ----------
    image : (3, H, W) tensor/ndarray in [0, 1]
    segment_maps : (R, 1, H, W) or (R, H, W) integer maps of that image

    Returns
    -------
    ndarray of shape (H, W, 3), float in [0, 1]
    """
    img = _image_hwc(image)
    maps = _seed_maps(segment_maps)
    if maps.shape[1:] != img.shape[:2]:
        raise ValueError(
            f"segment_maps: expected the image's spatial size {img.shape[:2]}, got {maps.shape[1:]}"
        )
    if maps.min() < 0:
        raise ValueError("segment_maps: expected non-negative segment ids")
    flat_img = img.reshape(-1, 3)
    acc = np.zeros_like(flat_img)
    for lab in maps.reshape(maps.shape[0], -1):
        k = int(lab.max()) + 1
        counts = np.bincount(lab, minlength=k).astype(np.float64)
        sums = np.stack([np.bincount(lab, weights=flat_img[:, c], minlength=k) for c in range(3)], axis=1)
        means = sums / np.maximum(counts, 1)[:, None]
        acc += means[lab]
    return (acc / maps.shape[0]).reshape(img.shape)


def plot_stability(
    image: Any,
    segment_maps: Any,
    *,
    alpha: float = 0.45,
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    show: bool = False,
):
    """Stability of NAVE segments over k-means seeds (paper Fig. 4).

    Three panels: the image, the first seed's segments, and :func:`stability_image`; the
    title reports the mean pairwise ARI (:func:`stability_ari`) and the number of seeds.

    Parameters
    ----------
    image : (3, H, W) tensor/ndarray in [0, 1]
    segment_maps : Tensor of shape (R, 1, H, W), integer
        One map per seed, e.g. ``explainer.attribute(x, random_state=s)`` for R seeds.
    plt_fig_axis : (Figure, ndarray of 3 Axes), optional
    show : bool

    Returns
    -------
    (Figure, ndarray of Axes of shape (3,))
    """
    img = _image_hwc(image)
    maps = _seed_maps(segment_maps)
    stab = stability_image(img, maps)
    ari = stability_ari(maps)
    h, w = img.shape[:2]
    fig, axes = _setup(plt_fig_axis, (1, 3), (9.0, 3.0 * h / max(w, 1) + 0.8), show)
    axes = axes[0]
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("Image")
    axes[1].imshow(overlay_segments(img, maps[0], alpha=alpha), interpolation="nearest")
    axes[1].set_title("Segments (seed 1)")
    axes[2].imshow(stab, interpolation="nearest")
    axes[2].set_title(f"Mean over {maps.shape[0]} seeds")
    for ax in axes:
        _clean(ax)
    fig.suptitle(f"Stability over {maps.shape[0]} seeds: mean pairwise ARI = {ari:.3f}")
    _finish(fig, show)
    return fig, axes


# --------------------------------------------------------------------------- concepts
def concept_top_images(concept_maps: Any, n_top: int = 4) -> Dict[int, List[Tuple[int, float]]]:
    """For each concept id, the images where it covers the largest share of pixels.

    Parameters
    ----------
    concept_maps : (N, 1, H, W) or (N, H, W) integer maps with ids shared across images
    n_top : int
        At most this many images per concept; images where the concept is absent are
        never listed.

    Returns
    -------
    dict ``{concept_id: [(image_index, area_share), ...]}``
        Concepts in increasing id order; images by decreasing share (ties: lower index).
    """
    a = _to_numpy(concept_maps, "concept_maps")
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] == 0:
        raise ValueError(f"concept_maps: expected shape (N, 1, H, W) with N >= 1, got {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"concept_maps: expected integer ids, got dtype {a.dtype}")
    n_top = check_int(n_top, "n_top", low=1)
    flat = a.reshape(a.shape[0], -1)
    out: Dict[int, List[Tuple[int, float]]] = {}
    for cid in np.unique(flat):
        share = (flat == cid).mean(axis=1)
        order = sorted(range(len(share)), key=lambda i: (-share[i], i))
        out[int(cid)] = [(int(i), float(share[i])) for i in order[:n_top] if share[i] > 0]
    return out


def plot_concept_gallery(
    images: Any,
    concept_maps: Any,
    *,
    n_top: int = 4,
    dim: float = 0.25,
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    show: bool = False,
):
    """Gallery of concepts (e.g. from ``ConceptClusters``): one row per concept id.

    Each row shows the ``n_top`` images where the concept covers the largest area
    (:func:`concept_top_images`), with the concept's region in full colour outlined in the
    concept's palette colour and everything else dimmed. Cells without an image are blank.

    Parameters
    ----------
    images : (N, 3, H, W) tensor/ndarray in [0, 1]
    concept_maps : (N, 1, H, W) integer maps with ids shared across images
    n_top : int
    dim : float in [0, 1]
        Brightness kept outside the concept.
    plt_fig_axis : (Figure, ndarray of Axes of shape (C, n_top)), optional
        C = number of concept ids present.
    show : bool

    Returns
    -------
    (Figure, ndarray of Axes of shape (C, n_top))
    """
    imgs = _to_numpy(images, "images")
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(imgs.shape)}")
    maps = _to_numpy(concept_maps, "concept_maps")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != (imgs.shape[0],) + tuple(imgs.shape[-2:]):
        raise ValueError(
            f"concept_maps: expected shape ({imgs.shape[0]}, 1, {imgs.shape[2]}, {imgs.shape[3]}) "
            f"to match images, got {tuple(_to_numpy(concept_maps, 'concept_maps').shape)}"
        )
    if not 0.0 <= float(dim) <= 1.0:
        raise ValueError(f"dim: expected a float in [0, 1], got {dim!r}")
    top = concept_top_images(maps, n_top)
    ids = list(top)
    colors = segment_colors(max(ids) + 1)
    h, w = imgs.shape[-2:]
    fig, axes = _setup(plt_fig_axis, (len(ids), n_top), (2.2 * n_top, 2.2 * len(ids) * h / max(w, 1)), show)
    for r, cid in enumerate(ids):
        for c in range(n_top):
            ax = axes[r, c]
            _clean(ax)
            if c == 0:
                ax.set_ylabel(f"concept {cid}", color="black", fontsize="medium")
            if c >= len(top[cid]):
                ax.axis("off")
                continue
            i, share = top[cid][c]
            img = _image_hwc(imgs[i], f"images[{i}]")
            mask = maps[i] == cid
            shown = np.where(mask[..., None], img, img * dim)
            shown[segment_boundaries(mask)] = colors[cid]
            ax.imshow(shown, interpolation="nearest")
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_color(colors[cid])
                s.set_linewidth(3)
            ax.set_title(f"image {i}: {100 * share:.0f}%", fontsize="small")
    _finish(fig, show)
    return fig, axes
