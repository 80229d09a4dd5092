"""Working memory of a clustering grid, and the check made before a large one is built.

Clustering at a fine grid (``resolution="input"`` on a large photo) keeps a few maps of
the grid's size: one scale per layer and the squared norms (the feature dtype), the
labels of the Lloyd iterations, the segment ids and their renumbering (int64), and
the k-means++ sampling weights (float64). Every other temporary is a tile of rows of
bounded size (:data:`captum_nave.layer_features.CHUNK_ELEMENTS`), whatever K and the grid.
:func:`check_grid_memory` refuses a grid whose maps would not fit in the memory
available, before the forward pass, with the amount it would need.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["grid_bytes_per_pixel", "available_bytes", "check_grid_memory"]


def grid_bytes_per_pixel(n_layers: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of working memory per grid pixel (and image) of NAVE's k-means path.

    ``n_layers + 2`` maps of ``dtype`` (scales, squared norms, k-means++ distances),
    five int64 maps (labels, labels of the images still iterating, segment ids, their
    renumbering, one temporary) and the float64 cumulative weights of the k-means++
    draws: 60 bytes for one float32 layer (measured: about 60).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return itemsize * (n_layers + 2) + 8 * 5 + 8


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device``: CUDA's free memory, or Linux ``MemAvailable``; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_grid_memory(
    n_images: int,
    grid: Tuple[int, int],
    n_layers: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    limit: Optional[int] = None,
) -> int:
    """Raise ``MemoryError`` if clustering ``n_images`` on ``grid`` needs more than ``limit`` bytes.

    ``limit`` defaults to :func:`available_bytes` (no check when unknown). Returns the
    estimated bytes.
    """
    need = int(n_images) * int(grid[0]) * int(grid[1]) * grid_bytes_per_pixel(n_layers, dtype)
    if limit is None:
        limit = available_bytes(device)
    if limit is not None and need > limit:
        raise MemoryError(
            f"resolution: clustering {n_images} image(s) on a {grid[0]}x{grid[1]} grid needs about "
            f"{need / 1e9:.1f} GB of working memory ({grid_bytes_per_pixel(n_layers, dtype)} bytes per "
            f"grid pixel and image), more than the {limit / 1e9:.1f} GB available on {device}; use "
            "resolution='layer', a smaller grid (h, w), fewer images per call, or a smaller image"
        )
    return need
