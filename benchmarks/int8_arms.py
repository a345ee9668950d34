"""The arms of bench_int8_matrix.py: each builds one INT8 model from the FP32 model and the
calibration images, with onnxruntime (QDQ from kept calibrators, mixed precision) or NNCF (ONNX and
OpenVINO backends)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

# ---- onnxruntime arms -------------------------------------------------------------------------


def collect(pre: Path, x: np.ndarray, name: str, options: dict):
    """An onnxruntime calibrator that has seen every calibration image (kept: compute_data again
    with other cut-offs costs no new pass)."""
    from edgetl.quantizer.ort import collect_calibration

    return collect_calibration(pre, x, name, options, Path(tempfile.mkdtemp(prefix="matrix-calib-")), name)


def qdq(
    pre: Path,
    ranges,
    out: Path,
    *,
    method: str = "MinMax",
    symmetric: bool = False,
    exclude=(),
    overrides: dict | None = None,
) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    from edgetl.quantizer.ort_compat import quantize_static_with_ranges

    extra = {"WeightSymmetric": True, "ActivationSymmetric": symmetric}
    if overrides:
        extra["TensorQuantOverrides"] = overrides
        extra["UseQDQContribOps"] = True
    return quantize_static_with_ranges(
        pre,
        out,
        ranges,
        calibrate_method=CalibrationMethod[method],
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        extra_options=extra,
    )


def worst_tensors(pre: Path, qdq_path: Path, x: np.ndarray) -> list[tuple[str, float, tuple[str, ...]]]:
    """(tensor, SQNR dB, its producer and consumers) worst first, by onnxruntime's qdq_loss_debug."""
    from edgetl.quantizer.ort import rank_quantized_tensors

    return rank_quantized_tensors(pre, qdq_path, x)


# ---- NNCF arms --------------------------------------------------------------------------------


def nncf_onnx(
    fp32: Path, x: np.ndarray, out: Path, *, fast_bias_correction: bool, smooth_quant: bool
) -> Path:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    proto = onnx.load(str(fp32))
    name = proto.graph.input[0].name
    extra = {}
    if smooth_quant:
        # NNCF runs SmoothQuant only for transformer models; alpha 0.5 on convolutions as the paper
        extra = {
            "model_type": nncf.ModelType.TRANSFORMER,
            "advanced_parameters": AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=0.5, matmul=0.95)
            ),
        }
    q = nncf.quantize(
        proto,
        nncf.Dataset(list(x), lambda a: {name: a[None]}),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(x),
        fast_bias_correction=fast_bias_correction,
        **extra,
    )
    onnx.save(q, str(out))
    return out


def with_biases_of(qdq_path: Path, donor: Path, out: Path) -> Path:
    """onnxruntime's QDQ model with the float biases of another quantization of the same graph (NNCF's,
    bias-corrected), re-quantized to int32 at onnxruntime's bias scales: the correction without NNCF's
    graph layout, which onnxruntime runs 3x slower than FP32."""
    import onnx
    from onnx import numpy_helper

    d = onnx.load(str(donor))
    d_init = {i.name: i for i in d.graph.initializer}
    biases = {
        n.name: numpy_helper.to_array(d_init[n.input[2]])
        for n in d.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in d_init
    }
    m = onnx.load(str(qdq_path))
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        dq = producer.get(n.input[2]) if len(n.input) > 2 else None
        if n.name in biases and dq is not None and dq.op_type == "DequantizeLinear":
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            q = np.round(biases[n.name].astype(np.float64) / scale).astype(np.int32)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(q, dq.input[0]))
    onnx.save(m, str(out))
    return out


def nncf_openvino(fp32: Path, x: np.ndarray, out: Path, *, channel_alignment: bool) -> Path:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    model = ov.Core().read_model(str(fp32))
    q = nncf.quantize(
        model,
        nncf.Dataset(list(x), lambda a: a[None]),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(x),
        advanced_parameters=AdvancedQuantizationParameters(disable_channel_alignment=not channel_alignment),
    )
    ov.save_model(q, str(out), compress_to_fp16=False)
    return out


def int16_overrides(tensors: list[str]) -> dict:
    from onnxruntime.quantization import QuantType

    return {t: [{"quant_type": QuantType.QUInt16}] for t in tensors}
