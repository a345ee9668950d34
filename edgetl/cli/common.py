"""Options and error handling shared by every subcommand.

Errors take the runtime's one shape (edgetl_runtime.fileio.report_error) and exit codes
(edgetl_runtime.errors): 1 handled error, 2 usage, 3 partial results, 70 internal error (a bug).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from edgetl.errors import EdgetlError
from edgetl.options import MAX_SEED
from edgetl_runtime.errors import EXIT_ERROR, EXIT_USAGE
from edgetl_runtime.fileio import report_crash, report_error

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout.")


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinities (click's FloatRange lets both through: NaN
    compares false with every bound, so `--max-drop nan` would switch the accuracy gate off)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


seed_option = click.option(
    "--seed", type=click.IntRange(0, MAX_SEED), default=0, help="Random seed (0 .. 2**32-1)."
)


def handle_errors(fn: Callable) -> Callable:
    """Turn user-facing errors into one line (and one JSON object with --json) and exit code 1;
    anything unexpected is reported in one line as a bug, with its own exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except EdgetlError as e:
            report_error(e, as_json=as_json)
            sys.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as e:
            sys.exit(report_crash(e, as_json=as_json, tool="edgetl"))

    return wrapper


def wants_json(args: Sequence[str]) -> bool:
    args = list(args)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def run_group(group_main: Callable, args: Sequence[str] | None, **kwargs) -> None:
    """Run the click group in non-standalone mode so usage errors get the shared shape and exit 2."""
    args = sys.argv[1:] if args is None else list(args)
    as_json = wants_json(args)
    try:
        code = group_main(args, standalone_mode=False, **kwargs)
    except click.UsageError as e:
        opts = getattr(getattr(e, "param", None), "opts", ())
        option = next((o for o in opts if o.startswith("--")), getattr(e, "option_name", None))
        report_error(EdgetlError(e.format_message(), option=option), as_json=as_json, kind="usage")
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        report_error(EdgetlError(e.format_message()), as_json=as_json)
        sys.exit(e.exit_code)
    except click.Abort:
        report_error(EdgetlError("aborted"), as_json=as_json)
        sys.exit(EXIT_ERROR)
    except EdgetlError as e:
        report_error(e, as_json=as_json)
        sys.exit(EXIT_ERROR)
    except Exception as e:
        sys.exit(report_crash(e, as_json=as_json, tool="edgetl"))
    sys.exit(code if isinstance(code, int) else 0)


def path_option(*decls: str, exists: bool = False, **kwargs) -> Callable:
    """An option naming a file or folder, handed to the command as a Path (`exists`: click checks it)."""
    return click.option(*decls, type=click.Path(exists=exists, path_type=Path), **kwargs)
