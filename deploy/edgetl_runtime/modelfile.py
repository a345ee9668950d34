"""Model files edgetl reads and writes, one table entry per format: ONNX, OpenVINO IR and LiteRT.

The one table of model formats: export, quantize, benchmark, package and the runtime ask it for a
format's suffix, the files a model needs beside it (an IR's ``.bin``), how it stores edgetl's metadata
(flat ``edgetl.*`` str -> str, see ModelInfo.to_metadata: ONNX in ``metadata_props``, an IR in
``rt_info["edgetl"]``, a .tflite in its flatbuffer ``metadata``), its input and output tensors, the edgetl command that rebuilds a run's model
in it, and what a device installs to run it.
Metadata is read with the onnx package where it is installed (edgetl) and with onnxruntime alone on a
device; onnx (also for writing) and openvino are imported lazily.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError
from .fileio import atomic_output
from .modelinfo import PREFIX, ModelInfo, Precision

IR_SECTION = "edgetl"
OPENVINO_SUFFIX, IR_WEIGHTS = (
    ".xml",
    ".bin",
)  # an IR is its graph (.xml) and its weights (.bin)  # rt_info holds the keys without the prefix, under this section


@dataclass(frozen=True)
class ModelFormat:
    name: str  # as `--format` spells it
    suffix: str
    companions: tuple[str, ...]  # suffixes of the files beside the model that hold the rest of it
    read: Callable[[Path], dict[str, str]]  # the file's edgetl.* metadata ({} for a model from elsewhere)
    embed: Callable[[object, dict[str, str]], None]  # into a loaded model: onnx.ModelProto, openvino.Model
    write: Callable[[Path, Path, dict[str, str]], None]  # copy src to dst (atomically) with this metadata
    tensors: Callable[[Path], tuple[list, list]]  # (inputs, outputs) as manifest.TensorSpec
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


def _embed_ir(model, meta: dict[str, str]) -> None:
    # ModelInfo.to_metadata always gives every key, so setting them all replaces an older set
    for key, value in meta.items():
        model.set_rt_info(value, [IR_SECTION, key.removeprefix(PREFIX)])


def _write_ir(src: Path, dst: Path, meta: dict[str, str]) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(src))
    _embed_ir(model, meta)
    with tempfile.TemporaryDirectory(prefix="edgetl-ir-") as tmp:
        xml = Path(tmp) / f"model{OPENVINO_SUFFIX}"
        # save_model would otherwise halve FP32 weights to FP16
        ov.save_model(model, str(xml), compress_to_fp16=False)
        dst.parent.mkdir(parents=True, exist_ok=True)
        # the .bin first: OpenVINO pairs the files by name, so a finished .xml never lacks its weights
        with atomic_output(dst.with_suffix(IR_WEIGHTS)) as tmp_bin:
            shutil.copyfile(xml.with_suffix(IR_WEIGHTS), tmp_bin)
        with atomic_output(dst) as tmp_xml:
            shutil.copyfile(xml, tmp_xml)


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
    "onnx",
    ".onnx",
    (),
    _read_onnx,
    _embed_onnx,
    _write_onnx,
    _onnx_tensors,
    rebuild={Precision.FP32: "edgetl export {run}", Precision.INT8: "edgetl quantize {run}"},
    install="pip install edgetl-runtime     # numpy + pillow + onnxruntime; no PyTorch",
)
OPENVINO = ModelFormat(
    "openvino",
    OPENVINO_SUFFIX,
    (IR_WEIGHTS,),
    _read_ir,
    _embed_ir,
    _write_ir,
    _ir_tensors,
    rebuild={
        Precision.FP32: "edgetl export {run} --format openvino",
        Precision.INT8: "edgetl quantize {run} --backend nncf",
    },
    install="pip install 'edgetl-runtime[openvino]'     # numpy + pillow + openvino; no PyTorch",
)


def _read_tflite(path: Path) -> dict[str, str]:
    from .litert import read_tflite_metadata

    return read_tflite_metadata(path)


def _embed_tflite(model, meta: dict[str, str]) -> None:
    from .litert import embed_tflite_metadata

    embed_tflite_metadata(model, meta)


def _write_tflite(src: Path, dst: Path, meta: dict[str, str]) -> None:
    from .litert import write_tflite_metadata

    write_tflite_metadata(src, dst, meta)


def _tflite_tensors(path: Path) -> tuple[list, list]:
    from .litert import tflite_tensors

    return tflite_tensors(path)


LITERT = ModelFormat(
    "litert",
    ".tflite",
    (),
    _read_tflite,
    _embed_tflite,
    _write_tflite,
    _tflite_tensors,
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


def is_model_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in FORMATS and Path(path).is_file()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The edgetl.* metadata of a model file; {} when it has none (ModelInfo.from_metadata says so)."""
    path = Path(path)
    fmt = model_format(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    return {k: v for k, v in fmt.read(path).items() if k.startswith(PREFIX)}


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
