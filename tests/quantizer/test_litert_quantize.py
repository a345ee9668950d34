"""`edgetl quantize RUN --backend litert`: a full-integer .tflite behind the same paired gate as
ONNX INT8, saying which INT8 it is."""

from __future__ import annotations

import json

import pytest

from edgetl.errors import EdgetlError
from edgetl.quantizer import quantize
from edgetl.quantizer.litert import SCHEME, check_tflite
from edgetl_runtime.errors import BundleError
from edgetl_runtime.modelfile import is_int8, read_model_info


def test_litert_int8_is_full_integer_and_gated(litert_run):
    record = json.loads((litert_run / "quantize.json").read_text())
    assert record["backend"] == "litert" and record["rung"] == "litert"
    assert record["int8_model"] == str(litert_run / "model.int8.tflite")
    gate = record["gate"]
    # the gate's exact intervals and verdict, on the run's validation images
    assert gate["images"] == 12 and gate["metric"] == "top1"
    assert gate["agreement_ci95"][0] <= gate["agreement"] <= gate["agreement_ci95"][1]
    assert gate["verdict"] in ("pass", "warn", "fail") and record["kl"] >= 0
    assert record["size_ratio"] <= 0.3
    int8 = litert_run / "model.int8.tflite"
    assert is_int8(int8) and not is_int8(litert_run / "model.tflite")  # the graph decides
    info = read_model_info(int8)
    assert info.precision == "int8" and info.preprocess.layout == "NHWC"
    assert info.quantization["scheme"] == SCHEME and "full-integer static" in SCHEME
    assert info.quantization["recipe"] == "static_wi8_ai8"
    assert info.labels == read_model_info(litert_run / "model.onnx").labels


def test_litert_refuses_what_does_not_apply(litert_run, tmp_path):
    with pytest.raises(EdgetlError, match="--method 'minmax' does not apply to --backend litert"):
        quantize(litert_run, tmp_path / "m.int8.tflite", backend="litert", method="minmax")
    with pytest.raises(BundleError, match="already quantized"):
        check_tflite(litert_run / "model.int8.tflite")
    with pytest.raises(EdgetlError, match=r"backend litert writes a \.tflite file"):
        quantize(litert_run, tmp_path / "m.int8.onnx", backend="litert")
