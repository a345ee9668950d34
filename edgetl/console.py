"""Where output goes: logs and progress to stderr, the one JSON summary (or a table) to stdout.

Progress: a rich bar when stderr is a terminal, otherwise a plain line now and then (CI logs, pipes).
Third-party chatter (onnxruntime's quantizer, exporters, warnings) is silenced by
`quiet_third_party()` unless the user asked for `--verbose` (`set_verbose`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgetl_runtime.fileio import print_json as print_json

T = TypeVar("T")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def log(message: str) -> None:
    err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}")


def progress() -> Progress:
    """A progress bar on stderr; invisible when stderr is not a terminal (CI logs stay clean)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


# Plain progress lines: at most one per this many seconds, besides the first and the last.
PLAIN_EVERY_S = 10.0
_verbose = False


def set_verbose(flag: bool) -> None:
    """--verbose: let third-party libraries print (still to stderr, never into the JSON on stdout)."""
    global _verbose
    _verbose = bool(flag)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on a terminal, or a few plain "description: i/n" lines elsewhere."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    if not err.is_terminal:
        yield from _plain_track(items, description, total)
        return
    with progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _plain_track(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    started = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= PLAIN_EVERY_S and done != total:
            last = now
            log(f"{description}: {done}/{total if total is not None else '?'} ({now - started:.0f}s)")
    if time.perf_counter() - started >= PLAIN_EVERY_S:
        log(f"{description}: {done} done in {time.perf_counter() - started:.0f}s")


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence libraries' prints, logging and warnings inside the block (unless --verbose).

    Their stdout never reaches ours either way (stdout carries the --json object). edgetl's own
    `log`/`warn` and progress bars keep working inside. If the block fails, what was swallowed is
    shown, since it may explain the failure.
    """
    if _verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    swallowed = io.StringIO()
    own_file = err._file  # edgetl's console keeps writing to the real stderr
    err.file = sys.stderr
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(swallowed),
            contextlib.redirect_stderr(swallowed),
        ):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        if swallowed.getvalue().strip():
            err.print(swallowed.getvalue().rstrip(), markup=False, highlight=False)
        raise
    finally:
        logging.disable(logging.NOTSET)
        err.file = own_file
