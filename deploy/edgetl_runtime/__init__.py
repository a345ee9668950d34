"""edgetl-runtime: run edgetl models and bundles on a device with numpy, pillow and onnxruntime."""

from .bundle import extract_bundle, open_bundle, verify_bundle
from .errors import BackendUnavailable, BundleError, EdgetlError, ImageError
from .manifest import Manifest
from .modelfile import read_model_info
from .modelinfo import ModelInfo
from .predictor import Prediction, Predictor
from .preprocess import PreprocessSpec, load_image, preprocess_batch, preprocess_image


def __getattr__(name: str) -> str:
    # The version lives in deploy/pyproject.toml only; the installed distribution carries it as metadata.
    # Read on first use: importlib.metadata costs a cold `edgetl-run predict` tens of milliseconds.
    if name == "__version__":
        from importlib.metadata import version

        return version("edgetl-runtime")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailable",
    "BundleError",
    "EdgetlError",
    "ImageError",
    "Manifest",
    "ModelInfo",
    "Prediction",
    "Predictor",
    "PreprocessSpec",
    "__version__",
    "extract_bundle",
    "load_image",
    "open_bundle",
    "preprocess_batch",
    "preprocess_image",
    "read_model_info",
    "verify_bundle",
]
