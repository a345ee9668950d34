"""edgetl: pretrained backbone -> fine-tuned -> ONNX -> INT8 -> benchmarked -> deploy bundle."""

__version__ = "0.1.0"
