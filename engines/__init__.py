"""Runtimes behind one contract: eager PyTorch, ONNX Runtime, TensorRT.

``engines.load(artefact, engine=..., device=...)`` opens an artefact that exists: a checkpoint
(``.pth/.pt``) on eager PyTorch, an ``.onnx`` on ONNX Runtime, an ``.engine/.plan`` on TensorRT,
or with an explicit engine name from :mod:`engines.names`. Nothing here exports or builds; for a
checkpoint on any runtime use :func:`toolkit.usecases.opening.open_engine`. Heavy optional packages are
imported on first use.
"""

from __future__ import annotations

from engines.base import Engine
from engines.loader import load
from engines.names import ALL_ENGINES, ENGINE_HELP, EngineName, parse_engine, parse_engines

__all__ = ["ALL_ENGINES", "ENGINE_HELP", "Engine", "EngineName", "load", "parse_engine", "parse_engines"]
