"""Empirical bias correction of onnxruntime's QDQ model, from the calibration images.

Rounded weights shift the mean of each output channel of a Conv or Gemm away from FP32's, and the
shifts add up through the network: a systematic error that more calibration images do not average
away. Each channel's bias is moved by the mean difference, on the calibration images, between the
layer with its FP32 weights and the layer as quantized, both fed the quantized model's own input to
that layer (Nagel et al., "Data-Free Quantization", 2019, section 4.2, empirical variant). NNCF's
full bias correction does much the same on its own graph, which onnxruntime runs 3x slower than its
own QDQ layout (benchmarks/results/int8_matrix.md).

As each layer is corrected for its own weights' error only, all layers are corrected from one pass:
an upstream shift is corrected where it arises and not again below it. (Correcting each layer's
total shift from FP32 in one pass counts upstream shifts twice and wrecks the model; correcting it
layer by layer costs a pass per layer. Measured on imagenet-dev, 300 calibrating, 450 judged: no
better than this one pass, and a second pass changes nothing beyond the noise.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.console import track
from edgetl.quantizer.evaluation import batch_size

# Per-channel means settle early: KL to FP32 0.0044, 0.0042, 0.0044 from 64, 128, 256 images.
MAX_IMAGES = 128


def _corrected_layers(model) -> list[tuple[object, object]]:
    """(Conv or Gemm node, the DequantizeLinear of its int32 bias), in topological order."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        dq = producer.get(node.input[2])
        if (
            dq is not None
            and dq.op_type == "DequantizeLinear"
            and dq.input[0] in inits
            and inits[dq.input[0]].data_type == TensorProto.INT32
        ):
            layers.append((node, dq))
    return layers


def _channel_means(
    model, names: list[str], inputs: np.ndarray, batch: int, what: str
) -> dict[str, np.ndarray]:
    """Each named tensor's mean per channel (axis 1) over the images and every other axis (the
    tensors are made outputs of `model`, a probe of its own)."""
    import onnx
    import onnxruntime as ort

    graph_outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
        for n in names
        if n not in graph_outputs
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(names, 0)
    for start in track(range(0, len(inputs), batch), what):
        values = session.run(names, {input_name: inputs[start : start + batch]})
        for name, value in zip(names, values, strict=True):
            axes = tuple(a for a in range(value.ndim) if a != 1)
            sums[name] = sums.get(name, 0) + value.astype(np.float64).sum(axis=axes)
            counts[name] += value.size // value.shape[1]
    return {n: sums[n] / counts[n] for n in names}


def float_tables(float_model) -> tuple[dict, dict]:
    """The FP32 model's nodes and weights by name, as `_with_float_twins` takes them."""
    return {n.name: n for n in float_model.graph.node}, {i.name: i for i in float_model.graph.initializer}


def _with_float_twins(model, float_nodes: dict, float_inits: dict, layers) -> tuple[object, list[str]]:
    """The model with, next to each layer, its FP32 twin (`float_nodes` by name, their weights in
    `float_inits`) fed the same quantized input; the twins' output names."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    twins = []
    for k, (node, _) in enumerate(layers):
        twin = onnx.NodeProto()
        twin.CopyFrom(float_nodes[node.name])
        twin.name, twin.output[0] = f"edgetl_bc_twin_{k}", f"edgetl_bc_twin_{k}_out"
        twin.input[0] = node.input[0]
        for i in (1, 2):
            weight = onnx.TensorProto()
            weight.CopyFrom(float_inits[twin.input[i]])
            weight.name = twin.input[i] = f"edgetl_bc_twin_{k}_{i}"
            probe.graph.initializer.append(weight)
        probe.graph.node.append(twin)
        twins.append(twin.output[0])
    return probe, twins


def correct_biases(float_path: Path, qdq_path: Path, inputs: np.ndarray, out: Path) -> Path:
    """The QDQ model with each Conv/Gemm bias moved so that, on `inputs`, the layer's output channel
    means match those of its FP32 weights on the same input; written to `out` (which may be
    `qdq_path`). Returns `out`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    float_nodes, float_inits = float_tables(onnx.load(str(float_path)))
    layers = [
        (n, dq)
        for n, dq in _corrected_layers(model)
        if n.name in float_nodes and set(float_nodes[n.name].input[1:3]) <= float_inits.keys()
    ]
    if not layers:
        return _save(model, out)
    probe, twins = _with_float_twins(model, float_nodes, float_inits, layers)
    outputs = [n.output[0] for n, _ in layers]
    inputs = inputs[:MAX_IMAGES]
    means = _channel_means(probe, outputs + twins, inputs, batch_size(qdq_path), "bias correction")
    inits = {i.name: i for i in model.graph.initializer}
    for (node, dq), twin in zip(layers, twins, strict=True):
        shift = means[twin] - means[node.output[0]]
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        corrected = np.clip(np.round(q + shift / scale), -(2**31), 2**31 - 1).astype(np.int32)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(corrected, dq.input[0]))
    return _save(model, out)


def _save(model, out: Path) -> Path:
    import onnx

    onnx.save(model, str(out))
    return out
