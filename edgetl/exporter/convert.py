"""Conversion: PyTorch -> ONNX (dynamo exporter, dynamic batch), optional graph clean-up and FP16,
edgetl metadata, and ONNX -> OpenVINO IR. The export stage (edgetl/exporter/export.py) gates and places them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from edgetl.backbones.registry import EdgeModel
from edgetl.errors import EdgetlError
from edgetl.exporter.litert import write_litert
from edgetl.exporter.parity import Parity
from edgetl.options import DEFAULT_OPSET, ExportFormat
from edgetl_runtime.backends import BackendName
from edgetl_runtime.fileio import atomic_output
from edgetl_runtime.modelfile import OPENVINO
from edgetl_runtime.modelinfo import ModelInfo

# The dynamo exporter has no operator implementations below opset 18: asking for 17 silently yields 18
# or a failed down-conversion, so the floor is stated rather than pretended.
MIN_OPSET = DEFAULT_OPSET
# ONNX protobuf cannot hold more than 2 GB inline; only then do the weights go to a side file.
PROTOBUF_LIMIT = 2**31 - 1


def _runtime_runs_opset(opset: int) -> bool:
    """onnxruntime lags behind onnx: ask it directly with a one-node model stamped with `opset`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except ort.capi.onnxruntime_pybind11_state.Fail:  # an opset or IR version it does not know
        return False
    return True


def opset_range() -> tuple[int, int]:
    """The opsets an export can use here: the exporter's floor up to what both onnx and onnxruntime take."""
    import onnx

    high = onnx.defs.onnx_opset_version()
    while high > MIN_OPSET and not _runtime_runs_opset(high):
        high -= 1
    return MIN_OPSET, high


def check_opset(opset: int) -> None:
    import onnx
    import onnxruntime

    low, high = opset_range()
    if not low <= opset <= high:
        raise EdgetlError(
            f"--opset {opset}: choose {low} to {high} (the dynamo exporter starts at {low}; installed onnx "
            f"{onnx.__version__} writes up to {onnx.defs.onnx_opset_version()}, onnxruntime "
            f"{onnxruntime.__version__} runs up to {high})"
        )


def to_onnx(model: EdgeModel, example: torch.Tensor, opset: int, info: ModelInfo):
    """PyTorch -> ONNX ModelProto with the dynamo exporter and a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            input_names=[info.input_name],
            output_names=[info.output_name],
            verbose=False,
        )
    except Exception as e:  # the exporter raises many types; the first line says what failed
        raise EdgetlError(
            f"ONNX export of {info.backbone} failed ({type(e).__name__}: {str(e).strip().splitlines()[0]})"
        ) from None
    return program.model_proto


def _drop_unused_opsets(proto) -> None:
    used = {n.domain for n in proto.graph.node} | {""}
    keep = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def optimize_onnx(proto, work: Path):
    """onnxruntime's offline basic optimisations: constant folding and redundant-node removal, standard
    ONNX ops only (extended levels emit onnxruntime-specific fused ops and would tie the file to it)."""
    import onnx
    import onnxruntime as ort

    raw, optimized = work / "raw.onnx", work / "optimized.onnx"
    onnx.save(proto, raw)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    result = onnx.load(optimized)
    _drop_unused_opsets(result)
    return result


def to_fp16(proto):
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Float inputs and outputs stay FP32, so the same preprocessing and callers work unchanged.
    converted = onnx_ir.from_proto(convert_float_to_float16(proto, keep_io_types=True))
    # The converter appends its input casts at the end of the node list; ONNX requires topological order.
    converted.graph.sort()
    return onnx_ir.to_proto(converted)


def save_onnx(proto, path: Path, final_name: str, stack: contextlib.ExitStack) -> int:
    """Write the model (inline below 2 GB) and return its size in bytes, side file included."""
    import onnx

    data = None
    if proto.ByteSize() < PROTOBUF_LIMIT:
        onnx.save(proto, path)
    else:
        data = path.parent / f"{final_name}.data"  # the name the file refers to, so written in place
        stack.push(lambda failed, *_: failed and data.unlink(missing_ok=True))
        onnx.save(proto, path, save_as_external_data=True, location=data.name)
    onnx.checker.check_model(str(path))  # by path: the checker cannot take a >2 GB proto in memory
    return path.stat().st_size + (data.stat().st_size if data else 0)


def write_openvino(
    onnx_path: Path, xml: Path, info: ModelInfo, stack: contextlib.ExitStack, check: Callable
) -> Parity:
    """ONNX -> OpenVINO IR (.xml + .bin) with the metadata in rt_info, gated, renamed as a pair."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    OPENVINO.embed(model, info.to_metadata())
    xml_tmp = stack.enter_context(atomic_output(xml))
    bin_of_tmp = OPENVINO.files(xml_tmp)[1]  # OpenVINO pairs the files by name
    stack.callback(bin_of_tmp.unlink, missing_ok=True)
    # save_model would otherwise halve the weights to FP16 and break FP32 parity.
    ov.save_model(model, str(xml_tmp), compress_to_fp16=False)
    parity = check(xml_tmp, BackendName.OPENVINO_CPU)
    os.replace(bin_of_tmp, stack.enter_context(atomic_output(OPENVINO.files(xml)[1])))
    return parity


# one writer per format beyond ONNX; its suffix and files are the format table's (modelfile.BY_NAME)
EXTRA_FORMATS: dict[ExportFormat, Callable[..., Parity]] = {
    ExportFormat.OPENVINO: write_openvino,
    ExportFormat.LITERT: write_litert,
}
