"""Multiply-accumulates per image, counted from an ONNX graph.

Counts the layers that dominate a vision backbone: Conv / ConvTranspose (grouped and depthwise
included), Gemm and MatMul, and their quantized forms (QLinearConv, ConvInteger, QLinearMatMul,
MatMulInteger). Element-wise ops, pooling and activations are left out, as is customary for MACs.
Shapes come from ONNX shape inference with the batch dimension set to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import onnx

from edgetl.errors import EdgetlError

Shapes = dict[str, tuple[int, ...]]


def _conv(node: onnx.NodeProto, shapes: Shapes, data: int, weight: int) -> int:
    # weight (C_out, C_in/group, *kernel): each output element costs C_in/group * prod(kernel) MACs
    return math.prod(shapes[node.output[0]]) * math.prod(shapes[node.input[weight]][1:])


def _conv_transpose(node: onnx.NodeProto, shapes: Shapes, data: int, weight: int) -> int:
    # weight (C_in, C_out/group, *kernel): each input element is spread over C_out/group * prod(kernel)
    return math.prod(shapes[node.input[data]]) * math.prod(shapes[node.input[weight]][1:])


def _matmul(node: onnx.NodeProto, shapes: Shapes, data: int, weight: int) -> int:
    # every output element is a dot product over A's last dimension
    return math.prod(shapes[node.output[0]]) * shapes[node.input[data]][-1]


def _gemm(node: onnx.NodeProto, shapes: Shapes, data: int, weight: int) -> int:
    a_shape = shapes[node.input[data]]
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    return math.prod(shapes[node.output[0]]) * (a_shape[0] if trans_a else a_shape[1])


# op type -> (counter, input position of the data, input position of the weight / second operand)
_COUNTERS: dict[str, tuple[Callable[[onnx.NodeProto, Shapes, int, int], int], int, int]] = {
    "Conv": (_conv, 0, 1),
    "ConvInteger": (_conv, 0, 1),
    "QLinearConv": (_conv, 0, 3),
    "ConvTranspose": (_conv_transpose, 0, 1),
    "MatMul": (_matmul, 0, 1),
    "MatMulInteger": (_matmul, 0, 1),
    "QLinearMatMul": (_matmul, 0, 3),
    "Gemm": (_gemm, 0, 1),
}


def _static_shapes(model: onnx.ModelProto) -> Shapes:
    shapes: Shapes = {}
    graph = model.graph
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def count_macs(model: str | Path | onnx.ModelProto) -> int:
    """MACs for one image (batch 1). Raises EdgetlError when a counted layer's shape stays unknown."""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        try:
            # the weights themselves are not needed, only their shapes
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise EdgetlError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    model = _with_batch_one(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = _static_shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type not in _COUNTERS:
            continue
        counter, x, w = _COUNTERS[node.op_type]
        try:
            total += counter(node, shapes, x, w)
        except KeyError:
            raise EdgetlError(
                f"cannot count MACs: shape of {node.op_type} node {node.name or node.output[0]!r} is unknown"
            ) from None
    return total


def _with_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of the model whose graph inputs have a fixed batch of 1, so every shape is concrete."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    # inferred shapes recorded with a symbolic batch would contradict batch 1
    del model.graph.value_info[:]
    return model
