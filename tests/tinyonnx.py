"""A one-node ONNX model (Identity: its output is its input, or another unary op such as Neg), so a
test controls what a runtime answers."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def write_identity(path: Path, shape: list, op: str = "Identity") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # read by every onnxruntime the project supports
    onnx.save(model, str(path))
    return path
