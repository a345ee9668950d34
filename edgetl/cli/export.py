from __future__ import annotations

from pathlib import Path

import click

from edgetl import options as opt
from edgetl.cli.common import FiniteFloat, handle_errors, json_option, path_option


@click.command()
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option("--backbone", help="Export this pretrained backbone with its ImageNet head (no RUN needed).")
@path_option("--out", "-o", help="ONNX file to write [default: RUN/model.onnx, or BACKBONE.onnx].")
@click.option(
    "--opset", type=click.IntRange(18, 99), default=opt.DEFAULT_OPSET, help="ONNX opset (18 or newer)."
)
@click.option(
    "--precision",
    type=click.Choice(opt.choices(opt.EXPORT_PRECISIONS)),
    default=opt.EXPORT_PRECISIONS[0].value,
)
@click.option("--optimize", is_flag=True, help="Clean up the graph (onnxruntime basic offline optimiser).")
@click.option(
    "--format",
    "formats",
    type=click.Choice(opt.choices(opt.ExportFormat)),
    multiple=True,
    default=(opt.ExportFormat.ONNX.value,),
    help="openvino also writes OpenVINO IR (.xml + .bin) beside the ONNX file; litert a LiteRT "
    "model.tflite (converter in its own environment, docs/litert.md).",
)
@path_option(
    "--check-images",
    help="Images for the parity check of a bare backbone [default: run's validation split, else sample photos].",
)
@click.option(
    "--tolerance", type=FiniteFloat(min=0), default=opt.DEFAULT_TOLERANCE, help="Max |logit diff| allowed."
)
@click.option(
    "--batch", type=click.IntRange(1, 4096), default=opt.CHECK_BATCH, help="Batch size of the parity check."
)
@click.option("--max-check-images", "max_images", type=click.IntRange(min=1), default=opt.MAX_CHECK_IMAGES)
@json_option
@handle_errors
def export(run: Path | None, out: Path | None, as_json: bool, **options) -> None:
    """Export a trained run (or a pretrained backbone) to ONNX, gated by a parity check with PyTorch.

    \b
    edgetl export runs/a                                   # -> runs/a/model.onnx + runs/a/export.json
    edgetl export runs/a --format openvino --json          # also runs/a/model.xml + .bin
    edgetl export runs/a --format litert                   # also runs/a/model.tflite
    edgetl export --backbone efficientnet_lite0 --out lite0.onnx
    """
    from edgetl.api import export as export_onnx
    from edgetl.console import out as stdout
    from edgetl.console import print_json

    result = export_onnx(run, out, **options)
    if as_json:
        print_json(result.to_dict())
        return
    stdout.print(
        f"wrote {result.onnx} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, {result.precision})"
    )
    if result.openvino:
        stdout.print(f"wrote {result.openvino} (+ .bin)")
    for c in result.checks:
        stdout.print(
            f"parity {c.runtime}: max |logit diff| {c.max_abs_diff:.2e} <= {c.tolerance:.1e}, "
            f"top-1 agreement {c.top1_agreement:.1%} on {c.n_images} images"
        )
