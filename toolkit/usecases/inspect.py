"""``rtk inspect``: what any artefact holds, described as plain JSON-serialisable dicts.

A checkpoint is loaded (so a file ``rtk inspect`` describes is one the other commands can load);
an ONNX file is read without running it; an engine is described from its sidecar, without
TensorRT, and where TensorRT and a GPU are present with whether this machine can run it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from toolkit.core.artefacts import artefact_kind, u8_path_for
from toolkit.core.checkpoint import Checkpoint, CheckpointOptions, load_checkpoint
from toolkit.core.errors import RtkError, install_hint
from toolkit.core.hub import open_hub_folder
from toolkit.core.onnx_graph import external_data_files, graph_io, load_onnx_graph, metadata_dict, onnx_precision
from toolkit.core.spec import ArtefactMeta
from toolkit.core.trt.library import current_platform
from toolkit.core.trt.sidecar import EngineSidecar, platform_mismatch, read_sidecar, rebuild_command


def describe(path: str | os.PathLike, checkpoint_options: "CheckpointOptions | None" = None) -> dict[str, Any]:
    """A JSON-serialisable description of any artefact (``checkpoint_options`` apply to a checkpoint)."""
    kind = artefact_kind(path)
    if kind == "checkpoint":
        return describe_checkpoint(path, checkpoint_options)
    if kind == "onnx":
        return describe_onnx(path)
    return describe_engine(path)


def describe_checkpoint(path: str | os.PathLike, checkpoint_options: "CheckpointOptions | None" = None) -> dict[str, Any]:
    """Architecture, classes, parameter count, weights used, preprocess and training record of a checkpoint.

    For a foreign file the training record is what it holds of one (epoch, best metric, arch
    name, timm's arguments, Lightning's hyper-parameters).

    Raises:
        RtkError: the file cannot be read, or its weights do not fit the architecture it names
            (a file that ``rtk inspect`` describes is one the other commands can load).
    """
    ckpt = load_checkpoint(path, options=checkpoint_options)
    ckpt.check_fit()
    params = sum(t.numel() for k, t in ckpt.state_dict.items() if not _is_buffer(k))
    train = dict(ckpt.train)
    if ckpt.source == "rtk":
        train = {k: v for k, v in train.items() if k in ("epoch", "epochs", "metrics", "best", "data", "seed", "args")}
    container = train.pop("container", None)  # a Hub folder, a TorchScript or torch.export archive
    return {
        "kind": "checkpoint",
        "path": str(path),
        **({"container": container} if container else {}),
        "size_bytes": _size(Path(path)),
        "source": "rtk" if ckpt.source == "rtk" else "foreign (spec inferred from tensor shapes)",
        "arch": ckpt.spec.name,
        "num_classes": ckpt.spec.num_classes,
        "parameters": params,
        "weights": describe_weights(ckpt),
        "spec": ckpt.spec.to_dict(),
        "preprocess": ckpt.preprocess.to_dict(),
        "preprocess_sources": ckpt.sources,
        "train": train,
    }


def _size(path: Path) -> int:
    """A file's size; a Hub folder's, that of the files rtk reads in it."""
    return sum(f.stat().st_size for f in open_hub_folder(path).files) if path.is_dir() else path.stat().st_size


def describe_weights(ckpt: "Checkpoint") -> str:
    """Which of a checkpoint's weights were taken, from where, and what else it offers:
    ``ema (['state_dict_ema']; raw also present: --weights raw)``."""
    others = [w for w in ckpt.weights_available if w != ckpt.weights]
    also = f"; {', '.join(others)} also present: --weights {others[0]}" if others else ""
    return f"{ckpt.weights} ({ckpt.weights_location}{also})"


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def describe_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """What an ONNX file holds, for ``rtk inspect``: opset, I/O, precision, spec, size (external weight files included).

    Args:
        path: the ``.onnx`` file.

    Returns:
        A JSON-serialisable dict.
    """
    path = Path(path)
    model = load_onnx_graph(path)
    inputs, outputs = graph_io(model)
    data = metadata_dict(model)
    meta = ArtefactMeta.from_dict(data) if data is not None else None
    params = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        params += n
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    extra = {k: v for k, v in (data or {}).items() if k not in ("spec", "preprocess")}
    external = external_data_files(model, path)
    return {
        "kind": "onnx",
        "path": str(path),
        "size_bytes": path.stat().st_size + sum((path.parent / name).stat().st_size for name in external),
        "external_data": list(external) or None,
        "opset": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "precision": onnx_precision(model),
        "inputs": [t.to_dict() for t in inputs],
        "outputs": [t.to_dict() for t in outputs],
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "weights": params,
        "source": "rtk" if meta else "foreign (no rtk metadata)",
        "arch": meta.spec.name if meta else None,
        "num_classes": meta.spec.num_classes if meta else None,
        "spec": meta.spec.to_dict() if meta else None,
        "preprocess": meta.preprocess.to_dict() if meta else None,
        "export": extra or None,
        "int8_files": int8_files(path, (data or {}).get("calibration")),
    }


def int8_files(path: Path, calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """For an rtk int8 file: both layouts one export writes, each present or not and whether it comes
    from the same calibration (the ``ranges_sha256`` both records carry); ``None`` for other files."""
    if not calibration:
        return None
    u8 = calibration.get("layout") == "u8" or str(calibration.get("activations", "")).startswith("uint8")
    name = path.name
    symmetric = path.with_name(name[: -len(".u8.onnx")] + ".onnx") if u8 and name.endswith(".u8.onnx") else (None if u8 else path)
    pair = {"symmetric (TensorRT, ONNX Runtime GPU)": symmetric, "uint8 (ONNX Runtime CPU, OpenVINO)": path if u8 else u8_path_for(path)}
    out = {}
    for what, file in pair.items():
        if file is None:
            continue
        theirs = calibration if file == path else _calibration_of(file)
        same = theirs is not None and theirs.get("ranges_sha256") == calibration.get("ranges_sha256")
        out[what] = f"{file.name} ({'this file' if file == path else 'same calibration' if same else 'missing' if not file.exists() else 'another calibration'})"
    return out


def _calibration_of(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return (metadata_dict(load_onnx_graph(path)) or {}).get("calibration")
    except RtkError:
        return None


def describe_engine(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-serialisable description of an engine for ``rtk inspect``, from its sidecar.

    Works without TensorRT. Where TensorRT and a GPU are present it also says whether this
    machine can run the engine.
    """
    path = Path(path)
    sidecar = read_sidecar(path)
    data = sidecar.to_dict()
    layers = data.pop("layers")
    report: dict[str, Any] = {"kind": "engine", "path": str(path), "size_bytes": path.stat().st_size}
    report.update({k: v for k, v in data.items() if k not in ("format", "version")})
    report["arch"] = sidecar.spec.name
    report["num_classes"] = sidecar.spec.num_classes
    report["this_machine"] = _compatibility_here(sidecar, path)
    if layers is None:
        report["layers"] = "not recorded (build with --profiling-verbosity detailed for per-layer information)"
    else:
        types: dict[str, int] = {}
        for layer in layers:
            types[layer.get("type", "?")] = types.get(layer.get("type", "?"), 0) + 1
        report["layer_count"] = len(layers)
        report["layer_types"] = dict(sorted(types.items(), key=lambda kv: -kv[1]))
        report["layers"] = layers
    return report


def _compatibility_here(sidecar: EngineSidecar, path: Path) -> str:
    if importlib.util.find_spec("tensorrt") is None:
        return f"unknown: TensorRT is not installed here ({install_hint('trt')})"
    try:
        platform = current_platform()
    except RtkError as exc:
        return f"unknown: {exc}"
    problem = platform_mismatch(sidecar, platform)
    if problem:
        return f"cannot run: {problem}; rebuild with `{rebuild_command(sidecar, path)}`"
    return f"can run ({platform.describe()})"
