"""LiteRT (.tflite) on a device: the edgetl metadata inside the flatbuffer, its tensors, and a session
on the LiteRT interpreter (XNNPACK, LiteRT's default CPU delegate).

A .tflite model keeps a ``metadata`` vector of (name, buffer): edgetl stores each ``edgetl.*`` key as
one entry whose buffer holds the UTF-8 value, so a .tflite says what it is exactly like an ONNX file.
The flatbuffer schema comes with the ``ai-edge-litert`` wheel (pip install 'edgetl-runtime[litert]').
Quantized input and output tensors (int8/uint8, full-integer models) are converted here, from the
scale and zero point the file states, so callers hand in and get back float32 as for every backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import BackendUnavailable, BundleError
from .fileio import atomic_output
from .modelinfo import PREFIX

INSTALL = "pip install 'edgetl-runtime[litert]'"
TFLITE_IDENTIFIER = b"TFL3"


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise BundleError(f"reading a .tflite model needs the LiteRT runtime: {INSTALL}") from None
    return schema_py_generated


def _load_model(path: Path):
    schema = _schema()
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(f"{path}: not a LiteRT (.tflite) flatbuffer")
    return schema, data, schema.Model.GetRootAs(data, 0)


def read_tflite_metadata(path: Path) -> dict[str, str]:
    """All (name -> UTF-8 value) metadata entries of a .tflite; edgetl's are the edgetl.* ones."""
    _, _, model = _load_model(path)
    meta = {}
    try:
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            name = (entry.Name() or b"").decode()
            if name.startswith(PREFIX):
                meta[name] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    except (IndexError, AttributeError, UnicodeDecodeError, TypeError) as e:
        raise BundleError(f"{path}: unreadable metadata in this .tflite ({type(e).__name__})") from None
    return meta


def embed_tflite_metadata(model, meta: dict[str, str]) -> None:
    """Into a ModelT (the schema's object API): replace the edgetl.* entries, keep every other one."""
    schema = _schema()
    kept = [m for m in (model.metadata or []) if not (m.name or b"").decode().startswith(PREFIX)]
    for key, value in meta.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = key, len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept


def write_tflite_metadata(src: Path, dst: Path, meta: dict[str, str]) -> None:
    """Copy `src` to `dst` (atomically) with `meta` as its edgetl metadata."""
    rewrite_tflite(src, dst, lambda model: embed_tflite_metadata(model, meta))


def rewrite_tflite(src: Path, dst: Path, edit) -> None:
    """Copy `src` to `dst` (atomically), `edit` changing its ModelT (the schema's object API) on the way."""
    import flatbuffers

    schema, data, root = _load_model(src)
    model = schema.ModelT.InitFromObj(root)
    for buffer in model.buffers or []:
        # a buffer stored after the flatbuffer (offset, size) is brought inline: repacking moves
        # the flatbuffer's end, which those offsets count from
        if buffer.offset and buffer.offset > 1:
            buffer.data = np.frombuffer(data, np.uint8, buffer.size, buffer.offset)
            buffer.offset = buffer.size = 0
    edit(model)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    with atomic_output(dst) as tmp:
        tmp.write_bytes(builder.Output())


def _interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    try:
        return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: not a loadable LiteRT model ({first})") from None


def _spec(detail: dict):
    from .manifest import TensorSpec

    shape = tuple(int(d) if d > 0 else "?" for d in detail["shape_signature"])
    return TensorSpec(detail["name"], shape, "float32")


def tflite_tensors(path: Path) -> tuple[list, list]:
    """The tensors as callers see them: float32, also where the file's are int8 or uint8, which
    LiteRtSession quantizes and dequantizes with the scale and zero point the file holds."""
    if litert_reason() is not None:
        raise BundleError(f"{path}: {litert_reason()}")
    interpreter = _interpreter(path)
    return (
        [_spec(d) for d in interpreter.get_input_details()],
        [_spec(d) for d in interpreter.get_output_details()],
    )


def is_quantized_tflite(path: Path) -> bool:
    """INT8 when some tensor of the graph is int8 or uint8 (a float model has float32 tensors and
    int32 shapes only); ModelInfo.quantization says which INT8 it is."""
    schema, _, model = _load_model(path)
    graph = model.Subgraphs(0)
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8}
    return any(graph.Tensors(i).Type() in integer for i in range(graph.TensorsLength()))


def litert_reason() -> str | None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return f"ai-edge-litert not installed ({INSTALL})"
    return None


class LiteRtSession:
    """The LiteRT interpreter on `threads` CPU threads, XNNPACK delegate (the default on CPU)."""

    def __init__(self, path: Path, threads: int | None, backend: str) -> None:
        from .timing import physical_cores

        self.threads = threads or physical_cores()
        self._interpreter = _interpreter(path, self.threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._shape = None
        self.backend = backend
        self.providers = ("litert:xnnpack",)
        self.execution_precision = "model"
        # shape_signature marks a dimension resizable at run time with -1
        self.output_shape = tuple(int(d) if d >= 0 else None for d in self._output["shape_signature"])

    def _resize(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            self._interpreter.resize_tensor_input(self._input["index"], list(shape))
            self._interpreter.allocate_tensors()
            self._shape = shape
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]

    def run(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if isinstance(batch, dict):
            raise BackendUnavailable("litert-cpu runs image models (a text model has no .tflite)")
        self._resize(tuple(batch.shape))
        x = quantize_tensor(np.asarray(batch, dtype=np.float32), self._input)
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return _dequantize(self._interpreter.get_tensor(self._output["index"]), self._output)


def quantize_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * np.float32(scale)
