"""Quantization from precomputed ranges gives the same QDQ model on every onnxruntime the lock resolves.

onnxruntime 1.23 (Python 3.10) has no range cache in quantize_static, 1.31 has one; edgetl drives
onnxruntime's QDQQuantizer on the older one. These tests run the path of the installed onnxruntime
and, where both exist, force the fallback and compare it with the native path.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetl.quantizer.ort import Method, calibrate_ranges, quantize_with_ranges, static_settings
from edgetl.quantizer.ort_compat import has_range_cache, quantize_static_with_ranges


def _tiny_cnn(path):
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch, 3x16x16 input."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(5, 8)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _inputs(n=24):
    return np.random.default_rng(1).normal(size=(n, 3, 16, 16)).astype(np.float32)


def _graph(path) -> onnx.GraphProto:
    return onnx.load(str(path)).graph


def _qdq_nodes(graph) -> list[str]:
    return [n.op_type for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_ranges_give_the_model_quantize_static_calibrates_itself(tmp_path):
    """On the installed onnxruntime, whichever path it takes: same model as quantize_static's own
    calibration on the same images (MinMax, so the ranges are exact)."""
    from onnxruntime.quantization import quantize_static

    from edgetl.quantizer.ort import _ArrayReader

    model, inputs = _tiny_cnn(tmp_path / "m.onnx"), _inputs()
    ranges = calibrate_ranges(model, inputs, Method.MINMAX)
    ours = quantize_with_ranges(model, Method.MINMAX, ranges, tmp_path / "ours.onnx")
    quantize_static(
        str(model),
        str(tmp_path / "ref.onnx"),
        _ArrayReader("x", inputs, 16),
        **static_settings(Method.MINMAX),
    )
    assert _qdq_nodes(_graph(ours)), "no QuantizeLinear/DequantizeLinear in the quantized model"
    assert _graph(ours) == _graph(tmp_path / "ref.onnx")


def test_excluded_nodes_stay_float(tmp_path):
    model = _tiny_cnn(tmp_path / "m.onnx")
    ranges = calibrate_ranges(model, _inputs(), Method.PERCENTILE)
    out = quantize_with_ranges(model, Method.PERCENTILE, ranges, tmp_path / "q.onnx", exclude=["fc"])
    fc = next(n for n in _graph(out).node if n.name == "fc")
    assert fc.op_type == "Gemm"
    assert fc.input[1] == "fw", "the excluded Gemm's weights went through QDQ"
    assert _qdq_nodes(_graph(out)), "nothing else got quantized either"


@pytest.mark.parametrize("method", [Method.MINMAX, Method.PERCENTILE, Method.ENTROPY])
def test_fallback_matches_native_quantize_static(tmp_path, method):
    if not has_range_cache():
        import onnxruntime

        pytest.skip(f"onnxruntime {onnxruntime.__version__} has no range cache: only the fallback exists")
    model = _tiny_cnn(tmp_path / "m.onnx")
    ranges = calibrate_ranges(model, _inputs(), method)
    native = quantize_static_with_ranges(
        model,
        tmp_path / "native.onnx",
        ranges,
        nodes_to_exclude=["relu"],
        **static_settings(method),
        native=True,
    )
    fallback = quantize_static_with_ranges(
        model,
        tmp_path / "fallback.onnx",
        ranges,
        nodes_to_exclude=["relu"],
        **static_settings(method),
        native=False,
    )
    assert _qdq_nodes(_graph(native))
    assert _graph(fallback) == _graph(native)
