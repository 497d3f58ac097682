"""Other libraries' names for torchvision's ResNet, renamed to torchvision's.

- **Hugging Face transformers** ``ResNetForImageClassification`` (the microsoft/resnet-* models):
  torchvision's ResNet (v1.5, stride in the 3×3 conv) under other names: ``resnet.embedder.embedder``
  is the stem's conv and BatchNorm, ``resnet.encoder.stages.S.layers.B.layer.K`` the blocks' convs,
  ``shortcut`` the projection shortcut, ``classifier.1`` the Linear head.
- **mmpretrain** (``ResNet``, ``ResNetV1c``, ``ResNetV1d``, ``ResNeXt``; what ``publish_model.py``
  and mmengine's ``save_checkpoint`` write): torchvision's names under ``backbone.`` with the head
  at ``head.fc``; the deep stem of V1c/V1d is ``stem.0/1/2`` (conv + bn each), and V1d's
  average-pool shortcut has no pool in a stage's stride-1 first block, so its conv sits at
  ``downsample.0`` there (timm, and rtk, keep an identity at ``.0``).

:func:`to_torchvision_names` renames a state_dict in either layout; a layout that no network rtk
builds has is refused in terms of the library's own names (:func:`layout_refusal`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from toolkit.core.errors import RtkError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Layout:
    """A library's naming of a ResNet.

    Attributes:
        name: ``"transformers"`` or ``"mmpretrain"``.
        network: what the file holds, for messages (``"a Hugging Face transformers ResNet …"``).
        names: how the weights were named, for ``rtk inspect``.
    """

    name: str
    network: str
    names: str


TRANSFORMERS = Layout("transformers", "a Hugging Face transformers ResNet", "transformers' ResNet names, read as torchvision's")
MMPRETRAIN = Layout("mmpretrain", "an mmpretrain ResNet (backbone.*, head.fc.*)", "mmpretrain's backbone./head.fc. names, read as torchvision's")

_TRANSFORMERS_STEM = re.compile(r"(.*?)embedder\.embedder\.convolution\.weight")
_TRANSFORMERS_KEY = re.compile(
    r"embedder\.embedder\.(?P<stem>convolution|normalization)\.(?P<stem_rest>.+)"
    r"|encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<block>\d+)\."
    r"(?:layer\.(?P<conv>\d+)|(?P<shortcut>shortcut))\.(?P<part>convolution|normalization)\.(?P<rest>.+)"
)
_MMPRETRAIN_STEM = {0: ("conv1.0", "conv1.1"), 1: ("conv1.3", "conv1.4"), 2: ("conv1.6", "bn1")}
_MMPRETRAIN_STEM_KEY = re.compile(r"stem\.(\d)\.(conv|bn)\.(.+)")
_DOWNSAMPLE_KEY = re.compile(r"(layer\d+\.\d+)\.downsample\.(\d)\.(.+)")


def to_torchvision_names(tensors: Mapping[str, "torch.Tensor"], where: str = "the checkpoint") -> tuple[dict[str, "torch.Tensor"], Layout | None]:
    """The tensors under torchvision's names when they are laid out as transformers' or mmpretrain's ResNet.

    Args:
        tensors: named tensors, as one mapping of a checkpoint holds them.
        where: the file, for messages.

    Returns:
        ``(tensors, layout)``: renamed, with the layout found; or as given with ``None``.

    Raises:
        RtkError: an mmpretrain network whose blocks rtk does not build (SE-ResNet).
    """
    renamed = _from_transformers(tensors)
    if renamed is not None:
        return renamed, TRANSFORMERS
    renamed = _from_mmpretrain(tensors, where)
    if renamed is not None:
        return renamed, MMPRETRAIN
    return dict(tensors), None


def _from_transformers(tensors: Mapping[str, Any]) -> dict[str, Any] | None:
    prefixes = {m.group(1) for k in tensors if (m := _TRANSFORMERS_STEM.fullmatch(k))}
    # transformers' RegNet uses the same embedder/encoder names under regnet.: not a ResNet.
    prefixes = {p for p in prefixes if not p.endswith(("regnet.", "bit."))}
    if len(prefixes) != 1:
        return None
    body = prefixes.pop()
    if f"{body}encoder.stages.0.layers.0.layer.0.convolution.weight" not in tensors:
        return None
    outer = body[: -len("resnet.")] if body.endswith("resnet.") else body
    renamed: dict[str, Any] = {}
    for key, value in tensors.items():
        match = _TRANSFORMERS_KEY.fullmatch(key[len(body):]) if key.startswith(body) else None
        if match is not None:
            key = outer + _transformers_name(match)
        elif key in (f"{outer}classifier.1.weight", f"{outer}classifier.1.bias"):
            key = f"{outer}fc.{key.rsplit('.', 1)[1]}"
        renamed[key] = value
    return renamed


def _transformers_name(match: re.Match) -> str:
    if match.group("stem"):
        return ("conv1." if match.group("stem") == "convolution" else "bn1.") + match.group("stem_rest")
    block = f"layer{int(match.group('stage')) + 1}.{match.group('block')}"
    is_conv = match.group("part") == "convolution"
    if match.group("shortcut"):
        return f"{block}.downsample.{0 if is_conv else 1}.{match.group('rest')}"
    index = int(match.group("conv")) + 1
    return f"{block}.{'conv' if is_conv else 'bn'}{index}.{match.group('rest')}"


def _from_mmpretrain(tensors: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    anchors = [k[: -len("layer1.0.conv1.weight")] for k in tensors if k.endswith("backbone.layer1.0.conv1.weight")]
    if len(anchors) != 1:
        return None
    body = anchors[0]
    outer = body[: -len("backbone.")]
    head = f"{outer}head.fc.weight" in tensors
    if not head and f"{body}stem.0.conv.weight" not in tensors:
        return None  # torchvision's own names under backbone.: the usual prefix search finds them
    if any(".se_layer." in k for k in tensors if k.startswith(body)):
        raise RtkError(
            f"{where} is an mmpretrain SE-ResNet (se_layer.*), which rtk does not build; timm's seresnet*/seresnext* "
            "layout (se.fc1/se.fc2) is supported"
        )
    # In ResNetV1d a stride-1 first block has no pool before its shortcut conv.
    avg_down = any(m and m.group(2) == "1" and v.ndim == 4 for k, v in tensors.items() if (m := _DOWNSAMPLE_KEY.fullmatch(k[len(body):])))
    convs_first = {m.group(1) for k, v in tensors.items() if (m := _DOWNSAMPLE_KEY.fullmatch(k[len(body):])) and m.group(2) == "0" and v.ndim == 4}
    renamed: dict[str, Any] = {}
    for key, value in tensors.items():
        if key.startswith(body):
            key = outer + _mmpretrain_name(key[len(body):], avg_down, convs_first)
        elif key.startswith(f"{outer}head.fc."):
            key = f"{outer}fc.{key[len(outer) + len('head.fc.'):]}"
        renamed[key] = value
    return renamed


def _mmpretrain_name(key: str, avg_down: bool, convs_first: set[str]) -> str:
    stem = _MMPRETRAIN_STEM_KEY.fullmatch(key)
    if stem is not None:
        conv, norm = _MMPRETRAIN_STEM[int(stem.group(1))]
        return f"{conv if stem.group(2) == 'conv' else norm}.{stem.group(3)}"
    shortcut = _DOWNSAMPLE_KEY.fullmatch(key)
    if avg_down and shortcut is not None and shortcut.group(1) in convs_first:
        return f"{shortcut.group(1)}.downsample.{int(shortcut.group(2)) + 1}.{shortcut.group(3)}"
    return key


def layout_refusal(layout: Layout, state: Mapping[str, "torch.Tensor"], where: str, reason: RtkError) -> RtkError:
    """The sentence for weights in ``layout`` that fit no network rtk builds, in the library's own terms.

    Args:
        layout: the layout they were renamed from.
        state: the renamed tensors.
        where: the file, for the message.
        reason: why :func:`toolkit.core.architecture.infer_spec` refused the renamed tensors.
    """
    if not any(k == "fc.weight" or k.startswith("fc.") for k in state):
        head = "classifier.1" if layout is TRANSFORMERS else "head.fc"
        whole = "ResNetForImageClassification" if layout is TRANSFORMERS else "an ImageClassifier's head"
        return RtkError(
            f"{where} is {layout.network} without its classification head (no {head} weights: a backbone saved without "
            f"{whole}); rtk needs the classifier's weights too"
        )
    text = str(reason)
    detail = text[len(where) + 1:] if text.startswith(f"{where} ") else text
    if layout is TRANSFORMERS:
        detail = _transformers_shape(state)
    return RtkError(f"{where} is {layout.network} that rtk does not build: {detail}")


def _transformers_shape(state: Mapping[str, "torch.Tensor"]) -> str:
    """A transformers ResNet's config values as read from its tensors: layer_type, depths, hidden_sizes, embedding_size."""
    depths = [len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.") and k.endswith(".conv1.weight")}) for s in range(1, 5)]
    bottleneck = any(k.endswith(".conv3.weight") for k in state)
    last = "conv3" if bottleneck else "conv2"
    hidden = [int(state[f"layer{s}.0.{last}.weight"].shape[0]) for s in range(1, 5) if f"layer{s}.0.{last}.weight" in state]
    stem = state.get("conv1.weight")
    embedding = int(stem.shape[0]) if stem is not None else None
    return (
        f"layer_type {'bottleneck' if bottleneck else 'basic'}, depths {depths}, hidden_sizes {hidden}, "
        f"embedding_size {embedding}, which no published ResNet has; rtk builds the layouts of microsoft/resnet-18, -34, "
        "-50, -101 and -152, also with every width scaled to a first stage of 16, 32 or 48 channels"
    )


def check_transformers_config(config: Mapping[str, Any], where: str) -> None:
    """Refuse a transformers ResNet config whose network differs from torchvision's in ways weights do not show.

    Raises:
        RtkError: ``downsample_in_bottleneck`` (the stride in the first 1×1 conv, as the original
            ResNet v1), ``downsample_in_first_stage``, or an activation other than ReLU.
    """
    problems = []
    if config.get("downsample_in_bottleneck"):
        problems.append("downsample_in_bottleneck (the stride in each bottleneck's first 1×1 conv, as the original ResNet v1)")
    if config.get("downsample_in_first_stage"):
        problems.append("downsample_in_first_stage (a stride-2 first stage)")
    if config.get("hidden_act", "relu") != "relu":
        problems.append(f"hidden_act {config['hidden_act']!r}")
    if problems:
        raise RtkError(
            f"{where} is {TRANSFORMERS.network} with {' and '.join(problems)}, which rtk does not build; "
            "it builds torchvision's ResNet v1.5 (the stride in the 3×3 conv, ReLU), the layout of microsoft/resnet-*"
        )
