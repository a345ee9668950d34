"""Empirical bias correction of a full-integer .tflite, from the calibration images: the LiteRT
counterpart of bias_correction.py (which does it in onnxruntime's QDQ graph).

Rounded int8 weights move the mean of each output channel of a convolution or fully connected layer
away from what its FP32 weights give, and the shifts add up through the network. For each such layer
of the INT8 model the shift its own weights cause is (W_int8 - W_fp32) . E[x], with E[x] the mean of
the layer's input in the INT8 model itself (dequantized) on the calibration images; the int32 bias
takes it back. Each layer is corrected for its own weights' error only, so all are corrected from
one pass (Nagel et al., "Data-Free Quantization", 2019, section 4.2, empirical variant). The input
mean is taken per channel over every position, padding included: exact for the pointwise
convolutions and the classifier, an average over the kernel's taps for the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.console import track
from edgetl.quantizer.bias_correction import MAX_IMAGES
from edgetl_runtime.litert import quantize_tensor, rewrite_tflite

# op -> how its weight error meets the per-channel input mean (weights as LiteRT lays them out)
SHIFTS = {
    "CONV_2D": lambda dw, m: np.einsum("ohwi,i->o", dw, m),  # [out, kh, kw, in]
    "DEPTHWISE_CONV_2D": lambda dw, m: np.einsum("hwc,c->c", dw[0], np.repeat(m, dw.shape[-1] // m.size)),
    "FULLY_CONNECTED": lambda dw, m: dw @ m,  # [out, in]
}


def _dequantize(value: np.ndarray, quantization: dict) -> np.ndarray:
    scale, zero = quantization["scales"], quantization["zero_points"]
    axis = quantization["quantized_dimension"]
    shape = [1] * value.ndim
    if scale.size > 1:
        shape[axis] = -1
    return (value.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)


def _layers(interpreter) -> list[dict]:
    """The INT8 model's int8 convolutions and classifiers that carry an int32 bias."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    layers = []
    for op in interpreter._get_ops_details():  # the one public-enough listing of a graph's ops
        ins = list(op["inputs"])
        if op["op_name"] not in SHIFTS or len(ins) < 3 or ins[2] < 0:
            continue
        x, w, b = (tensors[i] for i in ins[:3])
        if w["dtype"] is np.int8 and b["dtype"] is np.int32 and x["dtype"] is np.int8:
            layers.append({"op": op["op_name"], "input": x, "weight": w, "bias": b})
    return layers


def _input_means(path: Path, layers: list[dict], inputs: np.ndarray, threads: int) -> list[np.ndarray]:
    """Each layer's dequantized input, averaged per channel over the images and every position."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # the builtin kernels, not XNNPACK: a delegate keeps its intermediate tensors to itself
    interpreter = Interpreter(
        model_path=str(path), num_threads=threads, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )  # fmt: skip
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    sums = [0.0] * len(layers)
    for x in track(inputs, "bias correction"):
        interpreter.set_tensor(detail["index"], quantize_tensor(x[None], detail))
        interpreter.invoke()
        for k, layer in enumerate(layers):
            t = layer["input"]
            value = _dequantize(interpreter.get_tensor(t["index"]), t["quantization_parameters"])
            sums[k] = sums[k] + value.reshape(-1, value.shape[-1]).mean(axis=0)
    return [s / len(inputs) for s in sums]


def correct_tflite_biases(fp32: Path, int8: Path, inputs: np.ndarray, out: Path, *, threads: int) -> Path:
    """The INT8 .tflite with each layer's int32 bias moved by the mean shift its rounded weights
    cause on `inputs` (preprocessed as the model's metadata says); written to `out`."""
    from ai_edge_litert.interpreter import Interpreter

    probe, reference = Interpreter(model_path=str(int8)), Interpreter(model_path=str(fp32))
    probe.allocate_tensors()
    reference.allocate_tensors()
    float_weights = {t["name"]: t["index"] for t in reference.get_tensor_details()}
    layers = [layer for layer in _layers(probe) if layer["weight"]["name"] in float_weights]
    means = _input_means(int8, layers, inputs[:MAX_IMAGES], threads)
    biases: dict[int, np.ndarray] = {}
    for layer, mean in zip(layers, means, strict=True):
        w, b = layer["weight"], layer["bias"]
        weight = reference.get_tensor(float_weights[w["name"]]).astype(np.float64)
        error = _dequantize(probe.get_tensor(w["index"]), w["quantization_parameters"]) - weight
        shift = SHIFTS[layer["op"]](error, mean)
        q = probe.get_tensor(b["index"]).astype(np.float64)
        scale = b["quantization_parameters"]["scales"].astype(np.float64)
        biases[b["index"]] = np.clip(np.round(q - shift / scale), -(2**31), 2**31 - 1).astype(np.int32)

    def edit(model) -> None:
        for index, value in biases.items():
            model.buffers[model.subgraphs[0].tensors[index].buffer].data = value.view(np.uint8)

    rewrite_tflite(int8, out, edit)
    return out
