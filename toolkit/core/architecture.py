"""Recognising a ResNet/ResNeXt from the names and shapes of its tensors.

Blocks per stage give the depth, ``conv3`` marks bottleneck blocks, the first stage's 3×3 conv
gives groups and width per group (ResNeXt, wide); the stem's convs give the stem and input
channels; ``downsample.1`` marks ResNet-D's average-pool shortcuts and ``se.fc1`` timm's SE blocks;
the head's Linear layers give its layout and the number of classes. What matches nothing is
refused in one sentence that names what was found, and the model family when it is a known other one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from toolkit.core.errors import RtkError
from toolkit.core.models import ARCH_INFO, DEEP_STEM_WIDTHS
from toolkit.core.spec import WIDTHS, HeadLayout, ModelSpec

if TYPE_CHECKING:
    import torch

#: A tensor every torchvision/timm ResNet has; the prefix in front of it is where a network sits.
ANCHOR_KEY = "layer1.0.conv1.weight"


def infer_spec(state: Mapping[str, "torch.Tensor"], path: Path | None = None) -> ModelSpec:
    """Recognise a torchvision/timm ResNet, ResNeXt, ResNet-D or SE-ResNet from its tensors.

    Raises:
        RtkError: naming what was found when it matches no known architecture.
    """
    where = f"{path}" if path else "the checkpoint"
    if ANCHOR_KEY not in state:
        raise not_a_resnet(state, where)
    # The stem's output channels are the network's width (64 unless narrowed); the first block reads them.
    stem, in_chans, base = _infer_stem(state, where)
    anchor = state[ANCHOR_KEY]
    if anchor.ndim != 4 or anchor.shape[1] != base:
        raise RtkError(f"{where} holds an unknown ResNet layout: its stem gives {base} channels but {ANCHOR_KEY} has shape {tuple(anchor.shape)}")

    # Every ResNet block has a conv2; its shape is what tells groups and width apart below.
    conv2 = state.get("layer1.0.conv2.weight")
    if conv2 is None or conv2.ndim != 4:
        found = "no layer1.0.conv2.weight" if conv2 is None else f"a layer1.0.conv2.weight of shape {tuple(conv2.shape)}"
        raise RtkError(f"{where} holds an unknown ResNet layout: it has conv1 and layer1.0.conv1 but {found}")
    layers = tuple(_count_blocks(state, i) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    inner, per_group = int(conv2.shape[0]), int(conv2.shape[1])
    groups = inner // per_group if per_group else 0
    width_per_group = inner // groups * 64 // base if bottleneck and groups else 64

    arch = next(
        (
            info.name
            for info in ARCH_INFO.values()
            if info.layers == layers
            and info.bottleneck == bottleneck
            and (not bottleneck or (info.groups == groups and info.width_per_group == width_per_group))
        ),
        None,
    )
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise RtkError(
            f"{where} holds an unknown ResNet layout: {kind} blocks {list(layers)}, groups {groups}, "
            f"width per group {width_per_group}; known: {', '.join(ARCH_INFO)}"
        )
    head, num_classes = _infer_head(state, ARCH_INFO[arch].feature_dim(base), where)
    return ModelSpec(
        arch=arch, num_classes=num_classes, head=head, in_chans=in_chans, stem=stem,
        downsample=_infer_downsample(state, where), attention=_infer_attention(state, where), width=base,
    )


def _infer_stem(state: Mapping[str, "torch.Tensor"], where: str) -> tuple[str, int, int]:
    """``(stem, in_chans, width)``: one 7×7 or 3×3 conv, or ResNet-D's three 3×3 convs
    (``conv1.0``/``.3``/``.6``); ``width`` is the filters of the last, one of :data:`WIDTHS`."""
    if "maxpool.0.weight" in state:
        # timm's replace_stem_pool: a strided conv + BatchNorm where the max-pool stands (ResNet-RS).
        raise RtkError(
            f"{where} is a ResNet-RS (timm's resnetrs*: a strided 3×3 conv, maxpool.0, replaces the stem's max-pool, with "
            "SE blocks of a quarter width), which rtk does not build; its ResNet-D and SE-ResNet relatives are supported"
        )
    conv1 = state.get("conv1.weight")
    if conv1 is not None:
        if conv1.ndim != 4 or conv1.shape[-1] not in (3, 7) or conv1.shape[0] not in WIDTHS:
            raise RtkError(f"{where} has a conv1 of shape {tuple(conv1.shape)}; expected 64 filters of 7×7 or 3×3 (or 16, 32, 48: a narrowed network)")
        return ("imagenet" if conv1.shape[-1] == 7 else "small"), int(conv1.shape[1]), int(conv1.shape[0])
    deep = [state.get(f"conv1.{i}.weight") for i in (0, 3, 6)]
    if all(t is not None and t.ndim == 4 for t in deep):
        widths = tuple(int(t.shape[0]) for t in deep)
        width = widths[-1] if widths[-1] in WIDTHS else 64
        scaled = {name: tuple(w * width // 64 for w in known) for name, known in DEEP_STEM_WIDTHS.items()}
        stem = next((name for name, known in scaled.items() if known == widths), None)
        if stem is None:
            known = " or ".join(str(w) for w in scaled.values())
            raise RtkError(
                f"{where} has a ResNet-D deep stem of {widths} filters (conv1.0/conv1.3/conv1.6); rtk builds the "
                f"stems of timm's stem_width 32, {known}, not wider ones such as resnet50s"
            )
        return stem, int(deep[0].shape[1]), width
    if "layer0.conv1.weight" in state:
        raise RtkError(
            f"{where} is a legacy SENet/SE-ResNet (layer0.*, se_module.*: Cadene's pretrainedmodels, timm's legacy_* "
            "models), which rtk does not build; timm's seresnet*/seresnext* layout is supported"
        )
    stem_keys = ", ".join(k for k in state if k.startswith("conv1")) or "none"
    raise RtkError(f"{where} has an unknown ResNet stem (found {stem_keys}); expected conv1 (7×7 or 3×3) or ResNet-D's conv1.0/conv1.3/conv1.6")


def _count_blocks(state: Mapping[str, Any], stage: int) -> int:
    prefix = f"layer{stage}."
    indices = {int(k.split(".")[1]) for k in state if k.startswith(prefix) and k.split(".")[1].isdigit()}
    return len(indices)


_SHORTCUT_CONV = re.compile(r"layer\d+\.\d+\.downsample\.(\d+)\.weight")


def _infer_downsample(state: Mapping[str, "torch.Tensor"], where: str) -> str:
    """``conv`` when the shortcut conv is ``downsample.0`` (torchvision), ``avg`` when a pool stands before it (``downsample.1``)."""
    positions = {m.group(1) for k, v in state.items() if (m := _SHORTCUT_CONV.fullmatch(k)) and v.ndim == 4}
    if positions <= {"0"}:
        return "conv"
    if positions == {"1"}:
        return "avg"
    raise RtkError(f"{where} has shortcut convolutions at downsample.{', downsample.'.join(sorted(positions))}; expected downsample.0 (a strided conv) or downsample.1 (after ResNet-D's average pool)")


def _infer_attention(state: Mapping[str, "torch.Tensor"], where: str) -> str | None:
    """``se`` for timm's squeeze-and-excitation blocks (``se.fc1``/``se.fc2``); other block attention is named and refused."""
    attention = sorted({k.split(".se.")[1].split(".")[0] for k in state if k.startswith("layer") and ".se." in k})
    if not attention:
        return None
    if attention == ["fc1", "fc2"]:
        return "se"
    kind = "ECA (timm's ecaresnet*)" if attention == ["conv"] else f"with layers {', '.join(attention)}"
    raise RtkError(f"{where} has block attention {kind}, which rtk does not build; supported: squeeze-and-excitation (se.fc1/se.fc2, timm's seresnet*)")


def _infer_head(state: Mapping[str, "torch.Tensor"], feature_dim: int, where: str) -> tuple[str, int]:
    """The head's layout name and number of classes, from the Linear layers under ``fc``."""
    linears = {k[: -len(".weight")]: v for k, v in state.items() if (k == "fc.weight" or k.startswith("fc.")) and k.endswith(".weight")}
    # The layouts by their keys; an MLP's hidden width (1 here) is read from its first layer.
    for layout in (HeadLayout(), HeadLayout(dropout=True), HeadLayout(1), HeadLayout(1, dropout=True)):
        keys = layout.linear_keys
        if set(linears) != set(keys) or any(linears[k].ndim != 2 for k in keys):
            continue
        first, last = linears[keys[0]], linears[keys[-1]]
        hidden = None if layout.hidden is None else int(first.shape[0])
        if first.shape[1] == feature_dim and (hidden is None or last.shape[1] == hidden):
            return HeadLayout(hidden, layout.dropout).name, int(last.shape[0])
    if not linears:
        raise RtkError(
            f"{where} has no classification head (no fc weights: a feature extractor, such as timm's num_classes=0); "
            "rtk needs the classifier's weights too"
        )
    found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in state.items() if k.startswith("fc"))
    raise RtkError(
        f"{where} has an unknown classification head (found {found}); expected fc ({feature_dim} inputs), "
        f"fc.1 after a Dropout, or an MLP fc.0/fc.2 or fc.0/fc.3 with a Dropout ({feature_dim}→hidden→classes)"
    )


#: Tensor-name markers of other model families, for naming them in a refusal.
_FAMILIES = (
    ("patch_embed.", "a Vision Transformer (patch_embed.*)"),
    ("regnet.encoder.", "a Hugging Face transformers RegNet (regnet.*)"),
    ("bit.encoder.", "a Hugging Face transformers BiT/ResNetV2 (bit.*)"),
    ("convnext.encoder.", "a Hugging Face transformers ConvNeXt (convnext.*)"),
    ("embedder.embedder.", "a Hugging Face transformers ResNet-style network (embedder.*, encoder.stages.*)"),
    ("encoder.layer.", "a Hugging Face transformer (encoder.layer.*)"),
    ("layer0.", "a legacy SENet/SE-ResNet (layer0.*)"),
    ("stages.", "a ConvNeXt/RegNet/ResNetV2-style network (stages.*)"),
    ("trunk_output.", "a torchvision RegNet (trunk_output.*)"),
    ("features.", "a VGG/DenseNet/MobileNet/EfficientNet-style network (features.*)"),
    ("blocks.", "an EfficientNet/MobileNet-style network (blocks.*)"),
)


def not_a_resnet(state: Mapping[str, Any], where: str) -> RtkError:
    """The sentence for tensors that hold no ResNet, naming the model family when it is a known other one."""
    names = [k for k in state if isinstance(k, str)]
    family = next((family for marker, family in _FAMILIES if any(k.startswith(marker) or f".{marker}" in k for k in names)), None)
    what = f"it looks like {family}" if family else f"no conv1/layer1 weights (keys start {', '.join(names[:4])})"
    return RtkError(f"{where} is not a ResNet/ResNeXt state_dict: {what}")
