from __future__ import annotations

from pathlib import Path

import click

from edgetl import options as opt
from edgetl.cli.common import handle_errors, json_option, path_option


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@path_option(
    "--out", "out_path", required=True, help="Bundle folder, or FILE.tar.gz for a byte-reproducible archive."
)
@click.option(
    "--precision",
    type=click.Choice(opt.choices(opt.PackagePrecision)),
    default=None,
    help="Model file(s) to ship [default: both when the run has an INT8 model, else fp32].",
)
@click.option(
    "--format",
    type=click.Choice(opt.choices(opt.ExportFormat)),
    default=opt.ExportFormat.ONNX.value,
    help="Models of a run folder to ship: ONNX, the OpenVINO IRs (`edgetl export --format openvino`, "
    "`edgetl quantize --backend nncf`), or LiteRT (`--format litert`, `--backend litert`).",
)
@click.option("--name", default=None, help="Bundle name in the manifest [default: the run folder's name].")
@path_option(
    "--sign", default=None, help="Sign the manifest with this ed25519 private key (from `edgetl keygen`)."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing bundle at --out (nothing else is replaced)."
)
@json_option
@handle_errors
def package(sources: tuple[Path, ...], out_path: Path, as_json: bool, **options) -> None:
    """Bundle a run (or model files with edgetl metadata) for a device: model(s), manifest.json,
    labels.txt, README.

    The device runs it with `edgetl-run` (pip install edgetl-runtime; no PyTorch).
    Set SOURCE_DATE_EPOCH to pin the creation time; otherwise it is the newest input's mtime.

    \b
    edgetl package runs/a --out runs/a/bundle.tar.gz
    edgetl package runs/a --out deploy/ --precision fp32 --json
    edgetl package runs/a --out runs/a/bundle-ir.tar.gz --format openvino
    edgetl package described.onnx described.int8.onnx --out bundle.tar.gz
    """
    from edgetl.api import package as build
    from edgetl.console import out, print_json

    bundle = build(list(sources), out_path, **options)
    if as_json:
        print_json(bundle.to_dict())
        return
    models = ", ".join(
        f"{m.path} ({m.precision.value}, {m.size / 1e6:.1f} MB)" for m in bundle.manifest.models
    )
    out.print(
        f"bundle {bundle.path} ({bundle.size_bytes / 1e6:.1f} MB, sha256 {bundle.sha256[:16]}): {models}"
    )
    out.print(f"on the device: pip install edgetl-runtime && edgetl-run predict {bundle.path} IMAGES...")
