"""One table of inference backends: name -> availability check (with a reason), loader, device.

The benchmark and the device runtime both read this table, so a backend is added in one place.
Heavy backends are imported lazily: the runtime starts with onnxruntime alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import BackendUnavailable
from .litert import LiteRtSession, litert_reason
from .modelfile import LITERT, ONNX, OPENVINO, is_int8
from .timing import physical_cores


class BackendName(str, Enum):
    """The inference backends, as `--backend` spells them."""

    ORT_CPU = "onnxruntime-cpu"
    ORT_CUDA = "onnxruntime-cuda"
    ORT_TENSORRT = "onnxruntime-tensorrt"
    ORT_OPENVINO = "onnxruntime-openvino"
    OPENVINO_CPU = "openvino-cpu"
    OPENVINO_GPU = "openvino-gpu"
    LITERT_CPU = "litert-cpu"

    def __str__(self) -> str:  # the name in messages on every Python (3.11 changed a mixin's format)
        return self.value


class Session(Protocol):
    """A loaded model ready to run: a batch in (an image model's one array, or a text model's named
    arrays), logits out."""

    backend: str
    providers: tuple[str, ...]
    threads: int | None  # the effective CPU thread count (None where the work is not on CPU threads)
    execution_precision: str  # what the backend computes in ("model" = the model's own types)
    # the first output's shape as the model declares it (None per dynamic dimension; None if unknown)
    output_shape: tuple[int | None, ...] | None

    def run(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Backend:
    name: BackendName
    device: str  # "cpu" or "gpu": where the work runs, so callers can synchronise or pick precisions
    check: Callable[[], str | None]  # None when usable here, else the reason it is not
    load: Callable[..., Session]  # (path, threads, exact=False)
    formats: tuple[str, ...] = (ONNX.suffix,)  # the suffixes of modelfile.FORMATS it loads


def _cuda_device_reason() -> str | None:
    """Ask the driver directly; torch is not available on a device."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return "no CUDA driver (libcuda) found"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device"
    return None


def _ort_provider_reason(provider: str, package: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed"
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return f"{package} not installed (this onnxruntime has {', '.join(ort.get_available_providers())})"
    return None


def _tensorrt_reason() -> str | None:
    """onnxruntime-gpu lists TensorrtExecutionProvider whether or not TensorRT is installed: look for
    libnvinfer itself (system install, JetPack, or the PyPI `tensorrt-cu12-libs` wheel)."""
    reason = _ort_provider_reason("TensorrtExecutionProvider", "onnxruntime-gpu")
    if reason:
        return reason
    if _load_nvinfer() is None:
        return "no TensorRT libraries (libnvinfer.so.10/.so.8 not found; pip install tensorrt-cu12-libs or JetPack)"
    return _cuda_device_reason()


def _load_nvinfer() -> str | None:
    """Load libnvinfer globally so onnxruntime's TensorRT provider finds it; the path tried, or None.

    The PyPI wheel puts it in site-packages/tensorrt_libs, which is not on the loader's path; once it
    is loaded under its soname, onnxruntime's own dlopen reuses it.
    """
    names = ("libnvinfer.so.10", "libnvinfer.so.8", "nvinfer_10.dll", "nvinfer.dll")
    places = list(names)
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        places += [os.path.join(d, n) for d in spec.submodule_search_locations for n in names]
    for place in places:
        try:
            ctypes.CDLL(place, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        except OSError:
            continue
        return place
    return None


def tensorrt_cache_dir() -> Path:
    """Where TensorRT engines are kept, so each (model, GPU, TensorRT version) is built once.

    EDGETL_TRT_CACHE overrides the default under the user's cache folder.
    """
    explicit = os.environ.get("EDGETL_TRT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgetl-runtime" / "tensorrt"


def tensorrt_options(path: Path, exact: bool) -> tuple[dict[str, object], str]:
    """TensorRT provider options and the precision the engine computes in.

    FP16 kernels wherever TensorRT finds them faster (not for parity gates: exact=True); INT8 follows
    the QDQ nodes of a quantized model (explicit quantization, TensorRT keeps their placement).
    """
    cache = tensorrt_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    int8 = is_int8(path)
    options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": not exact,
        "trt_int8_enable": int8,
    }
    precision = ("int8+" if int8 else "") + ("fp32" if exact else "fp16")
    return options, precision


class OrtSession:
    def __init__(
        self,
        path: Path,
        threads: int | None,
        provider: str,
        backend: str,
        *,
        options: dict[str, object] | None = None,
        precision: str = "model",
    ) -> None:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3
        if threads:
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        chain = {
            "CPUExecutionProvider": [],
            # nodes TensorRT cannot take go to CUDA, not to the CPU
            "TensorrtExecutionProvider": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        }.get(provider, ["CPUExecutionProvider"])
        providers = [(provider, options or {}), *chain]
        self._session = ort.InferenceSession(str(path), session_options, providers=providers)
        self.providers = tuple(self._session.get_providers())
        if self.providers[0] != provider:
            # onnxruntime falls back to CPU silently; a benchmark row must not claim a GPU it did not use
            raise BackendUnavailable(
                f"{backend}: {provider} failed to initialise and onnxruntime fell back to "
                f"{self.providers[0]} (missing CUDA/cuDNN/TensorRT libraries?)"
            )
        self.backend = backend
        # 0 (unset) means one thread per physical core in onnxruntime
        self.threads = threads or physical_cores()
        # "model": onnxruntime runs each op in the model's own precision; TensorRT says what it chose
        self.execution_precision = precision
        self.input_name = self._session.get_inputs()[0].name
        self.output_shape = tuple(
            d if isinstance(d, int) else None for d in self._session.get_outputs()[0].shape
        )

    def run(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, batch if isinstance(batch, dict) else {self.input_name: batch})[0]


def _load_tensorrt(path: Path, threads: int | None, exact: bool = False) -> OrtSession:
    options, precision = tensorrt_options(path, exact)
    return OrtSession(
        path,
        threads,
        "TensorrtExecutionProvider",
        BackendName.ORT_TENSORRT,
        options=options,
        precision=precision,
    )


class OpenVinoSession:
    def __init__(
        self, path: Path, threads: int | None, device: str, backend: str, exact: bool = False
    ) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if exact:
            # By default OpenVINO runs FP32 models in bf16 on CPUs with avx512_bf16/AMX (f16 on GPUs):
            # 0.1-0.4 logit drift on efficientnet_lite0. Parity gates ask for the model's own precision;
            # benchmarks and devices keep the default a user gets, and report it (execution_precision).
            config["EXECUTION_MODE_HINT"] = "ACCURACY"
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(core.read_model(str(path)), device, config)
        self._request = self._compiled.create_infer_request()
        self.providers = (f"openvino:{device}",)
        self.backend = backend
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS")) if device == "CPU" else None
        self.execution_precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        shape = self._compiled.output(0).get_partial_shape()
        self.output_shape = (
            None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)
        )

    def run(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        self._request.infer(batch if isinstance(batch, dict) else {0: batch})
        return self._request.get_output_tensor(0).data.copy()


def _openvino_reason(device: str) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino not installed (pip install 'edgetl-runtime[openvino]')"
    import openvino as ov

    available = ov.Core().available_devices
    if not any(d.split(".")[0] == device for d in available):
        return f"no OpenVINO {device} device (available: {', '.join(available) or 'none'})"
    return None


def _cuda_reason() -> str | None:
    return _ort_provider_reason("CUDAExecutionProvider", "onnxruntime-gpu") or _cuda_device_reason()


def _ort_backend(name: BackendName, device: str, provider: str, check: Callable[[], str | None]) -> Backend:
    return Backend(name, device, check, lambda p, t, exact=False: OrtSession(p, t, provider, name))


def _openvino_backend(name: BackendName, device: str) -> Backend:
    """OpenVINO's own runtime on its `device` ("CPU", "GPU"): it reads ONNX and its IR."""
    return Backend(
        name,
        device.lower(),
        lambda: _openvino_reason(device),
        lambda p, t, exact=False: OpenVinoSession(p, t, device, name, exact),
        (ONNX.suffix, OPENVINO.suffix),
    )


BACKENDS: dict[BackendName, Backend] = {
    b.name: b
    for b in (
        _ort_backend(
            BackendName.ORT_CPU,
            "cpu",
            "CPUExecutionProvider",
            lambda: _ort_provider_reason("CPUExecutionProvider", "onnxruntime"),
        ),
        _ort_backend(BackendName.ORT_CUDA, "gpu", "CUDAExecutionProvider", _cuda_reason),
        Backend(
            BackendName.ORT_TENSORRT,
            "gpu",
            _tensorrt_reason,
            lambda p, t, exact=False: _load_tensorrt(p, t, exact),
        ),
        _ort_backend(
            BackendName.ORT_OPENVINO,
            "cpu",
            "OpenVINOExecutionProvider",
            lambda: _ort_provider_reason("OpenVINOExecutionProvider", "onnxruntime-openvino"),
        ),
        _openvino_backend(BackendName.OPENVINO_CPU, "CPU"),
        _openvino_backend(BackendName.OPENVINO_GPU, "GPU"),
        Backend(
            BackendName.LITERT_CPU,
            "cpu",
            litert_reason,
            lambda p, t, exact=False: LiteRtSession(p, t, BackendName.LITERT_CPU),
            (LITERT.suffix,),
        ),
    )
}

# What "auto" means on a device: the first of these that is available.
AUTO_ORDER = (BackendName.ORT_CUDA, BackendName.ORT_CPU, BackendName.OPENVINO_CPU)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None


def resolve_backend(name: str = "auto") -> Backend:
    """'auto' picks the first available backend of AUTO_ORDER; a named one must be available."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            if BACKENDS[candidate].check() is None:
                return BACKENDS[candidate]
        raise BackendUnavailable("no inference backend available: install onnxruntime")
    backend = get_backend(name)
    reason = backend.check()
    if reason:
        raise BackendUnavailable(f"backend {name}: {reason}")
    return backend


def load_session(
    path: str | Path, backend: str = "auto", threads: int | None = None, exact: bool = False
) -> Session:
    """Load `path` on `backend`. exact=True forbids lower internal precision (for parity gates)."""
    chosen = resolve_backend(backend)
    path = Path(path)
    if path.suffix not in chosen.formats:
        raise BackendUnavailable(f"{path}: backend {chosen.name} reads {', '.join(chosen.formats)} files")
    return chosen.load(path, threads, exact)
