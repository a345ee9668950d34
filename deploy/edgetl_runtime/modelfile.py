"""Model files edgetl reads and writes, one table entry per format: ONNX, OpenVINO IR and LiteRT.

The one table of model formats: export, quantize, benchmark, package and the runtime ask it for a
format's suffix, the files a model needs beside it (an IR's ``.bin``), how it stores edgetl's metadata
(flat ``edgetl.*`` str -> str, see ModelInfo.to_metadata: ONNX in ``metadata_props``, an IR in
``rt_info["edgetl"]``, a .tflite in its flatbuffer ``metadata``), its input and output tensors,
whether its graph is INT8, the edgetl command that rebuilds a run's model in it, and what a device
installs to run it.
Metadata is read with the onnx package where it is installed (edgetl) and with onnxruntime alone on a
device; onnx (also for writing) and openvino are imported lazily.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import litert
from .errors import BundleError
from .fileio import atomic_output
from .modelinfo import PREFIX, ModelInfo, Precision

IR_SECTION = "edgetl"  # an IR's rt_info holds the keys without the prefix, under this section

# What makes an ONNX graph INT8: QDQ pairs (static and dynamic) and onnxruntime's integer kernels. The
# one definition every stage uses (export's describe, quantize's check, the benchmark, the runtime).
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
QUANTIZED_OP_PREFIXES = ("QLinear", "ConvInteger", "MatMulInteger", "QGemm")
IR_QUANTIZED_OPS = frozenset({"FakeQuantize"})  # how NNCF's INT8 IRs quantize activations and weights


@dataclass(frozen=True)
class ModelFormat:
    name: str  # as `--format` spells it
    suffix: str
    companions: tuple[str, ...]  # suffixes of the files beside the model that hold the rest of it
    read: Callable[[Path], dict[str, str]]  # the file's edgetl.* metadata ({} for a model from elsewhere)
    embed: Callable[[object, dict[str, str]], None]  # into a loaded model: onnx.ModelProto, openvino.Model
    write: Callable[[Path, Path, dict[str, str]], None]  # copy src to dst (atomically) with this metadata
    tensors: Callable[[Path], tuple[list, list]]  # (inputs, outputs) as manifest.TensorSpec
    is_int8: Callable[[Path], bool]  # from the graph itself, metadata or not
    rebuild: dict[Precision, str]  # the edgetl command that writes a run's model in this format ({run})
    install: str  # what a device installs to run it (a bundle's README says so)

    @property
    def backends(self) -> tuple[str, ...]:
        """The inference backends that load this format, in the backend table's order."""
        from .backends import BACKENDS

        return tuple(name for name, b in BACKENDS.items() if self.suffix in b.formats)

    def files(self, path: str | Path) -> tuple[Path, ...]:
        """The model file and its companions: what must travel (and be checksummed) together."""
        path = Path(path)
        return (path, *(path.with_suffix(s) for s in self.companions))


def quantized_ops(op_types: Iterable[str]) -> tuple[str, ...]:
    """The quantized op types among `op_types` (an ONNX graph's node op_types), sorted."""
    return tuple(sorted({o for o in op_types if o in QUANTIZED_OPS or o.startswith(QUANTIZED_OP_PREFIXES)}))


def graph_precision(op_types: Iterable[str], *, float16: bool = False) -> Precision:
    """An ONNX graph's precision: INT8 when it holds quantized ops, else FP16 when its floats are half."""
    if quantized_ops(op_types):
        return Precision.INT8
    return Precision.FP16 if float16 else Precision.FP32


@cache
def _onnx_nodes_message() -> type:
    """A protobuf message that reads an ONNX file's graph.node[].op_type and skips the rest: a device
    has protobuf (onnxruntime needs it) but not the onnx package, and onnxruntime lists no nodes.
    Field numbers from onnx.proto: ModelProto.graph = 7, GraphProto.node = 1, NodeProto.op_type = 4."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="edgetl_onnx_nodes.proto", package="edgetl_onnx_nodes")
    for message, spec in (
        ("Node", {"name": "op_type", "number": 4, "type": f.TYPE_STRING}),
        (
            "Graph",
            {"name": "node", "number": 1, "type_name": ".edgetl_onnx_nodes.Node", "label": f.LABEL_REPEATED},
        ),
        ("Model", {"name": "graph", "number": 7, "type_name": ".edgetl_onnx_nodes.Graph"}),
    ):
        proto.message_type.add(name=message).field.add(
            **{"type": f.TYPE_MESSAGE, "label": f.LABEL_OPTIONAL, **spec}
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("edgetl_onnx_nodes.Model"))


def _onnx_is_int8(path: Path) -> bool:
    from google.protobuf.message import DecodeError

    try:
        model = _onnx_nodes_message().FromString(path.read_bytes())
    except DecodeError as e:
        raise BundleError(f"{path}: not a readable ONNX model ({e})") from None
    return bool(quantized_ops(node.op_type for node in model.graph.node))


def _read_onnx(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:  # a device has onnxruntime only
        return _read_onnx_with_onnxruntime(path)
    try:
        # the protobuf alone: a graph onnxruntime cannot run (a custom op) still says what it is
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf and onnx raise assorted types for a bad file
        raise BundleError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    return {p.key: p.value for p in proto.metadata_props}


def _read_onnx_with_onnxruntime(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types for a bad file
        raise BundleError(f"{path}: not a loadable ONNX model ({e})") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def _embed_onnx(proto, meta: dict[str, str]) -> None:
    """Replace the edgetl.* metadata_props; other keys stay, in their order, before edgetl's."""
    import onnx

    kept = {p.key: p.value for p in proto.metadata_props if not p.key.startswith(PREFIX)}
    onnx.helper.set_model_props(proto, {**kept, **meta})


def _write_onnx(src: Path, dst: Path, meta: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(src))
    _embed_onnx(proto, meta)
    with atomic_output(dst) as tmp:
        onnx.save(proto, str(tmp))


def _read_ir(path: Path) -> dict[str, str]:
    import openvino as ov

    try:
        model = ov.Core().read_model(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: not a loadable OpenVINO IR (with its .bin beside it): {first}") from None
    if not model.has_rt_info([IR_SECTION]):
        return {}
    values = model.get_rt_info([IR_SECTION]).astype(dict)
    return {PREFIX + k: v.astype(str) for k, v in values.items()}


def _ir_is_int8(path: Path) -> bool:
    import openvino as ov

    return any(op.get_type_name() in IR_QUANTIZED_OPS for op in ov.Core().read_model(str(path)).get_ops())


def _embed_ir(model, meta: dict[str, str]) -> None:
    # ModelInfo.to_metadata always gives every key, so setting them all replaces an older set
    for key, value in meta.items():
        model.set_rt_info(value, [IR_SECTION, key.removeprefix(PREFIX)])


def _write_ir(src: Path, dst: Path, meta: dict[str, str]) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(src))
    _embed_ir(model, meta)
    with tempfile.TemporaryDirectory(prefix="edgetl-ir-") as tmp:
        saved = OPENVINO.files(Path(tmp) / f"model{OPENVINO.suffix}")
        # save_model would otherwise halve FP32 weights to FP16
        ov.save_model(model, str(saved[0]), compress_to_fp16=False)
        dst.parent.mkdir(parents=True, exist_ok=True)
        # the .bin first: OpenVINO pairs the files by name, so a finished .xml never lacks its weights
        for src_file, dst_file in reversed(tuple(zip(saved, OPENVINO.files(dst), strict=True))):
            with atomic_output(dst_file) as tmp_file:
                shutil.copyfile(src_file, tmp_file)


def _onnx_tensors(path: Path) -> tuple[list, list]:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from .manifest import TensorSpec

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
        return TensorSpec(value.name, shape, tensor_dtype_to_np_dtype(t.elem_type).name)

    return [spec(v) for v in graph.input if v.name not in initializers], [spec(v) for v in graph.output]


def _ir_tensors(path: Path) -> tuple[list, list]:
    import openvino as ov

    from .manifest import TensorSpec

    model = ov.Core().read_model(str(path))

    def spec(port) -> TensorSpec:
        shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
        return TensorSpec(port.get_any_name(), shape, port.get_element_type().to_dtype().name)

    return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs]


ONNX = ModelFormat(
    name="onnx",
    suffix=".onnx",
    companions=(),
    read=_read_onnx,
    embed=_embed_onnx,
    write=_write_onnx,
    tensors=_onnx_tensors,
    is_int8=_onnx_is_int8,
    rebuild={Precision.FP32: "edgetl export {run}", Precision.INT8: "edgetl quantize {run}"},
    install="pip install edgetl-runtime     # numpy + pillow + onnxruntime; no PyTorch",
)
OPENVINO = ModelFormat(
    name="openvino",
    suffix=".xml",  # an IR is its graph (.xml) and its weights (.bin)
    companions=(".bin",),
    read=_read_ir,
    embed=_embed_ir,
    write=_write_ir,
    tensors=_ir_tensors,
    is_int8=_ir_is_int8,
    rebuild={
        Precision.FP32: "edgetl export {run} --format openvino",
        Precision.INT8: "edgetl quantize {run} --backend nncf",
    },
    install="pip install 'edgetl-runtime[openvino]'     # numpy + pillow + openvino; no PyTorch",
)


LITERT = ModelFormat(
    name="litert",
    suffix=".tflite",
    companions=(),
    read=litert.read_tflite_metadata,
    embed=litert.embed_tflite_metadata,  # into the schema's ModelT
    write=litert.write_tflite_metadata,
    tensors=litert.tflite_tensors,
    is_int8=litert.is_quantized_tflite,
    rebuild={
        Precision.FP32: "edgetl export {run} --format litert",
        Precision.INT8: "edgetl quantize {run} --backend litert",
    },
    install="pip install 'edgetl-runtime[litert]'     # numpy + pillow + ai-edge-litert; no PyTorch",
)
FORMATS: dict[str, ModelFormat] = {f.suffix: f for f in (ONNX, OPENVINO, LITERT)}
BY_NAME: dict[str, ModelFormat] = {f.name: f for f in FORMATS.values()}


def model_format(path: str | Path) -> ModelFormat:
    """The format of a model file, by its suffix."""
    path = Path(path)
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise BundleError(f"{path}: not a model file edgetl reads (give {' or '.join(FORMATS)})") from None


def model_files(path: str | Path) -> tuple[Path, ...]:
    """A model file and its companions (ModelFormat.files); a file of no format here stands alone."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    return fmt.files(path) if fmt else (Path(path),)


def is_model_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in FORMATS and Path(path).is_file()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The edgetl.* metadata of a model file; {} when it has none (ModelInfo.from_metadata says so)."""
    path = Path(path)
    fmt = model_format(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    return {k: v for k, v in fmt.read(path).items() if k.startswith(PREFIX)}


def is_int8(path: str | Path) -> bool:
    """Whether a model file's graph is quantized to INT8 (what it holds, whatever its metadata says)."""
    return model_format(path).is_int8(Path(path))


def read_model_info(path: str | Path) -> ModelInfo:
    """The edgetl metadata of a model file (ONNX via onnxruntime alone, or OpenVINO IR)."""
    return ModelInfo.from_metadata(read_metadata(path), source=str(path))


def write_metadata(src: str | Path, dst: str | Path, meta: dict[str, str]) -> None:
    """Copy model `src` to `dst` (same format) with `meta` as its edgetl metadata; `src` is not changed."""
    src, dst = Path(src), Path(dst)
    fmt = model_format(src)
    if model_format(dst) is not fmt:
        raise BundleError(f"{dst}: must be a {fmt.suffix} file like {src.name}")
    fmt.write(src, dst, meta)
