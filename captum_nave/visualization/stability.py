"""Stability of NAVE segments over k-means seeds: ARI, disagreement image, figure."""

from __future__ import annotations

from itertools import combinations
from typing import Any, Optional, Tuple

import numpy as np


from ._base import (
    _clean,
    _finish,
    _image_hwc,
    _setup,
    _to_numpy,
    overlay_segments,
)


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
