"""The `edgetl` command: a thin click layer over the Python API.

Subcommands are imported only when invoked, so `edgetl --help` does not pay for torch.
"""

from __future__ import annotations

import importlib
import warnings

import click

from edgetl import __version__

# command -> "module:function"; one line per stage, nothing imported until used.
COMMANDS = {
    "backbones": "edgetl.cli.backbones:backbones",
    "train": "edgetl.cli.train:train",
    "export": "edgetl.cli.export:export",
    "describe": "edgetl.cli.describe:describe",
    "quantize": "edgetl.cli.quantize:quantize",
    "benchmark": "edgetl.cli.benchmark:benchmark",
    "package": "edgetl.cli.package:package",
    "demo": "edgetl.cli.demo:demo",
    "report": "edgetl.cli.report:report",
    "keygen": "edgetl.cli.keygen:keygen",
}


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    from edgetl.console import set_verbose

    set_verbose(value)


# Every command gets --verbose without repeating it: third-party prints stay silent otherwise.
VERBOSE = click.Option(
    ["--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
    help="Show third-party libraries' own output (on stderr).",
)  # fmt: skip


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        command = getattr(importlib.import_module(module), attr)
        if all(p.name != "verbose" for p in command.params):
            command.params.append(VERBOSE)
        return command

    def main(self, args=None, **kwargs):
        from edgetl.cli.common import run_group

        kwargs.pop("standalone_mode", None)
        run_group(super().main, args, **kwargs)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="edgetl")
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Largest image (width x height) to decode; larger ones are skipped as unreadable [default: 89478485].",
)
def main(max_pixels: int | None) -> None:
    """Fine-tune a pretrained image backbone and take it to an edge device.

    \b
    edgetl demo                                   # the whole pipeline on a bundled dataset
    edgetl train --data DATA --out runs/a         # fine-tune (frozen, then partial unfreeze)
    edgetl export runs/a --out runs/a/model.onnx  # ONNX with a parity gate
    edgetl quantize runs/a --out runs/a/model.int8.onnx
    edgetl benchmark runs/a
    edgetl package runs/a --out bundle.tar.gz --sign release.key   # after `edgetl keygen --out release.key`

    Exit codes: 0 ok, 1 error (bad input; nothing written), 2 usage, 3 partial results,
    70 internal error (a bug). With --json, errors are {"error": {"message", "option", "path", "kind"}}.
    """
    from PIL import Image

    from edgetl_runtime.preprocess import set_max_pixels

    # an over-limit image is skipped and counted like any unreadable one; Pillow's warning is noise
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if max_pixels is not None:
        set_max_pixels(max_pixels)
