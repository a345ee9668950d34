"""Where output goes: logs and progress to stderr, the one JSON summary (or a table) to stdout."""

from __future__ import annotations

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


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
