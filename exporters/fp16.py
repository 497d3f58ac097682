"""FP16 ONNX: float16 weights and compute behind float32 inputs and outputs.

:func:`to_fp16` converts the traced fp32 graph: every float weight and constant becomes float16,
one Cast stands at each boundary, and float16 runs everywhere in between, which is what TensorRT
11 needs for an FP16 engine and what ONNX Runtime's CUDA provider runs fastest. Converting the
graph, rather than tracing a half-precision copy of the network again, halves the cost of
``--precision all``, and the exporter's BatchNorm folding happens in float32 before the rounding.
:func:`check_fp16_compute` proves the result on the written graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit.core.errors import RtkError

if TYPE_CHECKING:
    import onnx

#: Ops that carry the network's arithmetic; each must take float16 data in an fp16 graph.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "BatchNormalization")


def to_fp16(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A float16 copy of an fp32 graph that still takes and returns float32.

    Float32 initializers, constant tensors and intermediate values become float16, a Cast to
    float32 inside the graph becomes one to float16, and each float32 input and output gets a
    Cast at the boundary. Weights beyond float16's range become infinite here; the export's
    parity check then refuses the file.

    Raises:
        RtkError: the graph has subgraphs (If, Loop), which an exported ResNet never has.
    """
    import numpy as np
    import onnx
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    if any(attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for node in graph.node for attr in node.attribute):
        raise RtkError("the graph has subgraphs (If/Loop), which the fp16 conversion does not handle")

    def halve(tensor: "onnx.TensorProto") -> None:
        if tensor.data_type == TensorProto.FLOAT:
            with np.errstate(over="ignore"):
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))

    for tensor in graph.initializer:
        halve(tensor)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                halve(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in graph.value_info:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16

    taken = {name for node in graph.node for name in (*node.input, *node.output)} | {v.name for v in (*graph.input, *graph.output)}
    renamed, first, last = {}, [], []
    for values, boundary, to_inside in ((graph.input, first, True), (graph.output, last, False)):
        for value in values:
            if value.type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            inner = f"{value.name}_fp16"
            while inner in taken:
                inner += "_"
            taken.add(inner)
            renamed[value.name] = inner
            source, target, to = (value.name, inner, TensorProto.FLOAT16) if to_inside else (inner, value.name, TensorProto.FLOAT)
            boundary.append(helper.make_node("Cast", [source], [target], name=f"cast_{target}", to=to))
    for node in graph.node:
        for names in (node.input, node.output):
            new = [renamed.get(name, name) for name in names]
            del names[:]
            names.extend(new)
    nodes = [*first, *graph.node, *last]
    del graph.node[:]
    graph.node.extend(nodes)
    return half


def check_fp16_compute(model: "onnx.ModelProto") -> None:
    """Make sure a graph computes in float16 and keeps float32 at its boundary.

    Every floating-point weight must be float16, every compute op (:data:`COMPUTE_OPS`) must
    take float16 input, and the graph's input and output must be float32.

    Raises:
        RtkError: naming the first thing that is not so (an exporter regression, not a user error,
            but phrased so it is clear what went wrong).
    """
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    fp32_weights = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    if fp32_weights:
        raise RtkError(f"the fp16 export kept {len(fp32_weights)} float32 weight(s), e.g. {fp32_weights[0]}")
    for node in graph.node:
        if node.op_type in COMPUTE_OPS and types.get(node.input[0]) != onnx.TensorProto.FLOAT16:
            raise RtkError(f"the fp16 export computes {node.op_type} node {node.name or node.output[0]} in {onnx.TensorProto.DataType.Name(types.get(node.input[0], 0))}")
    for value in (*graph.input, *graph.output):
        if value.name not in types or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise RtkError(f"the fp16 export's {value.name} is not float32; fp16 ONNX files keep float32 inputs and outputs")
