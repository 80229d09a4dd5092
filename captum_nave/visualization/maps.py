"""Segment maps and attribution maps side by side, and the per-segment relevance figure."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor


from ._base import (
    METHOD_TITLES,
    _check_same_size,
    _clean,
    _finish,
    _image_hwc,
    _labels_hw,
    _segment_label,
    _setup,
    _to_numpy,
    legend_colors,
    overlay_segments,
    segment_colors,
)


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
