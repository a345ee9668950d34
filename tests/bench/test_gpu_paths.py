"""CUDA / TensorRT code paths without a GPU: only device and library availability is mocked.

Nothing here runs a kernel on a GPU; what can only be measured on one (latency, engine build time,
agreement of FP16/INT8 engines) is not claimed by these tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgetl_runtime.backends as rb
from edgetl.bench.benchmark import BENCH_BACKENDS
from edgetl.bundler.model_files import MODEL_BACKENDS
from edgetl.device import cuda_autocast_dtype, place_model, to_device
from edgetl.trainer.train import resolve_device
from edgetl_runtime.errors import BackendUnavailable
from edgetl_runtime.manifest import Precision


def test_gpu_rows_are_in_the_runtime_table_and_the_benchmark():
    for name in ("onnxruntime-cuda", "onnxruntime-tensorrt", "pytorch-cuda"):
        assert name in BENCH_BACKENDS and BENCH_BACKENDS[name].device == "gpu"
    assert "onnxruntime-tensorrt" in rb.BACKENDS
    # TensorRT runs the INT8 QDQ model as INT8 and the FP32 model as FP16
    assert "onnxruntime-tensorrt" in MODEL_BACKENDS[Precision.INT8]
    assert "onnxruntime-tensorrt" in MODEL_BACKENDS[Precision.FP32]


def test_every_gpu_row_says_why_it_is_unavailable_here():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name in ("onnxruntime-cuda", "onnxruntime-tensorrt", "pytorch-cuda"):
        reason = BENCH_BACKENDS[name].check()
        assert reason and isinstance(reason, str), name


def _providers(monkeypatch, providers):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))


GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_reason_names_the_missing_piece(monkeypatch):
    _providers(monkeypatch, ["CPUExecutionProvider"])
    assert "onnxruntime-gpu not installed" in rb._tensorrt_reason()
    _providers(monkeypatch, GPU_PROVIDERS)
    monkeypatch.setattr(rb, "_load_nvinfer", lambda: None)
    assert "no TensorRT libraries" in rb._tensorrt_reason()
    monkeypatch.setattr(rb, "_load_nvinfer", lambda: "libnvinfer.so.10")
    monkeypatch.setattr(rb, "_cuda_device_reason", lambda: "no CUDA device")
    assert rb._tensorrt_reason() == "no CUDA device"
    monkeypatch.setattr(rb, "_cuda_device_reason", lambda: None)
    assert rb._tensorrt_reason() is None


def test_tensorrt_options_cache_engines_and_follow_the_model(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_TRT_CACHE", str(tmp_path / "engines"))
    fp32, int8 = tiny_run / "model.onnx", tiny_run / "model.int8.onnx"
    options, precision = rb.tensorrt_options(fp32, exact=False)
    assert options["trt_engine_cache_enable"] and Path(options["trt_engine_cache_path"]).is_dir()
    assert options["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert options["trt_fp16_enable"] and not options["trt_int8_enable"] and precision == "fp16"
    options, precision = rb.tensorrt_options(int8, exact=False)
    assert options["trt_int8_enable"] and precision == "int8+fp16"
    options, precision = rb.tensorrt_options(fp32, exact=True)  # parity gates: no FP16 kernels
    assert not options["trt_fp16_enable"] and precision == "fp32"


def test_tensorrt_cache_defaults_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGETL_TRT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert rb.tensorrt_cache_dir() == tmp_path / "edgetl-runtime" / "tensorrt"


class _FakeSession:
    """An InferenceSession that registered only `got`: what onnxruntime does when a GPU provider
    cannot load its libraries (it warns and carries on on the CPU)."""

    def __init__(self, got):
        self.got = got

    def __call__(self, path, options, providers):
        self.asked = providers
        return self

    def get_providers(self):
        return self.got

    def get_inputs(self):
        class _Input:
            name = "input"

        return [_Input()]

    def get_outputs(self):
        class _Output:
            shape = ("batch", 3)

        return [_Output()]


def test_a_silent_fallback_to_cpu_is_refused(tiny_run, monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setenv("EDGETL_TRT_CACHE", str(tmp_path))
    fake = _FakeSession(["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", fake)
    with pytest.raises(BackendUnavailable, match="fell back to CUDAExecutionProvider"):
        rb.BACKENDS["onnxruntime-tensorrt"].load(tiny_run / "model.int8.onnx", None)
    name, options = fake.asked[0]
    assert name == "TensorrtExecutionProvider" and options["trt_int8_enable"]
    assert fake.asked[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # CUDA takes what TRT cannot

    fake.got = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    session = rb.BACKENDS["onnxruntime-tensorrt"].load(tiny_run / "model.onnx", None)
    # what edgetl asked of TensorRT for an FP32 model: FP16 kernels, no INT8 calibration
    name, options = fake.asked[0]
    assert (
        name == "TensorrtExecutionProvider" and options["trt_fp16_enable"] and not options["trt_int8_enable"]
    )
    assert session.execution_precision == "fp16" and session.backend == "onnxruntime-tensorrt"

    fake.got = ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailable, match="onnxruntime-cuda: CUDAExecutionProvider failed"):
        rb.BACKENDS["onnxruntime-cuda"].load(tiny_run / "model.onnx", None)


def test_nvinfer_from_the_pypi_wheel_folder_is_loaded_globally(monkeypatch, tmp_path):
    import ctypes
    import importlib.util
    from types import SimpleNamespace

    tried = []

    def fake_cdll(path, mode=0):
        tried.append(path)
        if path == str(tmp_path / "libnvinfer.so.10"):
            return object()
        raise OSError(path)

    monkeypatch.setattr(ctypes, "CDLL", fake_cdll)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: (
            SimpleNamespace(submodule_search_locations=[str(tmp_path)])
            if name == "tensorrt_libs"
            else real(name)
        ),
    )
    assert rb._load_nvinfer() == str(tmp_path / "libnvinfer.so.10")
    assert tried[0] == "libnvinfer.so.10"  # a system TensorRT first


def test_cuda_training_uses_amp_in_bf16_or_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "mock GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device("cuda") == (torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_device("auto") == (torch.device("cuda"), torch.float16)
    assert cuda_autocast_dtype() is torch.float16
    assert resolve_device("cpu") == (torch.device("cpu"), None)


class _Recorder:
    def __init__(self, x: torch.Tensor):
        self.x, self.calls = x, []

    def pin_memory(self):
        self.calls.append("pin")
        return self

    def to(self, device, **kw):
        self.calls.append(("to", str(device), kw.get("non_blocking", False), kw.get("memory_format")))
        return self

    def dim(self):
        return self.x.dim()

    def contiguous(self, memory_format=None):
        self.calls.append(("contiguous", memory_format))
        return self


def test_batches_to_a_gpu_are_pinned_async_and_channels_last():
    rec = _Recorder(torch.zeros(2, 3, 8, 8))
    to_device(rec, torch.device("cuda", 0))
    assert rec.calls == ["pin", ("to", "cuda:0", True, None), ("contiguous", torch.channels_last)]
    x = torch.zeros(2, 3, 8, 8)
    y = to_device(x, torch.device("cpu"))
    assert y.is_contiguous() and not y.is_pinned()


def test_models_on_a_gpu_go_channels_last():
    calls = []

    class Model(torch.nn.Module):
        def to(self, *args, **kw):
            calls.append((args, kw))
            return self

    place_model(Model(), torch.device("cuda", 1))
    assert calls == [((torch.device("cuda", 1),), {}), ((), {"memory_format": torch.channels_last})]
    calls.clear()
    place_model(Model(), torch.device("cpu"))
    assert calls == [((torch.device("cpu"),), {})]


def test_pytorch_cpu_row_keeps_the_model_precision(tiny_run):
    runner = BENCH_BACKENDS["pytorch"].load(tiny_run / "best.safetensors", 1)
    assert runner.execution_precision == "model"
    out = runner.run(np.zeros((1, 3, 32, 32), np.float32))
    assert out.dtype == np.float32 and out.shape[0] == 1
