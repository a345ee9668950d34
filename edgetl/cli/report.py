from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import handle_errors, json_option, path_option


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@path_option("--out", help="HTML file to write [default: RUN/report.html].")
@path_option("--bundle", help="The run's bundle when it is not inside RUN.")
@click.option("--gallery", type=click.IntRange(min=0), default=24, help="Misclassified images shown at most.")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default browser.")
@json_option
@handle_errors
def report(
    run: Path, out: Path | None, bundle: Path | None, gallery: int, open_browser: bool, as_json: bool
) -> None:
    """One self-contained HTML page about a run: curves, confusion, mistakes, INT8, latency, bundle.

    \b
    edgetl report runs/a
    edgetl report runs/a --out a.html --open
    edgetl report runs/a --json
    """
    from edgetl.api import report as build_report
    from edgetl.console import out as stdout
    from edgetl.console import print_json

    result = build_report(run, out, bundle=bundle, gallery_limit=gallery)
    if open_browser:
        import webbrowser

        webbrowser.open(result.path.resolve().as_uri())
    if as_json:
        print_json(result.to_dict())
        return
    for name, command in result.to_dict()["missing"].items():
        stdout.print(f"{name}: not in the run yet ({command})")
    stdout.print(f"report: {result.path}")
