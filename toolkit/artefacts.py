"""What kind of artefact a path is, and a plain-dict description of it for ``rtk inspect``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import RtkError

if TYPE_CHECKING:
    from toolkit.checkpoint import Checkpoint, CheckpointOptions

# ".pth.tar" is what PyTorch's classic ImageNet example and timm's train.py write (model_best.pth.tar);
# ".ckpt" is Lightning's; ".safetensors" how Hugging Face and timm distribute weights.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pth.tar", ".safetensors")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artefact_kind(path: str | os.PathLike) -> str:
    """``"checkpoint"``, ``"onnx"`` or ``"engine"`` from the file name.

    Raises:
        RtkError: the file is missing or its suffix is not one rtk knows.
    """
    path = Path(path)
    if not path.exists():
        raise RtkError(f"{path} does not exist")
    suffix = artefact_suffix(path)
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    known = ", ".join(CHECKPOINT_SUFFIXES + ONNX_SUFFIXES + ENGINE_SUFFIXES)
    raise RtkError(f"{path} is not a model artefact rtk knows (suffix {suffix or 'none'}; expected one of {known})")


def artefact_suffix(path: str | os.PathLike) -> str:
    """The file's suffix in lower case, with the double suffix ``.pth.tar`` kept whole."""
    name = Path(path).name.lower()
    return ".pth.tar" if name.endswith(".pth.tar") else Path(name).suffix


def artefact_stem(path: str | os.PathLike) -> str:
    """The file's name without its artefact suffix: ``model_best`` for ``model_best.pth.tar``."""
    name = Path(path).name
    return name[: len(name) - len(artefact_suffix(path))]


def onnx_path_for(checkpoint_path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Where the ONNX of a checkpoint lives: ``MODEL.onnx``, ``MODEL.fp16.onnx`` or ``MODEL.int8.onnx`` next to it."""
    path = Path(checkpoint_path)
    return path.with_name(artefact_stem(path) + (".onnx" if precision == "fp32" else f".{precision}.onnx"))


def u8_path_for(int8_path: str | os.PathLike) -> Path:
    """Where the uint8-activation layout of an int8 ONNX lives: ``MODEL.int8.u8.onnx`` beside
    ``MODEL.int8.onnx`` (``X.u8.onnx`` beside any other ``X.onnx``), for the CPU runtimes (ONNX Runtime, OpenVINO)."""
    path = Path(int8_path)
    return path.with_name(f"{path.name[: -len(path.suffix)] if path.suffix else path.name}.u8.onnx")


def engine_path_for(onnx_path: str | os.PathLike, precision: str = "fp16") -> Path:
    """Where ``rtk build`` puts an engine by default.

    ``MODEL.onnx`` and ``MODEL.fp16.onnx`` both give ``MODEL.engine`` for fp16 (the default
    precision) and ``MODEL.fp32.engine`` for fp32, so the two engines never overwrite each other;
    ``MODEL.int8.onnx`` gives ``MODEL.int8.engine``.
    """
    onnx_path = Path(onnx_path)
    base = onnx_path.name[: -len(onnx_path.suffix)] if onnx_path.suffix else onnx_path.name
    for tag in (".fp16", ".fp32", ".int8"):
        if base.endswith(tag):
            base = base[: -len(tag)]
    return onnx_path.with_name(base + (".engine" if precision == "fp16" else f".{precision}.engine"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe(path: str | os.PathLike, checkpoint_options: "CheckpointOptions | None" = None) -> dict[str, Any]:
    """A JSON-serialisable description of any artefact (``checkpoint_options`` apply to a checkpoint)."""
    kind = artefact_kind(path)
    if kind == "checkpoint":
        return describe_checkpoint(path, checkpoint_options)
    if kind == "onnx":
        from toolkit.onnx_graph import describe_onnx

        return describe_onnx(path)
    from toolkit.sidecar import describe_engine

    return describe_engine(path)


def describe_checkpoint(path: str | os.PathLike, checkpoint_options: "CheckpointOptions | None" = None) -> dict[str, Any]:
    """Architecture, classes, parameter count, weights used, preprocess and training record of a checkpoint.

    For a foreign file the training record is what it holds of one (epoch, best metric, arch
    name, timm's arguments, Lightning's hyper-parameters).

    Raises:
        RtkError: the file cannot be read, or its weights do not fit the architecture it names
            (a file that ``rtk inspect`` describes is one the other commands can load).
    """
    from toolkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, options=checkpoint_options)
    ckpt.check_fit()
    params = sum(t.numel() for k, t in ckpt.state_dict.items() if not _is_buffer(k))
    train = ckpt.train
    if ckpt.source == "rtk":
        train = {k: v for k, v in train.items() if k in ("epoch", "epochs", "metrics", "best", "data", "seed", "args")}
    return {
        "kind": "checkpoint",
        "path": str(path),
        "size_bytes": Path(path).stat().st_size,
        "source": "rtk" if ckpt.source == "rtk" else "foreign (spec inferred from tensor shapes)",
        "arch": ckpt.spec.name,
        "num_classes": ckpt.spec.num_classes,
        "parameters": params,
        "weights": describe_weights(ckpt),
        "spec": ckpt.spec.to_dict(),
        "preprocess": ckpt.preprocess.to_dict(),
        "train": train,
    }


def describe_weights(ckpt: "Checkpoint") -> str:
    """Which of a checkpoint's weights were taken, from where, and what else it offers:
    ``ema (['state_dict_ema']; raw also present: --weights raw)``."""
    others = [w for w in ckpt.weights_available if w != ckpt.weights]
    also = f"; {', '.join(others)} also present: --weights {others[0]}" if others else ""
    return f"{ckpt.weights} ({ckpt.weights_location}{also})"


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))
