"""INT8 post-training quantization behind a statistically honest accuracy gate.

api: `quantize()` and its result; gate: the paired-outcome interval and verdict; ladder: the one
search loop over the recovery rungs; ort (with its onnxruntime-version shim ort_compat) /
nncf_backend / qat: how candidates are made; evaluation and inputs: what the gate runs on and what
is written.
"""

from __future__ import annotations

from edgetl.quantizer.evaluation import EvalSet, check_model, load_eval_set, map_eval_classes, run_model
from edgetl.quantizer.gate import (
    Attempt,
    Evaluation,
    GateReport,
    compare_logits,
    judge,
    paired_drop_ci,
    resolvable_drop,
)
from edgetl.quantizer.ort import Method, calibrate_ranges, quantize_with_ranges
from edgetl.quantizer.quantize import QuantBackend, QuantResult, quantize

__all__ = [
    "Attempt",
    "EvalSet",
    "Evaluation",
    "GateReport",
    "Method",
    "QuantBackend",
    "QuantResult",
    "calibrate_ranges",
    "check_model",
    "compare_logits",
    "judge",
    "load_eval_set",
    "map_eval_classes",
    "paired_drop_ci",
    "quantize",
    "quantize_with_ranges",
    "resolvable_drop",
    "run_model",
]
