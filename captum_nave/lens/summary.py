"""Numbers of a :class:`~captum_nave.lens.LensResult` for tables: per layer, per image, per segment."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .projection import LensResult

__all__ = ["lens_available", "layer_rows", "image_measures", "segment_rows", "LAYER_COLUMNS", "SEGMENT_COLUMNS"]

#: Columns of :func:`layer_rows`.
LAYER_COLUMNS: List[str] = ["model", "layer", "patches", "cls", "registers"]
#: Columns of :func:`segment_rows`.
SEGMENT_COLUMNS: List[str] = ["model", "image", "image_name", "segment", "tokens", "first_layer", "last_layer_share"]


def lens_available(model: nn.Module) -> bool:
    """Whether :func:`~captum_nave.lens.class_lens` can read the model (a ViT with a classifier head)."""
    from ._spec import lens_spec

    try:
        lens_spec(model)
    except (ValueError, TypeError):
        return False
    return True


def _group(lens: LensResult, group: str, per_image: bool = False) -> Optional[Tensor]:
    try:
        return lens.identifiability(group, per_image=per_image)
    except ValueError:
        return None


def layer_rows(lens: LensResult, model: str = "") -> List[Dict[str, Any]]:
    """Per block: share of patch tokens, CLS and register tokens whose top class is the explained one."""
    groups = {g: _group(lens, g) for g in ("patches", "cls", "registers")}
    rows = []
    for layer in range(lens.n_layers):
        row: Dict[str, Any] = {"model": model, "layer": layer}
        for g, v in groups.items():
            row[g] = float(v[layer]) if v is not None else math.nan
        rows.append(row)
    return rows


def image_measures(lens: LensResult, layer: int = -1) -> Dict[str, np.ndarray]:
    """Per image (N,): the lens at block ``layer`` and the CLS token's first identifying block.

    * ``lens_patches``: share of patch tokens with the explained class on top;
    * ``lens_registers``: the same for the register tokens (NaN without registers);
    * ``lens_cls_first_layer``: first block from which the CLS token keeps the class on
      top (NaN without CLS, or when it never does).
    """
    li = lens._layer(layer)
    out: Dict[str, np.ndarray] = {}
    patches = _group(lens, "patches", per_image=True)
    out["lens_patches"] = patches[li].numpy() if patches is not None else np.full(lens.rank.shape[1], np.nan)
    regs = _group(lens, "registers", per_image=True)
    out["lens_registers"] = regs[li].numpy() if regs is not None else np.full(lens.rank.shape[1], np.nan)
    n = lens.rank.shape[1]
    first = np.full(n, np.nan)
    if lens.spec.layout.has_cls:
        ok = lens.rank[:, :, int(lens.spec.layout.cls_index)] == 0  # (L, N)
        tail = torch.flip(torch.cummin(torch.flip(ok.to(torch.int8), dims=[0]), dim=0).values, dims=[0]).bool()
        for i in range(n):
            if bool(tail[:, i].any()):
                first[i] = float(int(tail[:, i].to(torch.int8).argmax()))
    out["lens_cls_first_layer"] = first
    return out


def segment_rows(
    lens: LensResult, segments: Tensor, *, model: str = "", image_names: Optional[List[str]] = None,
    threshold: float = 0.5,
) -> List[Dict[str, Any]]:
    """Per image and NAVE segment: its patch tokens, the first block from which it identifies
    the class (-1: never) and the share of its tokens with the class on top at the last block."""
    frac, counts = lens.segment_identifiability(segments)
    first = lens.segment_first_layer(segments, threshold)
    rows = []
    for i in range(frac.shape[0]):
        for k in range(frac.shape[1]):
            if int(counts[i, k]) == 0:
                continue
            rows.append({
                "model": model, "image": i, "image_name": image_names[i] if image_names else f"image {i}",
                "segment": k, "tokens": int(counts[i, k]), "first_layer": int(first[i, k]),
                "last_layer_share": float(frac[i, k, -1]),
            })
    return rows
