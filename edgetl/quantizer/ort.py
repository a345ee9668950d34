"""onnxruntime static quantization: QDQ, per-channel int8 weights, uint8 activations, the model
pre-processed first; activation ranges from one of three calibration methods, and the per-tensor
sensitivity that picks nodes to keep in float."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path

import numpy as np

from edgetl.console import quiet_third_party as _quiet_library
from edgetl.console import track
from edgetl.quantizer.evaluation import batch_size


class Method(str, Enum):
    AUTO = "auto"
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


# calibration method -> (onnxruntime CalibrationMethod name, calibrator options).
# Ranges are asymmetric: activations are uint8, and most of them follow ReLU6 (never negative).
CALIBRATORS: dict[Method, tuple[str, dict]] = {
    Method.MINMAX: ("MinMax", {"symmetric": False}),
    Method.PERCENTILE: ("Percentile", {"symmetric": False, "percentile": 99.999, "num_bins": 2048}),
    # onnxruntime's entropy search is quadratic in the bins; more than its 128 takes minutes per model
    Method.ENTROPY: ("Entropy", {"symmetric": False}),
}
# What "auto" tries, in the order measured best on the ImageNet proxy (benchmarks/bench_quantize.py).
AUTO_ORDER = (Method.PERCENTILE, Method.MINMAX, Method.ENTROPY)

# The fixed part of the onnxruntime recipe. uint8 activations with int8 weights are what the x86
# U8S8 (VNNI) kernels run; reduce_range only helps CPUs without VNNI and costs a bit of precision.
ORT_SETTINGS = {
    "format": "QDQ",
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "reduce_range": False,
    "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False},
}


class _ArrayReader:
    """onnxruntime CalibrationDataReader over an array, `batch` images per run."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int) -> None:
        self._feeds = iter([{input_name: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.get_next, None)


def preprocess_for_quantization(model_path: Path, out: Path) -> Path:
    """onnxruntime's quantization pre-processing: shape inference and graph fusion (BN into Conv)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_library():
        quant_pre_process(str(model_path), str(out))
    return out


def calibrate_ranges(model_path: Path, inputs: np.ndarray, method: Method):
    """Activation ranges with one calibration method, as onnxruntime's TensorsData (kept in memory:
    every attempt of the gate reuses them, on any onnxruntime version)."""
    name, options = CALIBRATORS[method]
    with tempfile.TemporaryDirectory(prefix="edgetl-calib-") as tmp, _quiet_library():
        calibrator = collect_calibration(model_path, inputs, name, options, Path(tmp), method.value)
        return calibrator.compute_data()


def collect_calibration(
    model_path: Path, inputs: np.ndarray, name: str, options: dict, work: Path, label: str
):
    """An onnxruntime calibrator (CalibrationMethod `name`) that has seen every input; its
    compute_data gives the ranges, again with other cut-offs for a histogram at no new pass."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    input_name = (
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    )
    batch = batch_size(model_path)
    calibrator = create_calibrator(
        model_path,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod[name],
        extra_options=options,
    )
    # one batch per call: histogram calibrators keep every intermediate output of a call in
    # memory, and stack them, which fails on a shorter last batch
    for start in track(range(0, len(inputs), batch), f"calibrating ({label})"):
        calibrator.collect_data(_ArrayReader(input_name, inputs[start : start + batch], batch))
    return calibrator


def quantize_with_ranges(
    model_path: Path, method: Method, ranges, out: Path, exclude: Sequence[str] = ()
) -> Path:
    """QDQ model from ranges of calibrate_ranges (same ranges, same model on every onnxruntime)."""
    from edgetl.quantizer.ort_compat import quantize_static_with_ranges

    with _quiet_library():
        return quantize_static_with_ranges(
            model_path, out, ranges, nodes_to_exclude=exclude, **static_settings(method)
        )


def static_settings(method: Method) -> dict:
    """ORT_SETTINGS with `method`'s calibration, as quantize_static's keyword arguments."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return dict(
        calibrate_method=CalibrationMethod[CALIBRATORS[method][0]],
        quant_format=QuantFormat[ORT_SETTINGS["format"]],
        per_channel=ORT_SETTINGS["per_channel"],
        reduce_range=ORT_SETTINGS["reduce_range"],
        activation_type=QuantType[ORT_SETTINGS["activation_type"]],
        weight_type=QuantType[ORT_SETTINGS["weight_type"]],
        extra_options=dict(ORT_SETTINGS["extra_options"]),
    )


def input_layers(model_path: Path) -> tuple[str, ...]:
    """The layers kept in float in every onnxruntime candidate: those reading the model's input (the
    first convolution reads the normalized image, whose three channels one uint8 range fits badly).
    Measured on imagenet-dev (300 calibrating, 450 judged, with bias correction): KL to FP32 0.0042
    -> 0.0031, agreement 97.1% -> 98.0%, for 0.54x -> 0.57x FP32 latency and no size (a few hundred
    weights). The classifier in float too helped a little more (KL 0.0029) but costs its weights'
    size: 0.28x -> 0.48x FP32 for a 1000-class head, which the size gate refuses."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    return tuple(
        n.name
        for n in graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input and n.input[0] in inputs
    )


def rank_sensitive_nodes(float_path: Path, qdq_path: Path, inputs: np.ndarray) -> list[tuple[str, ...]]:
    """Groups of nodes to keep in float, worst quantized tensor first.

    Keeping a tensor in float means excluding its producer and every consumer.
    """
    return [nodes for _, _, nodes in rank_quantized_tensors(float_path, qdq_path, inputs) if nodes]


def rank_quantized_tensors(
    float_path: Path, qdq_path: Path, inputs: np.ndarray
) -> list[tuple[str, float, tuple[str, ...]]]:
    """(tensor, its qdq error in SQNR dB, its producer and consumers), worst first: a tensor's local
    quantization error (its values before and after QDQ inside the INT8 model) ranks it."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    input_name = (
        ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    )
    with tempfile.TemporaryDirectory(prefix="edgetl-sens-") as tmp, _quiet_library():
        aug_float, aug_qdq = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(aug_float))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
        float_acts = collect_activations(str(aug_float), _ArrayReader(input_name, inputs, 1))
        qdq_acts = collect_activations(str(aug_qdq), _ArrayReader(input_name, inputs, 1))
        errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    graph = onnx.load(str(float_path)).graph
    producers = {o: n.name for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    ranked = sorted((e["qdq_err"], t) for t, e in errors.items() if np.isfinite(e.get("qdq_err", np.inf)))
    return [
        (t, float(err), tuple(x for x in (producers.get(t), *consumers.get(t, ())) if x)) for err, t in ranked
    ]
