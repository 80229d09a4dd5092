"""Working memory of a clustering grid, and the one check made before a large one is built.

Clustering at a fine grid (``resolution="input"`` on a large photo, or an explicit
``(h, w)``) keeps a few maps of the grid's size: one scale per layer and the squared
norms (the feature dtype), the k-means++ distances to the chosen centres (feature
dtype) and their float64 cumulative sum, the labels of the Lloyd iterations, the
labels of the images still iterating, the segment ids and their renumbering (int64);
and, when the grid is not the input's, the int64 segment map at input resolution.
Every other temporary is a tile of rows of bounded size
(:data:`captum_nave.layer_features.CHUNK_ELEMENTS`), whatever K and the grid, so
there is no limit on the number of pixels beyond this memory (k-means++ draws by a
cumulative sum, not with ``torch.multinomial`` and its 2**24 categories).

:func:`check_grid_memory` refuses a grid whose maps would not fit in the memory
available now, before the forward pass when the grid is known (before the features for
``resolution="layer"``), naming the parameter, the memory it needs and the memory
available. It is the only grid check of NAVE's implicit clusterers; an estimator with
``fit_predict`` is also limited by the size of its explicit matrix
(:func:`captum_nave.clustering.check_grid_size`).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import torch

__all__ = ["GridMemoryError", "grid_bytes_per_pixel", "available_bytes", "check_grid_memory"]


class GridMemoryError(ValueError, MemoryError):
    """A clustering grid needs more memory than is available.

    A ``ValueError`` (a parameter the user chose: the CLI reports it in one line, exit
    code 2) and a ``MemoryError`` (what it is about).
    """


def grid_bytes_per_pixel(n_layers: int, itemsize: int = 4) -> int:
    """Bytes of working memory per grid pixel (and image) of NAVE's k-means path.

    ``n_layers + 2`` maps of the feature dtype (scales, squared norms, k-means++
    distances), five int64 maps (labels, labels of the images still iterating, segment
    ids, their renumbering, one temporary) and the float64 cumulative weights of the
    k-means++ draws: 60 bytes for one float32 layer (measured: about 60, see
    ``tests/test_memory.py``).
    """
    return int(itemsize) * (int(n_layers) + 2) + 8 * 5 + 8


def available_bytes(device: Any = None) -> Optional[int]:
    """Free memory of ``device`` in bytes (CUDA's free memory, Linux ``MemAvailable``), or None if unknown."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except RuntimeError:
            return None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_grid_memory(
    grid: Tuple[int, int],
    n_images: int,
    *,
    n_layers: int,
    itemsize: int = 4,
    input_hw: Optional[Tuple[int, int]] = None,
    device: Any = None,
    param: str = "resolution",
    limit: Optional[int] = None,
) -> int:
    """Refuse a clustering whose per-pixel maps cannot fit in the memory available.

    Parameters
    ----------
    grid : (int, int)
        Clustering grid ``(h, w)``.
    n_images : int
        Images clustered in one call (or seeded together).
    n_layers : int
        Layers whose scales are kept per pixel.
    itemsize : int
        Bytes per feature value.
    input_hw : (int, int), optional
        Input size: an int64 segment map per input pixel is added when it differs from
        ``grid``.
    device : torch.device or str, optional
        Where the maps live (default: the CPU).
    param : str
        The parameter (and value) to name in the message.
    limit : int, optional
        Bytes available; default :func:`available_bytes` (nothing is refused when it is
        unknown).

    Returns
    -------
    int
        The estimated bytes.

    Raises
    ------
    GridMemoryError
        (a ``ValueError`` and a ``MemoryError``) naming ``param``, the grid, the memory
        needed and the memory available.
    """
    h, w = int(grid[0]), int(grid[1])
    n = int(n_images)
    per_pixel = grid_bytes_per_pixel(n_layers, itemsize)
    need = n * h * w * per_pixel
    if input_hw is not None and (int(input_hw[0]), int(input_hw[1])) != (h, w):
        need += n * int(input_hw[0]) * int(input_hw[1]) * 8
    if limit is None:
        limit = available_bytes(device)
    if limit is not None and need > limit:
        batch = f"{n} images x " if n > 1 else ""
        where = torch.device(device) if device is not None else "cpu"
        raise GridMemoryError(
            f"{param}: a clustering grid of {batch}{h}x{w} = {n * h * w} pixels needs about {need / 1e9:.1f} GB "
            f"of working memory ({per_pixel} bytes per grid pixel: labels, per-layer scales, norms, "
            f"k-means++ weights, segments), more than the {limit / 1e9:.1f} GB available on {where}; use "
            "resolution='layer', a coarser grid, fewer images per call or a smaller image"
        )
    return need
