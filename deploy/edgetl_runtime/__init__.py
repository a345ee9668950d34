"""edgetl-runtime: run edgetl models and bundles on a device with numpy, pillow and onnxruntime."""

from importlib.metadata import version

from .bundle import extract_bundle, open_bundle, verify_bundle
from .errors import BackendUnavailable, BundleError, EdgetlError, ImageError
from .manifest import Manifest
from .modelfile import read_model_info
from .modelinfo import ModelInfo
from .predictor import Prediction, Predictor
from .preprocess import PreprocessSpec, load_image, preprocess_batch, preprocess_image

# The version lives in deploy/pyproject.toml only; the installed distribution carries it as metadata.
__version__ = version("edgetl-runtime")

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
