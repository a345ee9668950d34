from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import handle_errors, json_option, path_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@path_option(
    "--labels", required=True, help="Text file, one class name per line, in the order of the model's outputs."
)
@click.option(
    "--preprocess",
    required=True,
    help="Preset (imagenet: bilinear + ImageNet mean/std; inception: bicubic + mean/std 0.5) or a JSON "
    "file with keys crop, resize, interpolation, mean, std, layout.",
)
@path_option("--out", "out_path", required=True, help="The described copy.")
@click.option("--name", default=None, help="Model name in the metadata [default: the file's stem].")
@json_option
@handle_errors
def describe(model: Path, out_path: Path, as_json: bool, **options) -> None:
    """Make an ONNX model from elsewhere usable by edgetl: labels and preprocessing into a copy.

    Then quantize, benchmark, package and `edgetl-run` take the copy like edgetl's own export.

    \b
    edgetl describe resnet18.onnx --labels labels.txt --preprocess imagenet --out described.onnx
    edgetl quantize described.onnx --calibration images/ --out described.int8.onnx
    edgetl package described.onnx described.int8.onnx --out bundle.tar.gz
    """
    from edgetl.api import describe as describe_model
    from edgetl.console import out, print_json

    result = describe_model(model, out_path, **options)
    if as_json:
        print_json(result.to_dict())
        return
    p = result.info.preprocess
    out.print(
        f"{result.path}: {len(result.info.labels)} labels, resize {p.resize} {p.interpolation.value} "
        f"-> crop {p.crop}, mean {list(p.mean)}, std {list(p.std)}, {p.layout} ({result.info.precision})"
    )
