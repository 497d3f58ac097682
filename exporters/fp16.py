"""FP16 ONNX: float16 weights and compute behind float32 inputs and outputs.

The network is exported as ``HalfPrecision(model)``, whose forward casts the input to half,
runs the half-precision network and casts the logits back to float. The exporter then writes
one Cast at each boundary and float16 everywhere in between, which is what TensorRT 11 needs
for an FP16 engine and what ONNX Runtime's CUDA provider runs fastest.
:func:`check_fp16_compute` proves it on the written graph instead of trusting the exporter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit.errors import RtkError

if TYPE_CHECKING:
    import onnx
    import torch
    import torch.nn as nn

#: Ops that carry the network's arithmetic; each must take float16 data in an fp16 graph.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "BatchNormalization")


def half_precision(model: "nn.Module") -> "nn.Module":
    """``model`` (converted in place to float16) wrapped to take and return float32."""
    import torch.nn as nn

    class HalfPrecision(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner.half()

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            return self.inner(x.half()).float()

    return HalfPrecision(model).eval()


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
