"""edgetl's errors: the runtime's types plus the ones only the training side raises."""

from edgetl_runtime.errors import BackendUnavailable, BundleError, EdgetlError, ImageError


class DataError(EdgetlError):
    """A dataset folder is missing, empty or inconsistent."""


class WeightsError(EdgetlError):
    """Pretrained weights cannot be found or do not fit the architecture."""


class GateError(EdgetlError):
    """A numerical gate (export parity, quantization accuracy) failed; nothing was written."""


__all__ = [
    "BackendUnavailable",
    "BundleError",
    "DataError",
    "EdgetlError",
    "GateError",
    "ImageError",
    "WeightsError",
]
