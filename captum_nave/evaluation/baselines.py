"""Model-free baselines for the CorLoc evaluation, scored with the same selection.

* :class:`SlicSegmenter` -- SLIC superpixels (scikit-image), the paper's baseline
  (Table 1: "SLIC (outer-box)" / "SLIC (inner-box)").
* :class:`GridSegmenter` -- a regular ``rows x cols`` grid: the floor any
  method should beat, showing how much the oracle selection alone achieves.

The paper does not state its SLIC settings; by default ``n_segments`` equals
NAVE's K = 5 so that both produce comparably many regions, with
scikit-image's default compactness (10) and no smoothing.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import numpy as np

from captum_nave._validation import check_int, check_real
from .segmenters import _check_image, _pair, padded_size

__all__ = ["SlicSegmenter", "GridSegmenter", "slic_labels", "grid_labels"]


def _pad_labels(labels: np.ndarray, multiple: Union[int, Sequence[int]]) -> np.ndarray:
    """Extend a label map to the padded size; the padding gets its own id."""
    h, w = labels.shape
    hp, wp = padded_size(h, w, multiple)
    if (hp, wp) == (h, w):
        return labels
    out = np.full((hp, wp), labels.max() + 1, dtype=np.int64)
    out[:h, :w] = labels
    return out


def slic_labels(
    image: np.ndarray,
    n_segments: int = 5,
    compactness: float = 10.0,
    sigma: float = 0.0,
    random_state: Any = None,
) -> np.ndarray:
    """SLIC superpixels of an RGB image.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    n_segments : int, default 5
        Approximate number of superpixels.
    compactness : float, default 10.0
        Colour versus space trade-off (scikit-image's default).
    sigma : float, default 0.0
        Gaussian pre-smoothing width.
    random_state : ignored
        SLIC is deterministic; accepted for a uniform interface.

    Returns
    -------
    labels : ndarray of shape (H, W), int64, ids from 0
    """
    from skimage.segmentation import slic

    img = _check_image(image)
    n_segments = check_int(n_segments, "n_segments", low=1)
    compactness = check_real(compactness, "compactness", low=0.0, low_open=True)
    sigma = check_real(sigma, "sigma", low=0.0)
    labels = slic(
        img,
        n_segments=n_segments,
        compactness=float(compactness),
        sigma=float(sigma),
        start_label=0,
        channel_axis=-1,
    )
    return np.asarray(labels, dtype=np.int64)


def grid_labels(height: int, width: int, rows: int = 3, cols: int = 3) -> np.ndarray:
    """A ``rows x cols`` grid of (nearly) equal cells as a label map (H, W), int64."""
    for name, v in (("height", height), ("width", width), ("rows", rows), ("cols", cols)):
        check_int(v, name, low=1)
    r = (np.arange(height) * rows) // height
    c = (np.arange(width) * cols) // width
    return (r[:, None] * cols + c[None, :]).astype(np.int64)


class SlicSegmenter:
    """SLIC superpixels as a segmenter (see :func:`slic_labels`).

    Parameters
    ----------
    n_segments : int, default 5
    compactness : float, default 10.0
    sigma : float, default 0.0
    pad_multiple : int or (int, int), default 1
        Pad the label map like the model input (the padding forms its own segment).
    """

    def __init__(
        self,
        n_segments: int = 5,
        compactness: float = 10.0,
        sigma: float = 0.0,
        pad_multiple: Union[int, Sequence[int]] = 1,
    ) -> None:
        self.n_segments = check_int(n_segments, "n_segments", low=1)
        self.compactness = check_real(compactness, "compactness", low=0.0, low_open=True)
        self.sigma = check_real(sigma, "sigma", low=0.0)
        self.pad_multiple = _pair(pad_multiple, "pad_multiple")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Label map (H', W') int64 of an RGB uint8 image (H, W, 3)."""
        lab = slic_labels(image, self.n_segments, self.compactness, self.sigma)
        return _pad_labels(lab, self.pad_multiple)

    def config(self) -> Dict[str, Any]:
        """Settings (checked when a run is resumed)."""
        return {
            "method": "slic",
            "n_segments": self.n_segments,
            "compactness": self.compactness,
            "sigma": self.sigma,
            "pad_multiple": list(self.pad_multiple),
        }


class GridSegmenter:
    """A regular grid as a segmenter (see :func:`grid_labels`).

    Parameters
    ----------
    rows, cols : int, default 3
    pad_multiple : int or (int, int), default 1
    """

    def __init__(
        self, rows: int = 3, cols: int = 3, pad_multiple: Union[int, Sequence[int]] = 1
    ) -> None:
        grid_labels(1, 1, rows, cols)  # validates rows / cols
        self.rows = rows
        self.cols = cols
        self.pad_multiple = _pair(pad_multiple, "pad_multiple")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Label map (H', W') int64 for an RGB uint8 image (H, W, 3)."""
        img = _check_image(image)
        lab = grid_labels(img.shape[0], img.shape[1], self.rows, self.cols)
        return _pad_labels(lab, self.pad_multiple)

    def config(self) -> Dict[str, Any]:
        """Settings (checked when a run is resumed)."""
        return {
            "method": "grid",
            "rows": self.rows,
            "cols": self.cols,
            "pad_multiple": list(self.pad_multiple),
        }
