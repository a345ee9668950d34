"""Typed errors. Every message names the file or option at fault and what to do about it."""


class EdgetlError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class ImageError(EdgetlError):
    """An input file is not a readable image."""


class BundleError(EdgetlError):
    """A deploy bundle or model file is missing, malformed or modified."""


class BackendUnavailable(EdgetlError):
    """An inference backend cannot run here; the message says why."""
