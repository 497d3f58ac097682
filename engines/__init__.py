"""Runtimes behind one contract: eager PyTorch, ONNX Runtime, TensorRT.

``engines.load(path_or_model, engine=..., device=..., precision=...)`` picks the runtime from
the artefact (``.pth/.pt`` → eager, ``.onnx`` → ONNX Runtime, ``.engine/.plan`` → TensorRT) or
from an explicit ``engine`` name. Heavy optional packages are imported on first use.
"""

from __future__ import annotations

from engines.base import Engine
from engines.loader import ENGINE_NAMES, load, prepare

__all__ = ["Engine", "ENGINE_NAMES", "load", "prepare"]
