"""Concepts shared across images: the top images of each concept and the gallery."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from captum_nave._validation import check_int

from ._base import (
    _clean,
    _finish,
    _image_hwc,
    _setup,
    _to_numpy,
    segment_boundaries,
    segment_colors,
)


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
