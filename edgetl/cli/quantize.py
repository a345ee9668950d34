from __future__ import annotations

from pathlib import Path

import click

from edgetl import options as opt
from edgetl.cli.common import FiniteFloat, handle_errors, json_option, path_option, seed_option


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@path_option(
    "--calibration",
    help="Image folder (or ImageFolder) to sample from, or a manifest .json to repeat a quantization. Default for a run: its training split.",
    exists=True,
)
@path_option("--out", help="INT8 model to write. Default for a run: RUN/model.int8.onnx.")
@path_option(
    "--eval",
    "eval_dir",
    help="ImageFolder for the accuracy gate: subfolders named by label, class index, or ImageNet synset id "
    "(n01440764, 1000-class models); a flat folder measures agreement with FP32 only. Default for a run: its val split.",
    exists=True,
)
@click.option(
    "--max-drop",
    type=FiniteFloat(min=0),
    default=opt.DEFAULT_MAX_DROP,
    help="Top-1 points the INT8 model may lose. Refused only when the 95% interval of the drop lies above it; "
    "a warning when the gate images cannot tell.",
)
@click.option(
    "--min-agreement",
    type=FiniteFloat(0, 1),
    default=opt.DEFAULT_MIN_AGREEMENT,
    help="Share of gate images whose INT8 top-1 must equal FP32's: refused when its 95% interval lies below, "
    "a warning when the images cannot tell.",
)
@click.option(
    "--method",
    default=opt.DEFAULT_QUANT_METHOD,
    help="Calibration: auto (measure and keep the best), minmax, entropy, percentile; for nncf: nncf-fast-bias-correction, nncf-bias-correction; for litert: static_wi8_ai8; for a text run: dynamic, dynamic-mixed, fused-dynamic, static-qdq-matmul, nncf-transformer (auto ships FP32 when no INT8 is at least 20% faster).",
)
@click.option(
    "--backend",
    type=click.Choice(opt.choices(opt.QuantBackend)),
    default=opt.QuantBackend.ONNXRUNTIME.value,
    help="nncf writes an OpenVINO IR (model.int8.xml); litert a full-integer LiteRT model.int8.tflite "
    "from the run's model.tflite (AI Edge Quantizer, static_wi8_ai8).",
)
@click.option(
    "--num-calibration",
    type=click.IntRange(min=1),
    default=opt.DEFAULT_NUM_CALIBRATION,
    help="Images to sample for calibration.",
)
@seed_option
@click.option(
    "--allow-drop", is_flag=True, help="Write the best INT8 model even when it fails the accuracy gate."
)
@path_option("--manifest", help="Where to write the calibration manifest.")
@click.option(
    "--qat",
    is_flag=True,
    help="Run quantization-aware fine-tuning of the RUN's model directly (the ladder's last rung).",
)
@json_option
@handle_errors
def quantize(model: Path, out: Path | None, as_json: bool, **options) -> None:
    """INT8 quantization of MODEL.onnx or a RUN folder, behind an accuracy gate.

    The gate measures on images that did not calibrate the model (--eval, a run's val split, or else
    a seeded third of the --calibration images held out, agreement only) and reports the top-1 drop
    with its 95% interval: it refuses when the interval lies above --max-drop (or the agreement's
    below --min-agreement), passes with a warning when the images cannot tell, and passes otherwise.
    When refused it climbs a ladder, stopping at the first rung that is not: calibration methods,
    sensitive nodes kept in float, NNCF PTQ, NNCF accuracy control (labels), QAT (a run).

    \b
    edgetl quantize runs/a                              # train split calibrates, val split gates
    edgetl quantize model.onnx --calibration photos/ --eval val/ --out model.int8.onnx
    edgetl quantize model.onnx --calibration model.int8.json --out again.onnx   # repeat exactly
    """
    from edgetl.api import quantize as run_quantize
    from edgetl.console import out as console
    from edgetl.console import print_json
    from edgetl_runtime.modelinfo import Precision

    result = run_quantize(model, out, **options)
    if as_json:
        print_json(result.to_dict())
        return

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    if result.shipped is Precision.FP32:
        console.print(f"FP32 ships, no INT8 model written: {result.reason}")
        console.print(
            f"top-1 FP32 {pct(result.fp32_accuracy)}, {len(result.attempts)} INT8 candidate(s) judged"
        )
        return
    console.print(
        f"INT8 model: {result.int8_model} ({result.method}, {result.size_ratio:.2f}x the FP32 size)"
    )
    if result.reason:
        console.print(f"note: {result.reason}")
    gate = result.gate
    console.print(
        f"top-1 FP32 {pct(result.fp32_accuracy)} -> INT8 {pct(result.int8_accuracy)}, "
        f"agreement {pct(result.agreement)}, {len(result.attempts)} attempt(s), rung {result.rung}"
    )
    console.print(
        f"gate ({gate['metric']}, {gate['images']} images, {gate['calibration_images']} calibrated): "
        f"{gate['verdict']}: {gate['reason']}"
    )
    if gate.get("cross_fit"):
        cf = gate["cross_fit"]
        judged = ", ".join(
            f"{m['judged_on']} by a model calibrated on {m['calibrated_on']}" for m in cf["measured"]
        )
        console.print(
            f"cross-fit: {cf['folds']} fold models judged the images ({judged}); the model written is "
            f"calibrated on all {cf['shipped']['calibrated_on']} and agrees with them on "
            f"{pct(cf['shipped_vs_fold_models_agreement'])}"
        )
    console.print(f"calibration manifest: {result.calibration_manifest}")
