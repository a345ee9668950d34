"""What the benchmark knows of a model before timing it: precision, preprocessing, MACs and size,
from edgetl's metadata where the file has it and from the graph where it does not."""

from __future__ import annotations

from pathlib import Path

from edgetl.bench.worker import TimedModel
from edgetl.console import warn
from edgetl.errors import EdgetlError
from edgetl_runtime.modelfile import FORMATS, LITERT, OPENVINO, graph_precision, model_files, read_model_info
from edgetl_runtime.modelinfo import MetadataMissing, Precision
from edgetl_runtime.preprocess import PreprocessSpec


def model_size_mb(path: Path) -> float:
    # weights may sit beside the graph: OpenVINO's .bin, torch.onnx's external data file
    # a checkpoint (the pytorch rows) is one file
    parts = [*model_files(path), path.with_name(path.name + ".data")]
    return sum(p.stat().st_size for p in parts if p.is_file()) / 2**20


def read_graph_precision(model) -> Precision:
    """Precision of a model without edgetl metadata, from what its graph contains."""
    import onnx

    float16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    return graph_precision((n.op_type for n in model.graph.node), float16=float16)


def describe_model(path: Path) -> TimedModel:
    if not path.is_file():
        raise EdgetlError(f"{path}: no such model file; give ONNX files or a run folder")
    if FORMATS.get(path.suffix.lower()) in (OPENVINO, LITERT):
        return describe_ir(path)
    import onnx

    from edgetl.bench.macs import count_macs

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EdgetlError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    try:
        info = read_model_info(path)
        precision, spec = info.precision, info.preprocess
    except MetadataMissing:  # a model from elsewhere: read what the graph says (malformed metadata raises)
        warn(f"{path.name}: no edgetl metadata; timing with ImageNet preprocessing at the graph's input size")
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        size = dims[-1].dim_value if len(dims) == 4 and dims[-1].dim_value else 224
        precision, spec = read_graph_precision(graph), PreprocessSpec().with_size(size)
    try:
        macs = count_macs(graph)
    except EdgetlError as e:
        warn(f"{path.name}: {e}; GOPS left out")
        macs = None
    elem_type = graph.graph.input[0].type.tensor_type.elem_type
    dtype = "float16" if elem_type == onnx.TensorProto.FLOAT16 else "float32"
    return TimedModel(path, precision, spec, macs, model_size_mb(path), dtype)


def describe_ir(path: Path) -> TimedModel:
    """An OpenVINO IR or a .tflite: what its metadata says (no MAC count)."""
    try:
        info = read_model_info(path)
        precision, spec = info.precision, info.preprocess
    except MetadataMissing:
        warn(f"{path.name}: no edgetl metadata; timing as FP32 with ImageNet preprocessing")
        precision, spec = Precision.FP32, PreprocessSpec()
    return TimedModel(path, precision, spec, None, model_size_mb(path))


def describe_checkpoint(path: Path, models: list[TimedModel]) -> TimedModel:
    from edgetl.backbones.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(path)
    # the same network as its FP32 export, so that export's MAC count is the checkpoint's
    macs = next((m.macs for m in models if m.precision == Precision.FP32), None)
    return TimedModel(path, Precision.FP32, info.preprocess, macs, model_size_mb(path))
