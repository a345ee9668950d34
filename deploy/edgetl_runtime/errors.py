"""Typed errors and the exit codes both command-line tools (edgetl, edgetl-run) document.

Every message names the file or option at fault and what to do about it. An error may also carry the
option and path it is about, so `--json` output can name them as fields.
"""

from __future__ import annotations

import os
import re

EXIT_OK = 0
EXIT_ERROR = 1  # a handled error: bad input, refused bundle, failed gate; nothing half-written
EXIT_USAGE = 2  # the command line itself is wrong (unknown option, bad value)
EXIT_PARTIAL = 3  # some inputs were unreadable; the others were processed and reported
EXIT_CRASH = 70  # an unexpected exception: a bug in edgetl (EX_SOFTWARE); please report it

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 error (bad input, nothing written), 2 usage, "
    "3 partial (some inputs unreadable, the rest processed), 70 internal error (a bug; please report)"
)

_LEADING_OPTION = re.compile(r"^(--[a-z0-9][a-z0-9-]*)\b")
_LEADING_SUBJECT = re.compile(r"^(?:--[a-z0-9-]+ )?([^\s:][^:]*?): ")


class EdgetlError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits EXIT_ERROR."""

    def __init__(self, message: str, *, option: str | None = None, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.option = option
        self.path = None if path is None else str(path)


class ImageError(EdgetlError):
    """An input file is not a readable image."""


class BundleError(EdgetlError):
    """A deploy bundle or model file is missing, malformed or modified."""


class BackendUnavailable(EdgetlError):
    """An inference backend cannot run here; the message says why."""


def _looks_like_path(value: str) -> bool:
    """An option's value that names a file: it exists, has a folder part or a file suffix."""
    suffix = os.path.splitext(value)[1][1:]
    return (
        os.path.lexists(value)
        or "/" in value
        or os.sep in value
        or (suffix.isalpha() and not value.startswith("'"))
    )


def error_fields(message: str, option: str | None = None, path: str | None = None) -> dict:
    """The one JSON shape of an error for both tools: {"message", "option", "path"}.

    Messages start with the option and/or the file at fault ("--out x: ...", "a.png: ..."); when the
    raiser did not name them, they are read from there (a path: no spaces, or an existing file).
    """
    message = " ".join(str(message).split())  # one line, whatever the cause's text held
    if option is None and (m := _LEADING_OPTION.match(message)):
        option = m.group(1)
    if path is None and (m := _LEADING_SUBJECT.match(message)):
        subject = m.group(1)
        # "--resume: ..." names an option, not a file
        named_file = os.path.lexists(subject) or not any(c.isspace() for c in subject)
        if message.startswith("--") and not _looks_like_path(subject):
            named_file = False  # "--batch 'abc': ..." names the option's value, not a file
        if named_file and not subject.startswith("--"):
            path = subject
    return {"message": message, "option": option, "path": path}


def describe_error(error: BaseException) -> dict:
    if isinstance(error, EdgetlError):
        return error_fields(str(error), error.option, error.path)
    return error_fields(str(error))
