"""The spec of an ONNX file that carries none: read from its graph, given by flags, assumed where neither says.

An ONNX classifier exported by another tool has no rtk metadata. Its graph still says how many
channels its input has, its height and width (when fixed) and how many classes it scores (when
the output's last axis is fixed). What a graph cannot say — the preprocessing the network was
trained with, its class names, its architecture, and whether it computes what the PyTorch model
did — is given by flags or assumed (ImageNet's evaluation transform, classes named by index), and
:func:`assumptions` says which, in one sentence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.core.errors import RtkError
from toolkit.core.onnx_graph import graph_io, load_onnx_graph, metadata_dict
from toolkit.core.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    UNKNOWN_ARCH,
    ArtefactMeta,
    ModelSpec,
    Preprocess,
)


@dataclass(frozen=True)
class OnnxSpecHints:
    """What the user says of an ONNX file without rtk metadata (each ``None`` = read from the graph, or assumed).

    Attributes:
        input_size: (height, width) of the input, needed when the graph leaves them open.
        class_names: one name per class, in output order.
        mean, std: the normalisation the network was trained with, per channel on the [0, 1] scale.
    """

    input_size: tuple[int, int] | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def given(self) -> list[str]:
        """The flags given, by name."""
        return [f"--{name.replace('_', '-')}" for name in ("input_size", "class_names", "mean", "std") if getattr(self, name) is not None]


def foreign_meta(path: str | os.PathLike, hints: OnnxSpecHints = OnnxSpecHints()) -> ArtefactMeta | None:
    """The spec and preprocess of an ONNX file without rtk metadata, or ``None`` when it has its own.

    Raises:
        RtkError: the file is unreadable or no NCHW classifier; its graph leaves the input size or
            the class count open and no hint gives it; a hint disagrees with the graph; hints
            given for a file that carries rtk metadata (which they could only contradict).
    """
    path = Path(path)
    graph = load_onnx_graph(path)
    if metadata_dict(graph) is not None:
        if hints.given:
            raise RtkError(f"{path} carries rtk metadata, which gives its spec; {', '.join(hints.given)} apply only to an ONNX file without it")
        return None
    inputs, outputs = graph_io(graph)
    if len(inputs) != 1 or not outputs:
        raise RtkError(f"{path} has {len(inputs)} input(s) and {len(outputs)} output(s); an image classifier has one input and one logits output")
    shape = inputs[0].shape
    shown = "×".join("?" if not isinstance(d, int) else str(d) for d in shape)
    if len(shape) != 4:
        raise RtkError(f"{path} takes a {len(shape)}-dimensional input ({shown}); rtk needs an NCHW image batch")
    channels = shape[1]
    if channels not in (1, 3):
        nhwc = " (NHWC: export it channels-first)" if shape[3] in (1, 3) else ""
        raise RtkError(f"{path} takes input of shape {shown}, not NCHW with 1 or 3 channels{nhwc}")
    size = _input_size(path, shape, hints.input_size)
    classes = _class_count(path, outputs[0].shape, hints.class_names)
    spec = ModelSpec(arch=UNKNOWN_ARCH, num_classes=classes, class_names=hints.class_names, in_chans=channels)
    gray = channels == 1
    average = lambda values: (sum(values) / len(values),)  # noqa: E731 - ImageNet's statistics over one channel
    mean = hints.mean or (average(IMAGENET_MEAN) if gray else IMAGENET_MEAN)
    std = hints.std or (average(IMAGENET_STD) if gray else IMAGENET_STD)
    resize = round(max(size) * 256 / 224)  # ImageNet's evaluation transform: resize 256, centre crop 224
    pre = Preprocess(input_size=size, resize=resize, crop=True, mean=tuple(mean), std=tuple(std), channels="gray" if gray else "rgb")
    return ArtefactMeta(spec, pre)


def _input_size(path: Path, shape: tuple, given: tuple[int, int] | None) -> tuple[int, int]:
    fixed = tuple(d if isinstance(d, int) else None for d in shape[2:])
    if given is not None:
        for axis, (want, have) in enumerate(zip(given, fixed)):
            if have is not None and have != want:
                raise RtkError(f"--input-size {given[0]}x{given[1]} disagrees with {path}, whose input is {have} pixels {('high', 'wide')[axis]}")
        return given
    if None in fixed:
        raise RtkError(f"{path} leaves its input's height and width open and carries no rtk metadata; give them with --input-size (224, or 224x192)")
    return fixed  # type: ignore[return-value]


def _class_count(path: Path, shape: tuple, names: tuple[str, ...] | None) -> int:
    if len(shape) != 2:
        raise RtkError(f"{path} produces output of rank {len(shape)}; a classifier produces (N, classes) logits")
    count = shape[1] if isinstance(shape[1], int) else None
    if names is not None:
        if count is not None and len(names) != count:
            raise RtkError(f"--class-names gives {len(names)} names but {path} scores {count} classes")
        return len(names)
    if count is None:
        raise RtkError(f"{path} leaves its number of classes open and carries no rtk metadata; name them with --class-names")
    return count


def assumptions(path: str | os.PathLike, meta: ArtefactMeta, hints: OnnxSpecHints = OnnxSpecHints()) -> str:
    """One sentence: what of a foreign ONNX file was read from its graph, given, or assumed, and what cannot be known."""
    spec, pre = meta.spec, meta.preprocess
    h, w = pre.input_size
    read = f"its {spec.in_chans}×{h}×{w} input is" if hints.class_names else f"its {spec.in_chans}×{h}×{w} input and {spec.num_classes} classes are"
    assumed = []
    if hints.mean is None or hints.std is None:
        assumed.append("ImageNet's normalisation (mean/std)")
    assumed.append(f"ImageNet's evaluation transform (resize to {pre.resize}, centre crop {h}×{w}, bilinear)")
    if hints.class_names is None:
        assumed.append("classes named by index")
    return (
        f"{Path(path).name} carries no rtk metadata: {read} read from its graph; assumed: {', '.join(assumed)} "
        "(give --mean, --std, --class-names where they differ). Without its checkpoint rtk cannot know its architecture "
        "or training, nor check that the graph computes what the PyTorch model did"
    )
