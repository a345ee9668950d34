from __future__ import annotations

from pathlib import Path

import click

from edgetl import options as opt
from edgetl.cli.common import FiniteFloat, handle_errors, json_option, path_option
from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import Kind
from edgetl.runfolder.outputs import check_outputs
from edgetl_runtime.fileio import check_writable


def _parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise EdgetlError(
            f"--batch {text!r}: give comma-separated positive integers, e.g. --batch 1,8"
        ) from None
    if not batches or min(batches) < 1:
        raise EdgetlError(f"--batch {text!r}: give comma-separated positive integers, e.g. --batch 1,8")
    return batches


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", "backends", multiple=True, help="Backend to measure (repeatable; default: all).")
@click.option("--batch", "batch", default="1", help="Batch sizes, comma-separated.")
@click.option(
    "--threads",
    type=click.IntRange(1, 4096),
    help="CPU threads per backend (default: each library's own default).",
)
@click.option(
    "--warmup-s", type=FiniteFloat(0, opt.MAX_ROW_S), default=opt.WARMUP_S, help="Warm-up time per row."
)
@click.option(
    "--min-s", type=FiniteFloat(0, opt.MAX_ROW_S), default=opt.MIN_S, help="Minimum timed seconds per row."
)
@click.option(
    "--min-runs", type=click.IntRange(1, 10**7), default=opt.MIN_RUNS, help="Minimum timed calls per row."
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 1000),
    default=opt.ROUNDS,
    help="Interleaved rounds the time is split into.",
)
@path_option("--images", help="Folder of images for the input pool.")
@path_option("--checkpoint", help="Checkpoint for the pytorch baseline.")
@path_option("--plot", help="Write a PNG bar chart of p50 (p90 whiskers).")
@json_option
@handle_errors
def benchmark(
    models: tuple[Path, ...],
    backends: tuple[str, ...],
    batch: str,
    plot: Path | None,
    as_json: bool,
    **options,
) -> None:
    """Latency and throughput of models on every backend (p50/p90/p99, images/s, GOPS, memory).

    Give ONNX files, or a run folder: then its model.onnx, model.int8.onnx and checkpoint (the
    pytorch baseline) are measured on its validation images, and RUN/benchmark.json is written.

    \b
    edgetl benchmark runs/a
    edgetl benchmark model.onnx model.int8.onnx --backend onnxruntime-cpu --threads 2
    edgetl benchmark runs/a --batch 1,8 --plot latency.png --json
    """
    from edgetl.api import benchmark as run_benchmark
    from edgetl.bench.results import plot_report
    from edgetl.console import log, print_json

    if plot is not None:
        inputs = [*models, options["checkpoint"]]
        check_outputs([("--plot", plot, Kind.PLOT)], inputs=inputs, image_folders=[options["images"]])
        check_writable(plot, "--plot")
    report = run_benchmark(list(models), backends=backends or None, batches=_parse_batches(batch), **options)
    if plot is not None:
        plot_report(report, plot)
        log(f"plot written to {plot}")
    if as_json:
        print_json(report.to_dict())
        return
    _print_table(report)


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgetl.console import out

    if not out.is_terminal:  # piped output has no width to fit: keep each row on one line
        out = Console(width=180, highlight=False)
    table = Table(
        "backend",
        "model",
        "prec",
        "batch",
        "status",
        "thr",
        "p50",
        "p90",
        "p99",
        "cv",
        "img/s",
        "GOPS",
        "RSS",
        "size",
        title="latency per call in ms (one batch); RSS and size in MB",
        pad_edge=False,
    )
    notes = []
    for r in report.rows:
        status = r.status.value
        if r.reason:
            notes.append(f"{r.backend} {r.model}: {r.status.value}: {r.reason}")
            status += f" [{len(notes)}]"
        table.add_row(
            r.backend,
            r.model,
            r.precision
            if r.execution_precision in (None, "model", r.precision)
            else f"{r.precision} (runs {r.execution_precision})",
            str(r.batch),
            f"[yellow]{status} noisy[/yellow]" if r.noisy else status,
            "" if r.threads is None else str(r.threads),
            _ms(r.p50_ms),
            _ms(r.p90_ms),
            _ms(r.p99_ms),
            "" if r.cv is None else f"{r.cv:.2f}",
            "" if r.throughput is None else f"{r.throughput:.1f}",
            "" if r.gops is None else f"{r.gops:.1f}",
            "" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
            "" if r.model_size_mb is None else f"{r.model_size_mb:.1f}",
        )
    out.print(table)
    for i, note in enumerate(dict.fromkeys(notes), 1):
        out.print(f"[{i}] {note}", soft_wrap=True)
    env, method = report.environment, report.method
    out.print(
        f"{env['cpu']}, {env['physical_cores']} cores; inputs: {method['inputs']}; "
        f"warm-up {method['warmup_s']} s, >= {method['min_s']} s and >= {method['min_runs']} runs per row "
        f"in {method['rounds']} interleaved rounds; timer time.perf_counter_ns",
        soft_wrap=True,
    )
