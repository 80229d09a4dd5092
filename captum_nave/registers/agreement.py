"""Agreement of NAVE maps between two models, and clusters made of outlier tokens.

Two models may see different patch grids (e.g. patch 14 vs 16). Their label
maps are resampled with NEAREST interpolation to a common grid, the finer of
the two in each dimension, and compared per image with the adjusted Rand index
(ARI) and the normalised mutual information (NMI). The same comparison between
two k-means seeds of one model is the noise floor: cross-model agreement is only
meaningful relative to it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_nave._validation import check_int, check_real
from captum_nave.adapters import ViTLayout

from .layout import resolve_blocks

__all__ = [
    "nave_grid_labels",
    "common_grid",
    "resize_label_grid",
    "label_agreement",
    "outlier_cluster_share",
]


def nave_grid_labels(
    model: nn.Module,
    images: Tensor,
    layout: ViTLayout,
    *,
    layer: int = -1,
    n_clusters: int = 5,
    random_state: int = 0,
    **explain_kwargs: Any,
) -> Any:
    """NAVE clustering of one ViT block with the core :class:`LayerClusterExplainer`.

    Parameters
    ----------
    model : nn.Module
    images : Tensor of shape (N, C, H, W)
    layout : ViTLayout
        Gives the block, the number of prefix tokens to drop and the patch size.
    layer : int, default -1
        Block index (the paper uses the output of the last block).
    n_clusters : int, default 5
    random_state : int, default 0
    **explain_kwargs
        Passed to ``LayerClusterExplainer.explain``.

    Returns
    -------
    NaveResult
        ``grid_labels`` of shape (N, h, w) on the patch grid, ``segments`` (N, 1, H, W).
    """
    from captum_nave import LayerClusterExplainer

    blocks = resolve_blocks(model, layout)
    layer = check_int(layer, "layer", low=-len(blocks), high=len(blocks) - 1)
    explainer = LayerClusterExplainer(
        model,
        layers=[blocks[layer]],
        num_prefix_tokens=layout.num_prefix_tokens,
        patch_size=layout.patch_size,
    )
    return explainer.explain(images, n_clusters=n_clusters, random_state=random_state, **explain_kwargs)


def common_grid(grid_a: Sequence[int], grid_b: Sequence[int]) -> Tuple[int, int]:
    """The finer of two grids in each dimension."""
    return (max(int(grid_a[0]), int(grid_b[0])), max(int(grid_a[1]), int(grid_b[1])))


def resize_label_grid(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest resize of integer label maps ``(N, h, w)`` to ``(N, *size)``.

    Uses pixel-centre ("nearest-exact") sampling, so an integer up-scaling repeats
    every cell ``factor`` times.
    """
    from captum_nave.segments import resize_labels

    if labels.dim() != 3:
        raise ValueError(f"labels: expected shape (N, h, w), got {tuple(labels.shape)}")
    return resize_labels(labels.long(), (int(size[0]), int(size[1])))


def label_agreement(
    labels_a: Tensor, labels_b: Tensor, grid: Optional[Sequence[int]] = None
) -> Dict[str, np.ndarray]:
    """Per-image ARI and NMI between two sets of label maps.

    Parameters
    ----------
    labels_a : LongTensor of shape (N, h_a, w_a)
    labels_b : LongTensor of shape (N, h_b, w_b)
    grid : (h, w), optional
        Common grid; by default :func:`common_grid` of the two.

    Returns
    -------
    dict
        ``"ari"`` and ``"nmi"``: float arrays of shape (N,).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    for name, lab in (("labels_a", labels_a), ("labels_b", labels_b)):
        if not isinstance(lab, Tensor) or lab.dim() != 3:
            raise ValueError(
                f"{name}: expected a tensor of shape (N, h, w), got "
                f"{tuple(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__}"
            )
    if labels_a.shape[0] != labels_b.shape[0]:
        raise ValueError(
            f"labels_b: expected {labels_a.shape[0]} label maps like labels_a, got {labels_b.shape[0]}"
        )
    g = common_grid(labels_a.shape[-2:], labels_b.shape[-2:]) if grid is None else grid
    ra = resize_label_grid(labels_a.cpu(), g).reshape(labels_a.shape[0], -1).numpy()
    rb = resize_label_grid(labels_b.cpu(), g).reshape(labels_b.shape[0], -1).numpy()
    ari = np.array([adjusted_rand_score(x, y) for x, y in zip(ra, rb)], dtype=np.float64)
    nmi = np.array([normalized_mutual_info_score(x, y) for x, y in zip(ra, rb)], dtype=np.float64)
    return {"ari": ari, "nmi": nmi}


def outlier_cluster_share(
    labels: Tensor, outlier_mask: Tensor, min_fraction: float = 0.5
) -> np.ndarray:
    """Share of NAVE clusters dominated by high-norm outlier tokens, per image.

    A cluster is dominated when more than ``min_fraction`` of its tokens are
    outliers. Empty cluster ids do not count.

    Parameters
    ----------
    labels : LongTensor of shape (N, h, w)
        NAVE labels on the patch grid of the same model and block.
    outlier_mask : BoolTensor of shape (N, h, w) or (N, h * w)
        Outlier patch tokens of that block.
    min_fraction : float in [0, 1), default 0.5

    Returns
    -------
    ndarray of shape (N,)
    """
    if labels.dim() != 3:
        raise ValueError(f"labels: expected shape (N, h, w), got {tuple(labels.shape)}")
    n = labels.shape[0]
    mask = outlier_mask.reshape(n, -1).bool().cpu()
    lab = labels.reshape(n, -1).cpu()
    if mask.shape != lab.shape:
        raise ValueError(
            f"outlier_mask: expected {lab.shape[1]} tokens per image like labels, got {mask.shape[1]}"
        )
    min_fraction = check_real(min_fraction, "min_fraction", low=0.0, high=1.0, high_open=True)
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        ids = torch.unique(lab[i])
        dominated = 0
        for c in ids:
            members = lab[i] == c
            if mask[i][members].double().mean().item() > min_fraction:
                dominated += 1
        out[i] = dominated / max(len(ids), 1)
    return out
