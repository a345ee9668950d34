"""One table of inference backends: name -> availability check (with a reason), loader, device.

The benchmark and the device runtime both read this table, so a backend is added in one place.
Heavy backends are imported lazily: the runtime starts with onnxruntime alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import BackendUnavailable
from .timing import physical_cores


class Session(Protocol):
    """A loaded model ready to run: NCHW float32 batch in, logits out."""

    backend: str
    providers: tuple[str, ...]
    threads: int | None  # the effective CPU thread count (None where the work is not on CPU threads)
    execution_precision: str  # what the backend computes in ("model" = the model's own types)

    def run(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Backend:
    name: str
    device: str  # "cpu" or "gpu": where the work runs, so callers can synchronise or pick precisions
    check: Callable[[], str | None]  # None when usable here, else the reason it is not
    load: Callable[..., Session]  # (path, threads, exact=False)
    formats: tuple[str, ...] = (".onnx",)


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


class OrtSession:
    def __init__(self, path: Path, threads: int | None, provider: str, backend: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = tuple(self._session.get_providers())
        if self.providers[0] != provider:
            # onnxruntime falls back to CPU silently; a benchmark row must not claim a GPU it did not use
            raise BackendUnavailable(
                f"{backend}: {provider} failed to initialise (missing CUDA/cuDNN libraries?)"
            )
        self.backend = backend
        # 0 (unset) means one thread per physical core in onnxruntime
        self.threads = threads or physical_cores()
        self.execution_precision = "model"  # onnxruntime runs each op in the model's own precision
        self.input_name = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self.input_name: batch})[0]


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

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
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


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "onnxruntime-cpu",
            "cpu",
            lambda: _ort_provider_reason("CPUExecutionProvider", "onnxruntime"),
            lambda p, t, exact=False: OrtSession(p, t, "CPUExecutionProvider", "onnxruntime-cpu"),
        ),
        Backend(
            "onnxruntime-cuda",
            "gpu",
            _cuda_reason,
            lambda p, t, exact=False: OrtSession(p, t, "CUDAExecutionProvider", "onnxruntime-cuda"),
        ),
        Backend(
            "onnxruntime-openvino",
            "cpu",
            lambda: _ort_provider_reason("OpenVINOExecutionProvider", "onnxruntime-openvino"),
            lambda p, t, exact=False: OrtSession(p, t, "OpenVINOExecutionProvider", "onnxruntime-openvino"),
        ),
        Backend(
            "openvino-cpu",
            "cpu",
            lambda: _openvino_reason("CPU"),
            lambda p, t, exact=False: OpenVinoSession(p, t, "CPU", "openvino-cpu", exact),
            (".onnx", ".xml"),
        ),
        Backend(
            "openvino-gpu",
            "gpu",
            lambda: _openvino_reason("GPU"),
            lambda p, t, exact=False: OpenVinoSession(p, t, "GPU", "openvino-gpu", exact),
            (".onnx", ".xml"),
        ),
    )
}

# What "auto" means on a device: the first of these that is available.
AUTO_ORDER = ("onnxruntime-cuda", "onnxruntime-cpu", "openvino-cpu")


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
