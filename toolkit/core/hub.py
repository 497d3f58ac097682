"""Hugging Face Hub model folders: how the Hub ships a model, and what timm and transformers write.

timm's ``save_for_hf``/``push_to_hub`` and transformers' ``save_pretrained`` write a folder with
the weights (``model.safetensors``, or ``pytorch_model.bin``) beside a ``config.json`` that holds
what the weights do not: timm's ``pretrained_cfg`` (input size, interpolation, mean, std, crop)
and label names, transformers' model config (``id2label``, the layout's options) and, beside it,
the image processor's ``preprocessor_config.json``. Such a folder is a checkpoint wherever one is
accepted; :func:`open_hub_folder` is the one place that recognises it, or says why not.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.core.errors import RtkError, first_line
from toolkit.core.files import os_error

#: Weight files, in the order timm's and transformers' loaders prefer them.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class HubFolder:
    """A Hub model folder as found on disk.

    Attributes:
        path: the folder.
        weights: its weights file.
        config: ``config.json`` (empty when absent).
        preprocessor: ``preprocessor_config.json``, when present.
    """

    path: Path
    weights: Path
    config: dict[str, Any] = field(default_factory=dict)
    preprocessor: dict[str, Any] | None = None

    @property
    def library(self) -> str | None:
        """``"timm"``, ``"transformers"``, or ``None`` when ``config.json`` says neither."""
        if "pretrained_cfg" in self.config or "architecture" in self.config:
            return "timm"
        if "model_type" in self.config or "architectures" in self.config:
            return "transformers"
        return None

    @property
    def files(self) -> list[Path]:
        """The files read: the weights and the configuration beside them."""
        extra = [self.path / name for name in (CONFIG_FILE, PREPROCESSOR_FILE) if (self.path / name).is_file()]
        return [self.weights, *extra]

    def describe(self) -> str:
        """``Hugging Face Hub folder (timm: model.safetensors, config.json)`` for ``rtk inspect``."""
        who = f"{self.library}: " if self.library else ""
        return f"Hugging Face Hub folder ({who}{', '.join(p.name for p in self.files)})"


def is_hub_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding Hub model weights (a sharded set counts: it is named when read)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in WEIGHTS_FILES + _SHARD_INDEXES)


def open_hub_folder(path: str | os.PathLike) -> HubFolder:
    """The Hub model folder at ``path``, with its configuration read.

    Raises:
        RtkError: a folder without model weights (the one sentence every command gives for a
            folder named as a model), a sharded checkpoint, or a configuration that is not JSON.
    """
    path = Path(path)
    weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
    if weights is None:
        shards = next((name for name in _SHARD_INDEXES if (path / name).is_file()), None)
        if shards is not None:
            raise RtkError(
                f"{path} is a Hub model folder whose weights are split into shards ({shards}); rtk reads one weights "
                "file: save it unsharded (save_pretrained(…, max_shard_size=\"100GB\"))"
            )
        raise RtkError(
            f"{path} is a folder, not a model: a Hugging Face Hub model folder holds {WEIGHTS_FILES[0]} or "
            f"{WEIGHTS_FILES[1]} (with its {CONFIG_FILE}); otherwise name the checkpoint file itself"
        )
    config = _json_file(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else {}
    preprocessor = _json_file(path / PREPROCESSOR_FILE) if (path / PREPROCESSOR_FILE).is_file() else None
    return HubFolder(path, weights, config, preprocessor)


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RtkError(f"{path} is not valid JSON ({first_line(exc, 120)})") from None
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    if not isinstance(data, dict):
        raise RtkError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def hub_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of what a Hub folder's model is made of: its weights and configuration files, names included.

    It changes when any of them does, as a checkpoint file's own sha256 does.
    """
    digest = hashlib.sha256()
    for file in open_hub_folder(path).files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()
