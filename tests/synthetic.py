"""Synthetic images of shapes on textured backgrounds, with masks and boxes (tests only)."""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor


def textured_background(n: int, size: int, g: torch.Generator) -> Tensor:
    """Random oriented stripes plus noise, random colours: (n, 3, size, size) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        theta = torch.rand(1, generator=g).item() * math.pi
        freq = 1.2 + torch.rand(1, generator=g).item() * 1.0  # period 3-5 px
        stripes = 0.5 + 0.5 * torch.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)))
        c1, c2 = torch.rand(3, generator=g), torch.rand(3, generator=g)
        img = c1[:, None, None] * stripes + c2[:, None, None] * (1 - stripes)
        img = img + 0.1 * torch.randn(3, size, size, generator=g)
        out[i] = img
    return out.clamp(0, 1)


def shape_mask(kind: int, size: int, cy: float, cx: float, r: float) -> Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    if kind == 0:  # disc
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if kind == 1:  # square
        return ((yy - cy).abs() <= r * 0.85) & ((xx - cx).abs() <= r * 0.85)
    # triangle (apex up)
    return (yy - cy <= r * 0.8) & (yy - cy >= -r) & ((xx - cx).abs() <= (yy - cy + r) * 0.6)


def shapes_dataset(n: int, size: int = 48, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images with one shape each.

    Returns
    -------
    images : (n, 3, size, size) in [0, 1]
    masks : (n, size, size) bool, the shape's pixels
    labels : (n,) shape kind 0..2
    boxes : (n, 4) float xyxy (continuous, exclusive max) of the shape
    """
    g = torch.Generator().manual_seed(seed)
    images = textured_background(n, size, g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    labels = torch.randint(0, 3, (n,), generator=g)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        r = size * (0.18 + 0.1 * torch.rand(1, generator=g).item())
        cy = r + 2 + torch.rand(1, generator=g).item() * (size - 2 * r - 4)
        cx = r + 2 + torch.rand(1, generator=g).item() * (size - 2 * r - 4)
        m = shape_mask(int(labels[i]), size, cy, cx, r)
        colour = torch.rand(3, generator=g)
        # the shape: a flat colour with mild noise, no stripes
        fill = colour[:, None, None] + 0.05 * torch.randn(3, size, size, generator=g)
        images[i] = torch.where(m, fill.clamp(0, 1), images[i])
        masks[i] = m
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return images, masks, labels, boxes
