"""What kind of artefact a path is, and a plain-dict description of it for ``rtk inspect``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.errors import RtkError

# ".pth.tar" is what PyTorch's classic ImageNet example writes (model_best.pth.tar).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pth.tar")
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


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-serialisable description of any artefact."""
    kind = artefact_kind(path)
    if kind == "checkpoint":
        return describe_checkpoint(path)
    if kind == "onnx":
        from exporters.onnx_info import describe_onnx

        return describe_onnx(path)
    from engines.trt_sidecar import describe_engine

    return describe_engine(path)


def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Architecture, classes, parameter count, preprocess and training record of a checkpoint.

    Raises:
        RtkError: the file cannot be read, or its weights do not fit the architecture it names
            (a file that ``rtk inspect`` describes is one the other commands can load).
    """
    from toolkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    ckpt.check_fit()
    params = sum(t.numel() for k, t in ckpt.state_dict.items() if not _is_buffer(k))
    train = {k: v for k, v in ckpt.train.items() if k in ("epoch", "epochs", "metrics", "best", "data", "seed", "args")}
    return {
        "kind": "checkpoint",
        "path": str(path),
        "size_bytes": Path(path).stat().st_size,
        "source": "rtk" if ckpt.source == "rtk" else "foreign (spec inferred from tensor shapes)",
        "arch": ckpt.spec.arch,
        "num_classes": ckpt.spec.num_classes,
        "parameters": params,
        "spec": ckpt.spec.to_dict(),
        "preprocess": ckpt.preprocess.to_dict(),
        "train": train,
    }


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))
