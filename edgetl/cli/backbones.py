from __future__ import annotations

import click

from edgetl.cli.common import handle_errors, json_option


@click.command()
@click.argument("pattern", default="*")
@json_option
@handle_errors
def backbones(pattern: str, as_json: bool) -> None:
    """List the registered backbones (any timm model name also works with --backbone).

    \b
    edgetl backbones
    edgetl backbones 'mobilenet*' --json
    """
    from rich.table import Table

    from edgetl import backbones as bb
    from edgetl.console import out, print_json

    rows = [
        {
            "name": s.name,
            "source": s.source.value,
            "arch": s.arch,
            "parameters": bb.count_parameters(s.name),
            "input_size": s.preprocess.crop,
            "offline_weights": s.offline,
        }
        for s in bb.list_backbones(pattern)
    ]
    if as_json:
        print_json({"backbones": rows, "default": bb.DEFAULT_BACKBONE})
        return
    table = Table("name", "source", "params (M)", "input", "weights offline")
    for r in rows:
        table.add_row(
            r["name"],
            r["source"],
            f"{r['parameters'] / 1e6:.2f}",
            str(r["input_size"]),
            "yes" if r["offline_weights"] else "download",
        )
    out.print(table)
