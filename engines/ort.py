"""ONNX Runtime engine (CPUExecutionProvider by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.base import Engine
from toolkit.errors import RtkError, require
from toolkit.spec import METADATA_KEY, ArtefactMeta

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


def read_session_meta(session, path: Path) -> ArtefactMeta:
    """The spec and preprocess stored in an ONNX file's ``metadata_props``."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise RtkError(
            f"{path} carries no rtk metadata (metadata_props[{METADATA_KEY!r}]); export it with `rtk export` "
            "or pass the checkpoint it came from"
        )
    return ArtefactMeta.from_json(props[METADATA_KEY])


class OrtEngine(Engine):
    """An ONNX Runtime inference session over an exported model.

    Args:
        path: the ``.onnx`` file.
        meta: spec and preprocess; read from the file's metadata when omitted.
        threads: intra-op threads (0 = ONNX Runtime's default).
        graph_optimization: one of :data:`GRAPH_OPT_LEVELS`.
    """

    def __init__(self, path: str | os.PathLike, meta: ArtefactMeta | None = None, threads: int = 0, graph_optimization: str = "all"):
        ort = require("onnxruntime", "the ort engine")
        path = Path(path)
        if not path.exists():
            raise RtkError(f"{path} does not exist")
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise RtkError(f"graph optimisation level must be one of {', '.join(GRAPH_OPT_LEVELS)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RtkError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0][:300]}") from None
        meta = meta or read_session_meta(self.session, path)
        super().__init__(meta.spec, meta.preprocess, "cpu", "fp32")
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.name = "ort-fp16" if path.name.endswith(".fp16.onnx") else "ort"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self) -> None:
        super().close()
        self.session = None
