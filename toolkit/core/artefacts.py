"""What kind of artefact a path is, and where the artefacts made from it go."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from toolkit.core.errors import RtkError
from toolkit.core.files import stat_for_reading
from toolkit.core.hub import hub_digest, open_hub_folder

# ".pth.tar" is what PyTorch's classic ImageNet example and timm's train.py write (model_best.pth.tar);
# ".ckpt" is Lightning's; ".safetensors" how Hugging Face and timm distribute weights; ".pt2"
# torch.export's archive (TorchScript archives are ".pt"). A Hub model folder is a checkpoint too.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pth.tar", ".safetensors", ".pt2")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artefact_kind(path: str | os.PathLike) -> str:
    """``"checkpoint"``, ``"onnx"`` or ``"engine"`` from the file name; a Hugging Face Hub model folder is a checkpoint.

    Raises:
        RtkError: the file is missing, its suffix is not one rtk knows, or it is a folder that
            holds no model (:func:`toolkit.core.hub.open_hub_folder`'s sentence).
    """
    path = Path(path)
    if stat.S_ISDIR(stat_for_reading(path).st_mode):
        open_hub_folder(path)
        return "checkpoint"
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
    """The file's suffix in lower case, with the double suffix ``.pth.tar`` kept whole; none for a folder."""
    if Path(path).is_dir():  # a Hub folder's name is the model's (resnet50.a1_in1k): no suffix in it
        return ""
    name = Path(path).name.lower()
    return ".pth.tar" if name.endswith(".pth.tar") else Path(name).suffix


def artefact_stem(path: str | os.PathLike) -> str:
    """The file's name without its artefact suffix: ``model_best`` for ``model_best.pth.tar``."""
    name = Path(path).name
    return name[: len(name) - len(artefact_suffix(path))]


def onnx_path_for(checkpoint_path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Where the ONNX of a checkpoint lives: ``MODEL.onnx``, ``MODEL.fp16.onnx`` or ``MODEL.int8.onnx`` next to
    it (beside a Hub model folder ``MODEL/``, not in it)."""
    path = Path(checkpoint_path)
    if not path.name:  # "." or "..": the folder by its own name
        path = Path(os.path.abspath(path))
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
    """The hex sha256 of a file, read in chunks; of a Hub model folder, that of its weights and configuration."""
    if Path(path).is_dir():
        return hub_digest(path, chunk)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
