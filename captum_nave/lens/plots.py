"""Figures of the class-embedding lens; each returns ``(Figure, Axes)`` and takes ``plt_fig_axis``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_nave.visualization._base import _clean, _finish, _image_hwc, _setup, segment_boundaries, segment_colors

if TYPE_CHECKING:  # pragma: no cover
    from .projection import LensResult

__all__ = ["plot_identifiability", "plot_segment_layers", "plot_layer_tokens", "plot_lens_overview"]


def plot_identifiability(
    lens: "LensResult",
    *,
    top_k: int = 1,
    groups: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    plt_fig_axis: Any = None,
    show: bool = False,
) -> Tuple[Any, Any]:
    """Class identifiability per layer: fraction of tokens whose top class is the explained class.

    One line per token group (patch tokens, CLS, registers as one group), mean over
    images; the dotted line is chance (``top_k / K``).

    Returns
    -------
    (Figure, ndarray of Axes of shape (1, 1))
    """
    fig, axes = _setup(plt_fig_axis, (1, 1), (5.0, 3.2), show)
    ax = axes[0, 0]
    names = list(groups) if groups is not None else ["patches"] + (["cls"] if lens.spec.layout.has_cls else []) + (
        ["registers"] if lens.spec.layout.num_registers else [])
    x = np.arange(lens.n_layers)
    labels = {"patches": "patch tokens", "cls": "CLS token", "registers": "register tokens"}
    for g in names:
        ax.plot(x, lens.identifiability(g, top_k=top_k).numpy(), marker="o", ms=3, label=labels.get(g, g))
    ax.axhline(min(1.0, top_k / lens.num_classes), color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("block", fontsize=8)
    ax.set_ylabel(f"share with the class in the top {top_k}" if top_k > 1 else "share with the class on top", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(x)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title or "class identifiability per block", fontsize=9)
    _finish(fig, show)
    return fig, axes


def plot_segment_layers(
    lens: "LensResult",
    segments: Tensor,
    image_index: int = 0,
    *,
    top_k: int = 1,
    threshold: float = 0.5,
    title: Optional[str] = None,
    plt_fig_axis: Any = None,
    show: bool = False,
) -> Tuple[Any, Any]:
    """Segment x layer heatmap of one image: share of each NAVE segment's tokens that identify the class.

    Rows are the segments present (with their colour), columns the blocks; a black dot
    marks the first layer from which the segment identifies the class (``threshold``).

    Returns
    -------
    (Figure, ndarray of Axes of shape (1, 1))
    """
    frac, counts = lens.segment_identifiability(segments, top_k)
    first = lens.segment_first_layer(segments, threshold, top_k)
    i = int(image_index)
    present = [k for k in range(frac.shape[1]) if int(counts[i, k]) > 0]
    fig, axes = _setup(plt_fig_axis, (1, 1), (0.45 * lens.n_layers + 2.0, 0.4 * len(present) + 1.4), show)
    ax = axes[0, 0]
    data = frac[i, present].numpy()
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
    colors = segment_colors(frac.shape[1])
    ax.set_yticks(range(len(present)))
    ax.set_yticklabels([f"segment {k} ({int(counts[i, k])} tokens)" for k in present], fontsize=7)
    for j, k in enumerate(present):
        ax.get_yticklabels()[j].set_color(colors[k])
        f = int(first[i, k])
        if f >= 0:
            ax.plot(f, j, "o", color="black", ms=4)
    ax.set_xticks(range(lens.n_layers))
    ax.set_xlabel("block", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    ax.set_title(title or "share of each segment's tokens with the class on top", fontsize=9)
    _finish(fig, show)
    return fig, axes


def plot_layer_tokens(
    lens: "LensResult",
    image: Any,
    layer: int = -1,
    image_index: int = 0,
    *,
    segments: Optional[Tensor] = None,
    title: Optional[str] = None,
    plt_fig_axis: Any = None,
    show: bool = False,
) -> Tuple[Any, Any]:
    """The patch tokens of one layer on the image: rank of the explained class per token.

    Tokens whose top class is the explained one are bright; the colour falls with
    ``log(1 + rank)``. NAVE segment boundaries are drawn when ``segments`` are given.

    Returns
    -------
    (Figure, ndarray of Axes of shape (1, 1))
    """
    img = _image_hwc(image)
    h, w = img.shape[:2]
    rank = lens.patch_map(layer, "rank")[int(image_index)].to(torch.float64)
    score = 1.0 - torch.log1p(rank) / np.log1p(max(lens.num_classes - 1, 1))
    up = torch.nn.functional.interpolate(score[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
    fig, axes = _setup(plt_fig_axis, (1, 1), (3.4, 3.4), show)
    ax = axes[0, 0]
    ax.imshow(img.mean(axis=2), cmap="gray", vmin=0, vmax=1)
    im = ax.imshow(up, cmap="magma", vmin=0, vmax=1, alpha=0.65, interpolation="nearest")
    if segments is not None:
        lab = segments[int(image_index), 0].detach().cpu()
        if tuple(lab.shape) != (h, w):
            from captum_nave.segments import resize_labels

            lab = resize_labels(lab, (h, w))
        edges = segment_boundaries(lab.numpy())
        overlay = np.zeros((h, w, 4))
        overlay[edges] = (1.0, 1.0, 1.0, 1.0)
        ax.imshow(overlay)
    _clean(ax)
    li = lens._layer(layer)
    share = float((rank == 0).to(torch.float64).mean())
    ax.set_title(title or f"block {li}: {100 * share:.0f}% of patch tokens with the class on top", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.7, label="1 - log(1 + rank) / log(K)").ax.tick_params(labelsize=6)
    _finish(fig, show)
    return fig, axes


def plot_lens_overview(
    lens: "LensResult",
    image: Any,
    segments: Optional[Tensor] = None,
    image_index: int = 0,
    *,
    layer: int = -1,
    name: str = "",
    plt_fig_axis: Any = None,
    show: bool = False,
) -> Tuple[Any, Any]:
    """Three panels: identifiability per block | segment x block heatmap (with ``segments``) |
    the tokens of block ``layer`` on image ``image_index``.

    Returns
    -------
    (Figure, ndarray of Axes of shape (1, 3))
    """
    fig, axes = _setup(plt_fig_axis, (1, 3), (13.0, 3.6), show)
    prefix = f"{name}: " if name else ""
    plot_identifiability(lens, title=f"{prefix}class identifiability per block", plt_fig_axis=(fig, axes[0, 0]))
    if segments is not None:
        plot_segment_layers(lens, segments, image_index, plt_fig_axis=(fig, axes[0, 1]),
                            title=f"{prefix}NAVE segments of image {image_index}")
    else:
        axes[0, 1].set_axis_off()
    plot_layer_tokens(lens, image, layer, image_index, segments=segments, plt_fig_axis=(fig, axes[0, 2]))
    _finish(fig, show)
    return fig, axes
