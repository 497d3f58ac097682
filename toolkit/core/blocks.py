"""Squeeze-and-excitation versions of torchvision's ResNet blocks, laid out as timm's SE-ResNets.

The SE layer sits after the last BatchNorm of the residual branch, before the shortcut is added;
its weights are ``layerN.M.se.fc1`` and ``se.fc2`` (1×1 convs), so timm's ``seresnet*`` and
``seresnext*`` state_dicts load as they are. Kept apart from :mod:`toolkit.core.models` because it
imports torch, which a model zoo lookup must not.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck


def se_reduced_channels(channels: int, divisor: int = 8) -> int:
    """The squeeze width of an SE layer: ``channels / 16`` to the nearest multiple of 8, at least 8 (timm's ``make_divisible``)."""
    return max(divisor, int(channels / 16 + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """timm's ``SEModule`` with its defaults: reduction 1/16 rounded to a multiple of 8, ReLU, sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        reduced = se_reduced_channels(channels)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


class SEBasicBlock(BasicBlock):
    """torchvision's BasicBlock with squeeze-and-excitation after ``bn2``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se = SqueezeExcite(self.bn2.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class SEBottleneck(Bottleneck):
    """torchvision's Bottleneck with squeeze-and-excitation after ``bn3``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se = SqueezeExcite(self.bn3.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)
