"""onnxruntime static quantization from ranges computed once, on every onnxruntime the lock resolves.

Newer onnxruntime (1.31) lets `quantize_static` read ranges from a cache file
(`calibration_cache_path`); older ones (1.23, the last for Python 3.10) only calibrate inside
`quantize_static`, which would repeat the calibration for every attempt of the accuracy gate. There,
the ranges drive onnxruntime's own `QDQQuantizer` exactly as `quantize_static` does after its
calibration step, so the same ranges give the same QDQ model on both.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Sequence
from pathlib import Path


def has_range_cache() -> bool:
    """Whether this onnxruntime's quantize_static takes precomputed ranges (calibration_cache_path)."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_static_with_ranges(
    model_path: Path,
    out: Path,
    ranges,
    *,
    calibrate_method,
    quant_format,
    per_channel: bool,
    reduce_range: bool,
    activation_type,
    weight_type,
    nodes_to_exclude: Sequence[str] = (),
    extra_options: dict | None = None,
    native: bool | None = None,
) -> Path:
    """QDQ-quantize `model_path` into `out` with `ranges` (an onnxruntime TensorsData).

    `native` None picks quantize_static where it takes a range cache; False forces the QDQQuantizer
    path (tests compare the two on a newer onnxruntime).
    """
    from onnxruntime.quantization import QuantFormat

    if quant_format is not QuantFormat.QDQ:
        raise ValueError(f"quantization from precomputed ranges supports QDQ only, not {quant_format}")
    options = dict(extra_options or {})
    if native if native is not None else has_range_cache():
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.calibrate import save_tensors_data

        with tempfile.TemporaryDirectory(prefix="edgetl-ranges-") as tmp:
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(ranges, cache)
            quantize_static(
                str(model_path),
                str(out),
                calibration_data_reader=None,
                calibration_cache_path=str(cache),
                calibrate_method=calibrate_method,
                quant_format=quant_format,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=activation_type,
                weight_type=weight_type,
                nodes_to_exclude=list(nodes_to_exclude),
                extra_options=options,
            )
        return out
    return _quantize_qdq(
        model_path,
        out,
        ranges,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=activation_type,
        weight_type=weight_type,
        nodes_to_exclude=nodes_to_exclude,
        extra_options=options,
    )


def _quantize_qdq(
    model_path: Path,
    out: Path,
    ranges,
    *,
    per_channel: bool,
    reduce_range: bool,
    activation_type,
    weight_type,
    nodes_to_exclude: Sequence[str],
    extra_options: dict,
) -> Path:
    """The part of quantize_static (QDQ format, no SmoothQuant) that follows its calibration."""
    from onnxruntime.quantization import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version
    from onnxruntime.quantization.quantize import QuantFormat, check_static_quant_arguments
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = update_opset_version(load_model_with_shape_infer(Path(model_path)), weight_type)
    check_static_quant_arguments(QuantFormat.QDQ, activation_type, weight_type)
    quantizer = QDQQuantizer(
        model,
        per_channel,
        reduce_range,
        weight_type,
        activation_type,
        ranges,
        [],  # nodes_to_quantize: all
        list(nodes_to_exclude),
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        extra_options,
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(out), False)
    return out
