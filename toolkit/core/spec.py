"""The metadata that travels with every artefact: :class:`ModelSpec` and :class:`Preprocess`.

Both are frozen dataclasses that round-trip through plain JSON-serialisable dicts. They are
written into checkpoints, into an ONNX file's ``metadata_props`` (one JSON string under
:data:`METADATA_KEY`) and into the JSON sidecar next to every TensorRT engine.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from toolkit.core.errors import RtkError

#: Key under which the spec and preprocess live in an ONNX file's ``metadata_props``.
METADATA_KEY = "rtk"

ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
#: The architecture of an ONNX file that carries no rtk metadata: its graph does not name one
#: (:mod:`toolkit.core.foreign_onnx`). Nothing is ever built from it.
UNKNOWN_ARCH = "unknown"
#: Classification heads by name. ``mlp1024`` stands for the family ``mlpN`` (any hidden width N);
#: see :func:`head_layers`.
HEADS = ("fc", "dropout-fc", "mlp1024", "mlp1024-dropout")
STEMS = ("imagenet", "small", "deep", "deep_tiered")
#: Channels of the first stage: 64 is every published ResNet's; the others narrow the network.
WIDTHS = (16, 32, 48, 64)
DOWNSAMPLES = ("conv", "avg")
ATTENTIONS = ("se",)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
CHANNELS = ("rgb", "gray")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RtkError(message)


def _from_mapping(cls, data: Mapping[str, Any], what: str):
    if not isinstance(data, Mapping):
        raise RtkError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RtkError(f"{what} has unknown field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise RtkError(f"{what} is incomplete: {exc}") from None


@dataclass(frozen=True)
class HeadLayout:
    """A head name taken apart.

    ``fc`` is one Linear; ``dropout-fc`` is Dropout then Linear; ``mlpN`` is Linear→N, ReLU, Linear;
    ``mlpN-dropout`` is Linear→N, ReLU, Dropout, Linear (the transfer-learning tutorials' head).
    Dropout holds no weights, so it only shifts the index of the Linear that follows it.

    Attributes:
        hidden: width of the MLP's hidden layer; ``None`` for a single Linear.
        dropout: a Dropout layer stands before the last Linear.
    """

    hidden: int | None = None
    dropout: bool = False

    @classmethod
    def parse(cls, head: str) -> "HeadLayout":
        """The layout a head name describes.

        Raises:
            RtkError: a name outside ``fc``, ``dropout-fc``, ``mlpN``, ``mlpN-dropout``.
        """
        match = _HEAD_NAME.fullmatch(head) if isinstance(head, str) else None
        if match is None:
            raise RtkError(f"unknown head {head!r}; choose {', '.join(HEADS[:2])}, mlpN or mlpN-dropout (N hidden units, e.g. {HEADS[2]})")
        if match.group(1) is None:
            return cls(None, head.startswith("dropout"))
        return cls(int(match.group(1)), match.group(2) is not None)

    @property
    def name(self) -> str:
        if self.hidden is None:
            return "dropout-fc" if self.dropout else "fc"
        return f"mlp{self.hidden}" + ("-dropout" if self.dropout else "")

    @property
    def linear_keys(self) -> tuple[str, ...]:
        """The state_dict prefixes of the head's Linear layers, first to last (``fc``, ``fc.0``/``fc.3``…)."""
        if self.hidden is None:
            return ("fc.1",) if self.dropout else ("fc",)
        return ("fc.0", "fc.3" if self.dropout else "fc.2")


_HEAD_NAME = re.compile(r"dropout-fc|fc|mlp([1-9][0-9]*)(-dropout)?")


@dataclass(frozen=True)
class ModelSpec:
    """What network an artefact holds.

    Attributes:
        arch: torchvision architecture name, one of :data:`ARCHS`; :data:`UNKNOWN_ARCH` for an ONNX
            file that does not say.
        num_classes: number of output logits.
        class_names: one name per class, or ``None`` (indices are used then).
        head: ``"fc"`` (one linear layer), ``"mlp1024"`` (Linear→1024, ReLU, Linear→n) or another
            :class:`HeadLayout` name.
        in_chans: input channels, 1 or 3.
        stem: ``"imagenet"`` (7×7/2 conv + max-pool), ``"small"`` (3×3/1 conv, no pool), or the
            ResNet-D stems ``"deep"`` (three 3×3 convs of 32, 32, 64 filters + max-pool) and
            ``"deep_tiered"`` (24, 32, 64), as timm builds them.
        downsample: the shortcut of a block that changes shape: ``"conv"`` (strided 1×1 conv, as
            torchvision) or ``"avg"`` (2×2 average pool, then 1×1 conv: ResNet-D).
        attention: ``"se"`` for squeeze-and-excitation in every block (timm's SE-ResNet), or ``None``.
        width: channels of the first stage, one of :data:`WIDTHS`; the four stages have 1, 2, 4 and
            8 times as many (times 4 after a bottleneck's expansion). 64 in every published ResNet;
            a narrower network (16, 32) trains and runs several times faster on small images and
            small data sets.
    """

    arch: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    head: str = "fc"
    in_chans: int = 3
    stem: str = "imagenet"
    downsample: str = "conv"
    attention: str | None = None
    width: int = 64

    def __post_init__(self) -> None:
        if self.class_names is not None and not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        _check(self.arch in ARCHS or self.arch == UNKNOWN_ARCH, f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        _check(
            isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool) and self.num_classes >= 1,
            f"num_classes must be a positive integer, got {self.num_classes!r}",
        )
        if self.class_names is not None:
            _check(
                len(self.class_names) == self.num_classes,
                f"{len(self.class_names)} class names given for {self.num_classes} classes",
            )
            _check(all(isinstance(n, str) for n in self.class_names), "class names must be strings")
            _check(len(set(self.class_names)) == len(self.class_names), "class names must be unique")
        HeadLayout.parse(self.head)
        _check(self.in_chans in (1, 3), f"in_chans must be 1 or 3, got {self.in_chans!r}")
        _check(self.stem in STEMS, f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")
        _check(self.downsample in DOWNSAMPLES, f"unknown downsample {self.downsample!r}; choose one of {', '.join(DOWNSAMPLES)}")
        _check(
            self.attention is None or self.attention in ATTENTIONS,
            f"unknown attention {self.attention!r}; choose {', '.join(ATTENTIONS)} or none",
        )
        _check(
            isinstance(self.width, int) and not isinstance(self.width, bool) and self.width in WIDTHS,
            f"width must be 16, 32, 48 or 64 (every published ResNet's), got {self.width!r}",
        )

    @property
    def name(self) -> str:
        """The architecture as timm names it: ``resnet50d`` (deep stem, average-pool downsample),
        ``resnet50c`` (deep stem), ``resnet26t`` (tiered stem), ``seresnext50_32x4d`` (SE blocks);
        a width other than 64 follows as ``-w16``."""
        name = ("se" if self.attention == "se" else "") + self.arch
        letter = {"deep": "d" if self.downsample == "avg" else "c", "deep_tiered": "t"}.get(self.stem, "")
        name = re.sub(r"(\d+)", lambda m: m.group(1) + letter, name, count=1)
        return name if self.width == 64 else f"{name}-w{self.width}"

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or the index itself as text when names are absent."""
        return self.class_names[index] if self.class_names else str(index)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        # Left out at their defaults, so plain ResNets stay readable by rtk versions before them.
        for name in ("downsample", "attention", "width"):
            if d[name] == _SPEC_DEFAULTS[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        return _from_mapping(cls, data, "model spec")


_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelSpec)}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network's input tensor.

    The image is converted to ``channels``, its shorter side resized to ``resize`` with
    ``interpolation`` and, when ``crop`` is true, centre-cropped to ``input_size``; without
    crop it is resized straight to ``input_size``. Then scaled to [0, 1] and normalised with
    ``mean`` and ``std`` (one value per channel).

    Attributes:
        input_size: (height, width) of the network input.
        resize: shorter-side size before the centre crop (ignored when ``crop`` is false).
        crop: centre-crop after resizing the shorter side.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel standard deviation on the [0, 1] scale.
        interpolation: resampling filter, one of :data:`INTERPOLATIONS`.
        channels: ``"rgb"`` or ``"gray"``.
    """

    input_size: tuple[int, int] = (224, 224)
    resize: int = 256
    crop: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: str = "rgb"

    def __post_init__(self) -> None:
        for name in ("input_size", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        size = self.input_size
        _check(
            isinstance(size, tuple) and len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size),
            f"input_size must be two positive integers (height, width), got {size!r}",
        )
        _check(isinstance(self.resize, int) and self.resize >= 1, f"resize must be a positive integer, got {self.resize!r}")
        _check(
            not self.crop or self.resize >= max(size),
            f"resize {self.resize} is smaller than the crop {size}; a centre crop needs resize >= {max(size)}",
        )
        _check(self.channels in CHANNELS, f"channels must be one of {', '.join(CHANNELS)}, got {self.channels!r}")
        n = self.num_channels
        _check(len(self.mean) == n and len(self.std) == n, f"mean and std need {n} value(s) each for {self.channels} input")
        _check(all(s > 0 for s in self.std), "std values must be positive")
        _check(
            self.interpolation in INTERPOLATIONS,
            f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}",
        )

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("input_size", "mean", "std"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        return _from_mapping(cls, data, "preprocess")

    @classmethod
    def imagenet(cls, input_size: int = 224) -> "Preprocess":
        """torchvision's ImageNet evaluation transform (resize 256, centre crop 224) scaled to ``input_size``."""
        return cls(input_size=(input_size, input_size), resize=round(input_size * 256 / 224))

    def matching(self, spec: ModelSpec) -> "Preprocess":
        """This preprocess with its channels made to agree with ``spec.in_chans``."""
        if spec.in_chans == self.num_channels:
            return self
        if spec.in_chans == 1:
            return dataclasses.replace(self, channels="gray", mean=(sum(self.mean) / 3,), std=(sum(self.std) / 3,))
        return dataclasses.replace(self, channels="rgb", mean=self.mean * 3, std=self.std * 3)


@dataclass(frozen=True)
class ArtefactMeta:
    """The spec and preprocess as one unit, as stored in ONNX metadata and engine sidecars."""

    spec: ModelSpec
    preprocess: Preprocess = field(default_factory=Preprocess)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "preprocess": self.preprocess.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArtefactMeta":
        if not isinstance(data, Mapping) or "spec" not in data:
            raise RtkError("artefact metadata must be an object with a 'spec' field")
        pre = data.get("preprocess")
        return cls(ModelSpec.from_dict(data["spec"]), Preprocess.from_dict(pre) if pre is not None else Preprocess())

    @classmethod
    def from_json(cls, text: str) -> "ArtefactMeta":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RtkError(f"artefact metadata is not valid JSON: {exc}") from None
        return cls.from_dict(data)
