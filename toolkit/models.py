"""The model zoo: torchvision's ResNet/ResNeXt builders adapted to a :class:`ModelSpec`.

Networks always come from torchvision's own builders; only the stem and the head are
swapped to match the spec. ``create_model(spec)`` is the one entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from toolkit.errors import RtkError
from toolkit.spec import ARCHS, ModelSpec

if TYPE_CHECKING:
    import torch.nn as nn

#: Hidden width of the ``mlp1024`` head.
MLP_HIDDEN = 1024


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

    @property
    def feature_dim(self) -> int:
        return 2048 if self.bottleneck else 512


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


def _builder(arch: str) -> Callable[..., "nn.Module"]:
    import torchvision.models as tvm

    return getattr(tvm, arch)


def create_model(spec: ModelSpec) -> "nn.Module":
    """Build the network a spec describes, with freshly initialised weights.

    Args:
        spec: architecture, classes, head, input channels and stem.

    Returns:
        A torchvision ResNet in training mode whose ``state_dict`` keys follow torchvision's
        naming (``conv1``, ``layer1.0.conv1``, …, ``fc`` or ``fc.0``/``fc.2``).
    """
    import torch.nn as nn

    if spec.arch not in ARCH_INFO:
        raise RtkError(f"unknown architecture {spec.arch!r}; choose one of {', '.join(ARCHS)}")
    model = _builder(spec.arch)(weights=None, num_classes=spec.num_classes)
    if spec.stem == "small":
        model.conv1 = nn.Conv2d(spec.in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.in_chans != 3:
        model.conv1 = nn.Conv2d(spec.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if spec.head == "mlp1024":
        model.fc = make_head(spec.head, model.fc.in_features, spec.num_classes)
    _reinit_stem(model)
    return model


def make_head(head: str, in_features: int, num_classes: int) -> "nn.Module":
    """A classification head: ``fc`` is one Linear, ``mlp1024`` is Linear→1024, ReLU, Linear."""
    import torch.nn as nn

    if head == "fc":
        return nn.Linear(in_features, num_classes)
    if head == "mlp1024":
        return nn.Sequential(nn.Linear(in_features, MLP_HIDDEN), nn.ReLU(inplace=True), nn.Linear(MLP_HIDDEN, num_classes))
    raise RtkError(f"unknown head {head!r}")


def head_module(model: "nn.Module") -> "nn.Module":
    """The classification head of a zoo model (replaced in transfer learning)."""
    return model.fc


def _reinit_stem(model: "nn.Module") -> None:
    # A replaced conv1 gets torchvision's own initialisation (kaiming normal, fan_out).
    import torch.nn as nn

    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")


def count_parameters(model: "nn.Module") -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
