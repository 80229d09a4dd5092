"""A tiny CNN trained in seconds to find shapes on textured backgrounds (tests only)."""

from __future__ import annotations

import copy

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
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = F.binary_cross_entropy_with_logits(net(x[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), random_init.eval()
