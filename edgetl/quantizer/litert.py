"""LiteRT INT8 (`--backend litert`): Google's AI Edge Quantizer on the FP32 .tflite, full-integer
static quantization (recipe static_wi8_ai8: int8 weights, per channel, and int8 activations with
ranges calibrated on the run's calibration images). Dynamic-range quantization (int8 weights, float
activations) is not offered: every .tflite edgetl writes as INT8 is full-integer, and its metadata
says so (`edgetl.quantization`'s "scheme")."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgetl.console import log
from edgetl.console import quiet_third_party as quiet_library
from edgetl.errors import BundleError, EdgetlError
from edgetl_runtime.litert import tflite_tensors
from edgetl_runtime.modelfile import is_int8, read_model_info
from edgetl_runtime.modelinfo import ModelInfo, Precision

RECIPE = "static_wi8_ai8"
SCHEME = "full-integer static (int8 weights and activations, int8 input and output)"
INSTALL = "pip install 'edgetl[litert]'"
# the interpreter's own threads while collecting activation ranges (the CPU's, not an accuracy knob)
CALIBRATION_THREADS = 2


def litert_quantizer_reason() -> str | None:
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        return f"ai-edge-quantizer is not installed ({INSTALL})"
    return None


def check_tflite(path: Path) -> ModelInfo:
    """The FP32 .tflite's metadata, refusing a quantized model or one whose input its metadata
    does not describe (the counterpart of evaluation.check_model for ONNX)."""
    info = read_model_info(path)
    if is_int8(path) or info.precision is not Precision.FP32:
        raise BundleError(
            f"{path}: already quantized; pass the FP32 model.tflite from `edgetl export RUN --format litert`"
        )
    inputs, _ = tflite_tensors(path)
    want = info.preprocess.input_shape(1)
    if tuple(inputs[0].shape[1:]) != tuple(want[1:]):
        raise BundleError(
            f"{path}: model input is {list(inputs[0].shape)} but its preprocessing gives {list(want)}; "
            "re-export it with `edgetl export RUN --format litert`"
        )
    return info


def quantize_tflite(fp32: Path, inputs: np.ndarray, out: Path, *, bias_correction: bool = True) -> Path:
    """Calibrate on `inputs` (preprocessed as the .tflite's metadata says), quantize, correct the
    biases on the same images (unless told not to: benchmarks measure what it gives), and write
    the INT8 model."""
    reason = litert_quantizer_reason()
    if reason:
        raise EdgetlError(f"--backend litert: {reason}")
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    from edgetl.quantizer.litert_bias import correct_tflite_biases

    log(f"quantizing with AI Edge Quantizer ({RECIPE}) on {len(inputs)} images")
    with quiet_library():
        config = getattr(recipe, RECIPE)()
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(config)
        signature, name = _signature_input(fp32)
        samples = [{name: x[None].astype(np.float32)} for x in inputs]
        # the range over all images (onnxruntime's MinMax), not the quantizer's default moving
        # average of each image's range, which clips the largest logits: on imagenet-dev its KL
        # to FP32 was 3.4x this one's (docs/litert.md)
        ranges = calibrator.Calibrator(
            str(fp32), num_threads=CALIBRATION_THREADS, qsv_update_func=qsv_utils.min_max_update
        )
        ranges.calibrate({signature: samples}, manager)
        qt = quantizer.Quantizer(str(fp32))
        qt.load_quantization_recipe(config)
        with tempfile.TemporaryDirectory(prefix="edgetl-litert-") as tmp:
            plain = Path(tmp) / out.name if bias_correction else out
            qt.quantize(ranges.get_model_qsvs()).export_model(str(plain), overwrite=True)
            if bias_correction:
                correct_tflite_biases(fp32, plain, inputs, out, threads=CALIBRATION_THREADS)
    return out


def _signature_input(path: Path) -> tuple[str, str]:
    """The model's (signature, input name) that calibration data is keyed by."""
    from ai_edge_litert.interpreter import Interpreter

    signature, spec = next(iter(Interpreter(model_path=str(path)).get_signature_list().items()))
    return signature, spec["inputs"][0]
