"""`edgetl quantize RUN --backend litert`: a full-integer .tflite behind the same paired gate as
ONNX INT8, saying which INT8 it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.errors import EdgetlError
from edgetl.quantizer import quantize
from edgetl.quantizer.litert import SCHEME, check_tflite, quantize_tflite
from edgetl.runfolder.splits import Splits
from edgetl_runtime.backends import load_session
from edgetl_runtime.errors import BundleError
from edgetl_runtime.modelfile import is_int8, read_model_info
from edgetl_runtime.preprocess import preprocess_image


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


def test_bias_correction_takes_the_rounding_shift_out_of_the_logits(litert_run, tmp_path):
    """Rounded weights shift each layer's mean output; the corrected INT8 model's mean logits over
    its calibration images must sit far closer to FP32's than the uncorrected model's."""
    fp32 = litert_run / "model.tflite"
    spec = read_model_info(fp32).preprocess
    images = [p for p, _ in Splits.load(litert_run).train]
    x = np.stack([preprocess_image(p, spec) for p in images])
    session = lambda path: load_session(path, "litert-cpu", threads=1)  # noqa: E731
    logits = lambda path: np.concatenate([session(path).run(v[None]) for v in x])  # noqa: E731
    reference = logits(fp32)

    def mean_shift(path):
        return float(np.abs((logits(path) - reference).mean(axis=0)).sum())

    plain = quantize_tflite(fp32, x, tmp_path / "plain.int8.tflite", bias_correction=False)
    corrected = quantize_tflite(fp32, x, tmp_path / "corrected.int8.tflite")
    assert (
        is_int8(corrected)
        and abs(corrected.stat().st_size - plain.stat().st_size) < 0.01 * plain.stat().st_size
    )
    shifts = mean_shift(corrected), mean_shift(plain)
    assert shifts[0] < 0.5 * shifts[1], shifts
