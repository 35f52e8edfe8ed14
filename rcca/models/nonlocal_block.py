"""Non-local block (Wang et al., CVPR 2018), embedded Gaussian version, the paper's baseline."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NonLocal3D(nn.Module):
    """Embedded-Gaussian non-local block: z = x + BN(W softmax(theta(x)^T phi(x)) g(x)).

    Every position attends to all T x H x W positions. The output BatchNorm's weight starts
    at zero, so the block starts as the identity (as in the non-local paper).

    Args:
        channels: C of the input map.
        inner_channels: channels of theta, phi and g (default C / 2).
        subsample: max-pool phi and g by 1 x 2 x 2 (4x fewer keys).

    Shapes: input and output N x C x T x H x W.
    """

    def __init__(self, channels: int, inner_channels: int | None = None, subsample: bool = False) -> None:
        super().__init__()
        inner = inner_channels or channels // 2
        self.theta = nn.Conv3d(channels, inner, kernel_size=1)
        self.phi = nn.Conv3d(channels, inner, kernel_size=1)
        self.g = nn.Conv3d(channels, inner, kernel_size=1)
        self.out = nn.Conv3d(inner, channels, kernel_size=1)
        self.bn = nn.BatchNorm3d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.subsample = subsample
        self.pool = nn.MaxPool3d(kernel_size=(1, 2, 2)) if subsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        n, _, t, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # N x THW x C'
        key = self.pool(self.phi(x)).flatten(2)  # N x C' x L
        value = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # N x L x C'
        attention = torch.softmax(torch.matmul(query, key), dim=-1)  # N x THW x L
        y = torch.matmul(attention, value).transpose(1, 2).reshape(n, -1, t, h, w)
        return x + self.bn(self.out(y))
