"""NNCF post-training quantization: of the ONNX model itself (its output is QDQ ONNX that runs in
onnxruntime), with accuracy control when labelled images exist, or to an OpenVINO IR."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetl.console import quiet_third_party as quiet_library
from edgetl.errors import EdgetlError

# NNCF's OpenVINO variants, for --backend nncf: name -> fast_bias_correction
OPENVINO_VARIANTS = {"nncf-fast-bias-correction": True, "nncf-bias-correction": False}
# Accuracy control reverts one quantizer group per iteration, each iteration re-validating the
# model: a few are worth their cost, the float nodes rung has already tried the cheap ones.
ACCURACY_CONTROL_ITERATIONS = 4


def import_nncf():
    try:
        import nncf
    except ImportError as e:
        raise EdgetlError(f"this needs nncf ({e}); install with: pip install 'edgetl[nncf]'") from None
    return nncf


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def _input_name(proto) -> str:
    return proto.graph.input[0].name


def _dataset(nncf, proto, inputs: np.ndarray):
    name = _input_name(proto)
    return nncf.Dataset(list(inputs), lambda x: {name: x[None]})


def _preset(nncf):
    # Activations are asymmetric (most follow ReLU6, never negative), weights symmetric: the same
    # layout as the onnxruntime recipe, which the x86 U8S8 kernels run.
    return nncf.QuantizationPreset.MIXED


def quantize_onnx(model_path: Path, inputs: np.ndarray, out: Path, *, exclude: Sequence[str] = ()) -> Path:
    """nncf.quantize on the onnx.ModelProto, fast bias correction included."""
    import onnx

    nncf = import_nncf()
    proto = onnx.load(str(model_path))
    with quiet_library():
        quantized = nncf.quantize(
            proto,
            _dataset(nncf, proto, inputs),
            preset=_preset(nncf),
            subset_size=len(inputs),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=list(exclude)) if exclude else None,
        )
    onnx.save(quantized, str(out))
    return out


def quantize_onnx_with_accuracy_control(
    model_path: Path, inputs: np.ndarray, labels: np.ndarray, out: Path, *, max_drop: float
) -> Path:
    """nncf.quantize_with_accuracy_control on the ONNX model, validated on the labelled calibration
    images: tuning it on the gate images would leave the gate measuring what was tuned on."""
    import onnx
    import onnxruntime as ort

    nncf = import_nncf()
    proto = onnx.load(str(model_path))
    name = _input_name(proto)

    def validate(model, data) -> float:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        hits = [int(session.run(None, {name: x[None]})[0].argmax() == y) for x, y in data]
        return float(np.mean(hits))

    with quiet_library():
        quantized = nncf.quantize_with_accuracy_control(
            proto,
            _dataset(nncf, proto, inputs),
            nncf.Dataset(list(zip(inputs, labels, strict=True))),
            validate,
            max_drop=max_drop / 100.0,
            preset=_preset(nncf),
            subset_size=len(inputs),
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=ACCURACY_CONTROL_ITERATIONS
            ),
        )
    onnx.save(quantized, str(out))
    return out


def quantize_openvino(
    model_path: Path,
    inputs: np.ndarray,
    out: Path,
    *,
    fast_bias_correction: bool,
    exclude: Sequence[str] = (),
) -> Path:
    """NNCF's OpenVINO flow (--backend nncf): an IR with FakeQuantize nodes."""
    nncf = import_nncf()
    try:
        import openvino as ov
    except ImportError as e:
        raise EdgetlError(
            f"--backend nncf needs openvino ({e}); install with: pip install 'edgetl[nncf]'"
        ) from None
    with quiet_library():
        ov_model = ov.Core().read_model(str(model_path))
        quantized = nncf.quantize(
            ov_model,
            nncf.Dataset(list(inputs), lambda x: x[None]),
            subset_size=len(inputs),
            fast_bias_correction=fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=list(exclude)) if exclude else None,
        )
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out
