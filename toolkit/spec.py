"""The metadata that travels with every artefact: :class:`ModelSpec` and :class:`Preprocess`.

Both are frozen dataclasses that round-trip through plain JSON-serialisable dicts. They are
written into checkpoints, into an ONNX file's ``metadata_props`` (one JSON string under
:data:`METADATA_KEY`) and into the JSON sidecar next to every TensorRT engine.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from toolkit.errors import RtkError

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
HEADS = ("fc", "mlp1024")
STEMS = ("imagenet", "small")
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
class ModelSpec:
    """What network an artefact holds.

    Attributes:
        arch: torchvision architecture name, one of :data:`ARCHS`.
        num_classes: number of output logits.
        class_names: one name per class, or ``None`` (indices are used then).
        head: ``"fc"`` (one linear layer) or ``"mlp1024"`` (Linear→1024, ReLU, Linear→n).
        in_chans: input channels, 1 or 3.
        stem: ``"imagenet"`` (7×7/2 conv + max-pool) or ``"small"`` (3×3/1 conv, no pool).
    """

    arch: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    head: str = "fc"
    in_chans: int = 3
    stem: str = "imagenet"

    def __post_init__(self) -> None:
        if self.class_names is not None and not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        _check(self.arch in ARCHS, f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
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
        _check(self.head in HEADS, f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        _check(self.in_chans in (1, 3), f"in_chans must be 1 or 3, got {self.in_chans!r}")
        _check(self.stem in STEMS, f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or the index itself as text when names are absent."""
        return self.class_names[index] if self.class_names else str(index)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        return _from_mapping(cls, data, "model spec")


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
