"""Reading ONNX files: the rtk metadata they carry, their inputs/outputs, and checks that an
ONNX file really is an NCHW image classifier of the expected size.

Only the graph structure is read here (``load_external_data=False``), so describing a large
model is quick and never needs a runtime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import RtkError, first_line, require
from toolkit.files import readable_file
from toolkit.spec import METADATA_KEY, ArtefactMeta, ModelSpec, Preprocess

if TYPE_CHECKING:
    import onnx

#: ONNX TensorProto element types by number, as names users recognise.
_ELEM_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 2: "uint8", 3: "int8"}


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output.

    Attributes:
        name: tensor name.
        dtype: element type (``"float32"``, ``"float16"``, …).
        shape: one entry per dimension: an int, or a string for a named dynamic dimension
            (``"batch"``), or ``None`` when unknown.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def load_onnx_graph(path: str | os.PathLike) -> "onnx.ModelProto":
    """Parse an ONNX file without its external weights; every failure becomes one sentence."""
    onnx = require("onnx", "reading ONNX files")
    path = readable_file(path, "an ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise RtkError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {first_line(exc, 200)})") from None
    if not model.graph.node:
        raise RtkError(f"{path} is not a readable ONNX file (it holds no graph)")
    return model


def _tensor_info(value) -> TensorInfo:
    ttype = value.type.tensor_type
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None) for d in ttype.shape.dim
    )
    return TensorInfo(value.name, _ELEM_TYPES.get(ttype.elem_type, f"type{ttype.elem_type}"), dims)


def graph_io(model: "onnx.ModelProto") -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's real inputs (initializers excluded) and its outputs."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [_tensor_info(v) for v in model.graph.input if v.name not in weights]
    return inputs, [_tensor_info(v) for v in model.graph.output]


def metadata_dict(model: "onnx.ModelProto") -> dict[str, Any] | None:
    """The JSON object under ``metadata_props[METADATA_KEY]``, or ``None`` when absent."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise RtkError(f"the ONNX metadata under {METADATA_KEY!r} is not valid JSON: {exc}") from None
    return None


def read_onnx_meta(path: str | os.PathLike) -> ArtefactMeta:
    """The spec and preprocess an ONNX file was exported with.

    Raises:
        RtkError: the file is unreadable or carries no rtk metadata (a foreign ONNX); the message
            says how to supply the spec.
    """
    data = metadata_dict(load_onnx_graph(path))
    if data is None:
        raise foreign_onnx_error(path)
    return ArtefactMeta.from_dict(data)


#: The ops that mark an explicitly quantized (QDQ) graph.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_qdq(model: "onnx.ModelProto") -> bool:
    """Whether the graph is explicitly quantized: it holds QuantizeLinear/DequantizeLinear nodes."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def foreign_onnx_error(path: str | os.PathLike) -> RtkError:
    """The one sentence for an ONNX file without rtk metadata: how to get one that has it."""
    return RtkError(
        f"{path} carries no rtk metadata (metadata_props[{METADATA_KEY!r}]), so its classes and preprocessing are "
        "unknown; name the checkpoint it came from instead (rtk predict DIR --model CHECKPOINT --engine ort exports "
        "one that has it and runs it), or export it with `rtk export CHECKPOINT`"
    )


def onnx_precision(model: "onnx.ModelProto") -> str:
    """The precision the graph computes in, read from the graph itself (never from the file name).

    ``"int8"`` for a QDQ graph (QuantizeLinear/DequantizeLinear nodes), ``"fp16"`` or ``"bf16"``
    when every floating-point weight has that type, else ``"fp32"``.
    """
    if is_qdq(model):
        return "int8"
    float_types = [t.data_type for t in model.graph.initializer if t.data_type in (1, 10, 16)]
    if float_types and all(t == 10 for t in float_types):
        return "fp16"
    if float_types and all(t == 16 for t in float_types):
        return "bf16"
    return "fp32"


def check_classifier_io(
    inputs: list[TensorInfo], outputs: list[TensorInfo], spec: ModelSpec, preprocess: Preprocess, where: str
) -> None:
    """Make sure an ONNX graph is an NCHW float32 classifier matching ``spec`` and ``preprocess``.

    Dynamic dimensions match anything; fixed ones must equal the spec's.

    Raises:
        RtkError: one sentence naming what does not fit.
    """
    if len(inputs) != 1 or len(outputs) < 1:
        raise RtkError(f"{where} has {len(inputs)} input(s) and {len(outputs)} output(s); an image classifier has one input and one logits output")
    x, y = inputs[0], outputs[0]
    expected = (spec.in_chans, *preprocess.input_size)
    shown = "×".join("?" if d is None else str(d) for d in x.shape)
    if len(x.shape) != 4:
        raise RtkError(f"{where} takes a {len(x.shape)}-dimensional input {x.name!r} ({shown}); rtk needs an NCHW image batch")
    if isinstance(x.shape[1], int) and x.shape[1] != spec.in_chans:
        if x.shape[3] == spec.in_chans:
            raise RtkError(f"{where} takes NHWC input {x.name!r} ({shown}); rtk needs NCHW (N×{spec.in_chans}×H×W) — export it channels-first")
        raise RtkError(f"{where} takes input {x.name!r} of shape {shown}, not NCHW with {spec.in_chans} channel(s)")
    for axis, want in ((2, expected[1]), (3, expected[2])):
        if isinstance(x.shape[axis], int) and x.shape[axis] != want:
            raise RtkError(f"{where} takes {shown} inputs but the model's preprocessing makes {expected[1]}×{expected[2]} images")
    if x.dtype != "float32":
        raise RtkError(f"{where} takes {x.dtype} input; rtk feeds float32 (an fp16 ONNX keeps float32 inputs and outputs)")
    classes = y.shape[-1] if y.shape else None
    if len(y.shape) != 2:
        raise RtkError(f"{where} produces output {y.name!r} of rank {len(y.shape)}; a classifier produces (N, classes) logits")
    if isinstance(classes, int) and classes != spec.num_classes:
        raise RtkError(f"{where} produces {classes} classes but the model has {spec.num_classes}")


def external_data_files(model: "onnx.ModelProto", path: str | os.PathLike) -> tuple[str, ...]:
    """The files beside an ONNX file that hold its external weights (``MODEL.onnx.data``…), relative to its folder.

    Raises:
        RtkError: a weight file lies outside the model's folder, or is missing.
    """
    onnx = require("onnx", "reading ONNX files")
    path = Path(path)
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            location = entry.get("location", "")
            if not location or Path(location).is_absolute() or ".." in Path(location).parts:
                raise RtkError(f"{path.name} keeps weights at {location!r}, outside its own folder; re-export it")
            if not (path.parent / location).is_file():
                raise RtkError(f"{path.name} keeps its weights in {location}, which is missing next to it")
            locations.add(location)
    return tuple(sorted(locations))


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
    from toolkit.artefacts import u8_path_for

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
