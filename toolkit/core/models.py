"""The model zoo: torchvision's ResNet/ResNeXt adapted to a :class:`ModelSpec`.

The body is always torchvision's ``ResNet`` with its own blocks; the stem, the shortcuts, the
blocks' squeeze-and-excitation and the head are shaped to match the spec (timm's ResNet-D and
SE-ResNet layouts included). ``create_model(spec)`` is the one entry point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from toolkit.core.errors import RtkError
from toolkit.core.spec import ARCHS, HeadLayout, ModelSpec

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class ArchInfo:
    """What identifies an architecture in its tensors.

    Attributes:
        name: torchvision builder name.
        bottleneck: built from Bottleneck blocks (``conv3`` present) rather than BasicBlocks.
        layers: blocks per stage.
        groups: grouped-convolution cardinality (ResNeXt).
        width_per_group: channels per group in the first stage's 3×3 conv (64 for plain ResNet).
    """

    name: str
    bottleneck: bool
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64

    def feature_dim(self, width: int = 64) -> int:
        """Channels of the last stage, which the head reads: 8 × ``width``, × 4 after a bottleneck."""
        return 8 * width * (4 if self.bottleneck else 1)


ARCH_INFO: dict[str, ArchInfo] = {
    info.name: info
    for info in (
        ArchInfo("resnet18", False, (2, 2, 2, 2)),
        ArchInfo("resnet34", False, (3, 4, 6, 3)),
        ArchInfo("resnet50", True, (3, 4, 6, 3)),
        ArchInfo("resnet101", True, (3, 4, 23, 3)),
        ArchInfo("resnet152", True, (3, 8, 36, 3)),
        ArchInfo("resnext50_32x4d", True, (3, 4, 6, 3), 32, 4),
        ArchInfo("resnext101_32x8d", True, (3, 4, 23, 3), 32, 8),
        ArchInfo("resnext101_64x4d", True, (3, 4, 23, 3), 64, 4),
        ArchInfo("wide_resnet50_2", True, (3, 4, 6, 3), 1, 128),
        ArchInfo("wide_resnet101_2", True, (3, 4, 23, 3), 1, 128),
    )
}
assert tuple(ARCH_INFO) == ARCHS


#: Filters of the three convolutions of the ResNet-D stems (timm's ``stem_type``, ``stem_width=32``).
DEEP_STEM_WIDTHS = {"deep": (32, 32, 64), "deep_tiered": (24, 32, 64)}


def create_model(spec: ModelSpec) -> "nn.Module":
    """Build the network a spec describes, with freshly initialised weights.

    The body is torchvision's ``ResNet`` with the spec's blocks, exactly as torchvision's builders
    make it; the stem, the shortcut downsampling, the blocks' attention and the head are then
    shaped to the spec, with timm's layer names and layouts for the ResNet-D and SE variants.

    Args:
        spec: architecture, classes, head, input channels, stem, downsample, attention.

    Returns:
        A ResNet in training mode whose ``state_dict`` keys follow torchvision's naming
        (``conv1``, ``layer1.0.conv1``, …, ``fc`` or ``fc.0``/``fc.2``) and timm's for the variants
        (``conv1.0``/``conv1.3``/``conv1.6``, ``downsample.1``, ``se.fc1``).
    """
    import torch.nn as nn

    if spec.arch not in ARCH_INFO:
        raise RtkError(f"unknown architecture {spec.arch!r}; choose one of {', '.join(ARCHS)}")
    info = ARCH_INFO[spec.arch]
    model = _resnet_class()(
        _block(info.bottleneck, spec.attention), list(info.layers), num_classes=spec.num_classes,
        groups=info.groups, width_per_group=info.width_per_group, width=spec.width,
    )
    width = spec.width
    if spec.stem == "small":
        model.conv1 = nn.Conv2d(spec.in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.stem in DEEP_STEM_WIDTHS:
        model.conv1 = _deep_stem(spec.in_chans, tuple(w * width // 64 for w in DEEP_STEM_WIDTHS[spec.stem]))
    elif spec.in_chans != 3 or width != 64:
        model.conv1 = nn.Conv2d(spec.in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
    shortcuts = _average_pool_shortcuts(model) if spec.downsample == "avg" else []
    if spec.head != "fc":
        model.fc = make_head(spec.head, model.fc.in_features, spec.num_classes)
    _reinit_convs([model.conv1, *shortcuts])
    return model


@functools.cache
def _resnet_class() -> type:
    """torchvision's ``ResNet`` with every stage ``width / 64`` as wide; at width 64 it is torchvision's own.

    torchvision builds stages of 64, 128, 256 and 512 planes; the subclass scales the planes it
    asks each stage for, so its blocks, shortcuts, grouped widths and initialisation stay
    torchvision's. The stem's conv is reshaped by :func:`create_model`; ``bn1`` and ``fc`` here.
    """
    import torch.nn as nn
    from torchvision.models.resnet import ResNet

    class ScaledResNet(ResNet):
        def __init__(self, block, layers, *, width: int, **kwargs):
            object.__setattr__(self, "_width", width)  # before Module.__init__, which _make_layer runs within
            super().__init__(block, layers, **kwargs)
            if width != 64:
                self.bn1 = nn.BatchNorm2d(width)
                self.fc = nn.Linear(self.fc.in_features * width // 64, self.fc.out_features)

        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # the first stage, which reads the stem's output
                self.inplanes = self._width
            return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)

    return ScaledResNet


def make_head(head: str, in_features: int, num_classes: int) -> "nn.Module":
    """A classification head (:class:`~toolkit.core.spec.HeadLayout`): ``fc`` is one Linear, ``mlp1024`` is
    Linear→1024, ReLU, Linear, ``mlp512-dropout`` is Linear→512, ReLU, Dropout, Linear."""
    import torch.nn as nn

    layout = HeadLayout.parse(head)
    if layout.hidden is None:
        linear = nn.Linear(in_features, num_classes)
        return nn.Sequential(nn.Dropout(), linear) if layout.dropout else linear
    hidden = layout.hidden
    middle = [nn.Dropout()] if layout.dropout else []
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), *middle, nn.Linear(hidden, num_classes))


def _deep_stem(in_chans: int, widths: tuple[int, int, int]) -> "nn.Module":
    """timm's deep stem: three 3×3 convs (the first of stride 2) with BatchNorm and ReLU between;
    the model's own ``bn1``, ReLU and max-pool follow, as after the 7×7 conv it replaces."""
    import torch.nn as nn

    a, b, out = widths
    return nn.Sequential(
        nn.Conv2d(in_chans, a, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
        nn.Conv2d(a, b, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
        nn.Conv2d(b, out, 3, stride=1, padding=1, bias=False),
    )


def _average_pool_shortcuts(model: "nn.Module") -> list["nn.Module"]:
    """ResNet-D shortcuts: a 2×2 average pool does the striding, then a stride-1 1×1 conv
    (timm's ``downsample_avg``: ``downsample.0`` pool, ``.1`` conv, ``.2`` BatchNorm).

    Returns:
        The new shortcut modules.
    """
    import torch.nn as nn

    replaced = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            if block.downsample is None:
                continue
            conv, norm = block.downsample
            stride = conv.stride[0]
            pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            block.downsample = nn.Sequential(pool, nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False), norm)
            replaced.append(block.downsample)
    return replaced


def _block(bottleneck: bool, attention: str | None) -> type:
    """torchvision's block class, or its squeeze-and-excitation subclass (:mod:`toolkit.core.blocks`)."""
    if attention is None:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        return Bottleneck if bottleneck else BasicBlock
    from toolkit.core.blocks import SEBasicBlock, SEBottleneck  # lazy: it imports torch, which `rtk --help` must not pay for

    return SEBottleneck if bottleneck else SEBasicBlock


def _reinit_convs(modules: "list[nn.Module]") -> None:
    # Replaced convolutions get torchvision's own initialisation (kaiming normal, fan_out), as
    # every conv the ResNet built itself already has.
    import torch.nn as nn

    for module in (m for root in modules for m in root.modules()):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def count_parameters(model: "nn.Module") -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
