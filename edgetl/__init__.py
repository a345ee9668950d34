"""edgetl: pretrained backbone -> fine-tuned -> ONNX -> INT8 -> benchmarked -> deploy bundle."""

from importlib.metadata import version

# The version lives in pyproject.toml only; an installed (or editable) edgetl carries it as metadata.
__version__ = version("edgetl")
