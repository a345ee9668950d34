"""Options and error handling shared by every subcommand."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from edgetl.errors import EdgetlError

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout.")


def handle_errors(fn: Callable) -> Callable:
    """Turn user-facing errors into a one-line message and exit code 1 (click's convention)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgetlError as e:
            raise click.ClickException(str(e)) from None

    return wrapper
