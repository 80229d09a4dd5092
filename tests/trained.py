"""Tiny models trained in seconds (tests only).

* :class:`ShapeNet` finds shapes on textured backgrounds (a coarse mask per pixel);
* :func:`bars_classifier` tells horizontal from vertical bars on noise (2 classes),
  used by the model-randomisation sanity checks.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from synthetic import shapes_dataset


class ShapeNet(nn.Module):
    """Three conv stages and a 1x1 head predicting a coarse shape mask."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))))


def train_shape_net(steps: int = 120, seed: int = 0):
    """Return (trained net, the same net at its random initialisation), both in eval mode."""
    torch.manual_seed(seed)
    net = ShapeNet()
    random_init = copy.deepcopy(net)
    x, m, _, _ = shapes_dataset(400, 48, seed=seed)
    target = F.avg_pool2d(m[:, None].float(), 2)
    fit(net, x, target, F.binary_cross_entropy_with_logits, steps=steps, lr=1e-2, seed=seed)
    return net.eval(), random_init.eval()


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, *, steps: int, lr: float, seed: int,
        batch: int = 32, one_cycle: bool = False) -> nn.Module:
    """Adam on random mini-batches (seeded), optionally with a one-cycle learning rate."""
    opt = torch.optim.Adam(net.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15) if one_cycle else None
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = loss_fn(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return net.eval()


def _stamp(n: int, size: int, seed: int, n_classes: int, margin: Tuple[int, int], region) -> Tuple[torch.Tensor, ...]:
    """Noise images with one bright region per image, ``region(label, cy, cx) -> (rows, cols)`` slices."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        cy, cx = torch.randint(margin[0], margin[1], (2,), generator=g).tolist()
        rows, cols = region(int(y[i]), cy, cx)
        masks[i, rows, cols] = True
        colour = 0.5 + torch.rand(3, generator=g)
        x[i][:, masks[i]] += colour[:, None]
    return x, masks, y


def bars(n: int, size: int = 32, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images with one bright bar: class 0 horizontal, class 1 vertical.

    Returns (images (n, 3, size, size), bar masks (n, size, size) bool, labels (n,)).
    """
    length, width = 14, 4

    def region(label: int, cy: int, cx: int):
        if label == 0:
            return slice(cy - width // 2, cy + width // 2), slice(cx - length // 2, cx + length // 2)
        return slice(cy - length // 2, cy + length // 2), slice(cx - width // 2, cx + width // 2)

    return _stamp(n, size, seed, 2, (length // 2 + 1, size - length // 2 - 1), region)  # type: ignore[return-value]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


def tiny_classifier() -> nn.Sequential:
    """stage1 - pool1 - stage2 - pool2 - stage3 - gap - flat - fc (2 classes)."""
    return nn.Sequential(OrderedDict(
        stage1=_block(3, 16), pool1=nn.MaxPool2d(2), stage2=_block(16, 32), pool2=nn.MaxPool2d(2),
        stage3=_block(32, 32), gap=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(32, 2),
    ))


def bars_classifier(steps: int = 60, seed: int = 0):
    """Train :func:`tiny_classifier` on 400 bar images (~2 s).

    Returns (net in eval mode, 16 held-out images, their labels, accuracy on 64 fresh test images).
    """
    torch.manual_seed(seed)
    net = tiny_classifier()
    x, _, y = bars(416, seed=seed)
    fit(net, x[:400], y[:400], F.cross_entropy, steps=steps, lr=1e-2, seed=seed)
    test_x, _, test_y = bars(64, seed=seed + 1)
    with torch.no_grad():
        accuracy = (net(test_x).argmax(1) == test_y).float().mean().item()
    return net, x[400:], y[400:], accuracy


def bar_shapes(n: int, seed: int = 0, size: int = 32) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images with one bright shape: 0 horizontal bar (4 x 16), 1 vertical bar, 2 square (10 x 10).

    Returns (images (n, 3, size, size), shape masks (n, size, size) bool, labels (n,)).
    """
    def region(label: int, cy: int, cx: int):
        half = [(2, 8), (8, 2), (5, 5)][label]
        return slice(cy - half[0], cy + half[0]), slice(cx - half[1], cx + half[1])

    return _stamp(n, size, seed, 3, (9, size - 9), region)  # type: ignore[return-value]


def shape_vit(steps: int = 300, seed: int = 0, size: int = 32):
    """A tiny timm ViT (CLS token, 3 blocks, 4-pixel patches, average pooling of the patch
    tokens without fc_norm) trained to name the shape in :func:`bar_shapes` images (~25 s on
    2 cores; one-cycle learning rate).

    Returns (trained ViT, the same ViT at its random initialisation, 100 held-out images,
    their labels, their shape masks (100, size, size), held-out accuracy); both in eval mode.
    """
    import timm

    torch.manual_seed(seed)
    net = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=size, patch_size=4, depth=3, embed_dim=32,
        num_heads=2, mlp_ratio=2.0, num_classes=3, global_pool="avg", fc_norm=False,
    )
    random_init = copy.deepcopy(net).eval()
    x, _, y = bar_shapes(600, seed=seed, size=size)
    test_x, test_masks, test_y = bar_shapes(100, seed=seed + 1, size=size)
    fit(net, x, y, F.cross_entropy, steps=steps, lr=3e-3, seed=seed, one_cycle=True)
    with torch.no_grad():
        accuracy = (net(test_x).argmax(1) == test_y).float().mean().item()
    return net, random_init, test_x, test_y, test_masks, accuracy
