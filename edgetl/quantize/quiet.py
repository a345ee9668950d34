"""Third-party chatter (onnxruntime's "Collecting tensor data and making histogram ...", NNCF's
statistics bars and logs) goes nowhere unless --verbose, and never to stdout, which belongs to the
--json summary. edgetl's own progress is printed outside these blocks and stays."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator

VERBOSE = contextvars.ContextVar("edgetl_quantize_verbose", default=False)


@contextlib.contextmanager
def verbosity(verbose: bool) -> Iterator[None]:
    token = VERBOSE.set(verbose)
    try:
        yield
    finally:
        VERBOSE.reset(token)


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    if VERBOSE.get():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    root = logging.getLogger()
    nncf_logger = logging.getLogger("nncf")
    levels = root.level, nncf_logger.level
    root.setLevel(logging.ERROR)
    nncf_logger.setLevel(logging.ERROR)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            yield
        finally:
            root.setLevel(levels[0])
            nncf_logger.setLevel(levels[1])
