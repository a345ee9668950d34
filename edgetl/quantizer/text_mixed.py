"""The text candidate `dynamic-mixed`: `dynamic` INT8 with the weight MatMuls that cost FP32 the most
kept in float, chosen by measured sensitivity on the calibration texts (never the gate's).

Each weight MatMul/Gemm is left in float alone, the rest quantized, and the drop in KL(FP32 || INT8)
over the calibration texts is that layer's cost; the MAX_FLOAT_SHARE most costly ones stay float.
On a hard BBC News set (benchmarks/bench_text_int8.py, two draws of 600 held-out articles), keeping
3 of all-MiniLM-L6-v2's 37 weight MatMuls float lowered KL by 22-35%, beyond its interval, for about
0.05-0.16x of FP32's latency; the sweep is one quantization per layer, about 3 s each there."""

from __future__ import annotations

import math
from pathlib import Path

from edgetl.console import log
from edgetl.quantizer.gate import compare_logits
from edgetl.quantizer.text_ops import QUANTIZED_OPS, text_logits
from edgetl_runtime.textinput import TextSpec

# about a tenth of the weight MatMuls: 3 of MiniLM's 37, which cost 0.05-0.16x of FP32's latency;
# more float layers would give back the speed INT8 ships for
MAX_FLOAT_SHARE = 0.1
# sensitivity is measured on at most this many calibration texts (a seeded random pick), so the sweep
# stays near two minutes on MiniLM whatever --num-calibration is
SENSITIVITY_TEXTS = 64


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes with a constant (initializer) input: what dynamic INT8 quantizes."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and constants & set(n.input)]


def rank_sensitivity(src: Path, texts: list[str], spec: TextSpec, quantize, work: Path) -> dict[str, float]:
    """Each weight MatMul's KL cost: KL with everything quantized minus KL with it alone in float."""
    texts = texts[:SENSITIVITY_TEXTS]
    reference = text_logits(src, texts, spec)

    def kl_without(exclude: list[str]) -> float:
        path = work / "sensitivity.onnx"
        quantize(src, path, exclude)
        return compare_logits(reference, text_logits(path, texts, spec), None, ()).kl

    everything = kl_without([])
    return {name: everything - kl_without([name]) for name in weight_matmuls(src)}


def dynamic_mixed(src: Path, dst: Path, texts, spec: TextSpec) -> dict:
    """Per-channel dynamic INT8 of the weight MatMuls but the most sensitive ones (see module doc);
    returns the settings its model records: the float nodes and their KL costs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize(source: Path, out: Path, exclude: list[str]) -> None:
        # onnxruntime's dynamic quantizer first rewrites a Gemm as "<name>_MatMul" + Add, then
        # quantizes that MatMul: a Gemm stays float only when both names are excluded
        quantize_dynamic(
            str(source), str(out), op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
            weight_type=QuantType.QInt8, nodes_to_exclude=[*exclude, *(f"{name}_MatMul" for name in exclude)],
        )  # fmt: skip

    cost = rank_sensitivity(src, texts, spec, quantize, dst.parent)
    keep = max(1, math.floor(MAX_FLOAT_SHARE * len(cost)))
    floated = sorted(cost, key=cost.get, reverse=True)[:keep]
    log(f"  dynamic-mixed: {keep} of {len(cost)} weight MatMuls kept in float: {', '.join(floated)}")
    quantize(src, dst, floated)
    return {"float_nodes": floated, "kl_cost": {name: float(cost[name]) for name in floated}}
