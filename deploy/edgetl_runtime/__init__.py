"""edgetl-runtime: run edgetl models and bundles on a device with numpy, pillow and onnxruntime."""

from .errors import BackendUnavailable, BundleError, EdgetlError, ImageError
from .modelinfo import ModelInfo, read_model_info
from .preprocess import PreprocessSpec, load_image, preprocess_batch, preprocess_image

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BundleError",
    "EdgetlError",
    "ImageError",
    "ModelInfo",
    "PreprocessSpec",
    "__version__",
    "load_image",
    "preprocess_batch",
    "preprocess_image",
    "read_model_info",
]
