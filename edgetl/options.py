"""Choices and defaults shared by the Python API and the CLI.

Torch-free on purpose: click reads these while building `edgetl --help`, and the API functions take
the same values as their keyword defaults, so a default is stated once.
"""

from __future__ import annotations

from enum import Enum

from edgetl_runtime.modelinfo import Precision


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ExportFormat(str, Enum):
    ONNX = "onnx"
    OPENVINO = "openvino"
    LITERT = "litert"


class Balance(str, Enum):
    AUTO = "auto"  # class-weighted loss when the largest class is 1.5x the smallest or more
    LOSS = "loss"  # always class-weighted loss
    SAMPLER = "sampler"  # class-balanced sampling of batches
    NONE = "none"


class QuantBackend(str, Enum):
    ONNXRUNTIME = "onnxruntime"
    NNCF = "nncf"
    LITERT = "litert"


class PackagePrecision(str, Enum):
    INT8 = "int8"
    FP32 = "fp32"
    BOTH = "both"


EXPORT_PRECISIONS = (Precision.FP32, Precision.FP16)

# export: the dynamo exporter has no operator implementations below opset 18
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4  # max |logit difference| the FP32 parity gate allows
CHECK_BATCH = 16
MAX_CHECK_IMAGES = 256

# quantize: the accuracy gate and the calibration sample
DEFAULT_MAX_DROP = 0.5  # top-1 points the INT8 model may lose
DEFAULT_MIN_AGREEMENT = 0.95  # share of gate images whose INT8 top-1 equals FP32's
DEFAULT_NUM_CALIBRATION = 300
DEFAULT_QUANT_METHOD = "auto"

# benchmark: time budget of every row
WARMUP_S = 2.0
MIN_S = 5.0
MAX_ROW_S = 3600.0  # --warmup-s / --min-s: an hour per row; larger values are typos, not plans
MIN_RUNS = 50
ROUNDS = 5


MAX_SEED = 2**32 - 1  # numpy, torch and Python's random all take 0 .. 2**32-1


def check_seed(seed: int) -> int:
    """A seed every library accepts (a huge one crashed deep inside numpy or torch)."""
    from edgetl.errors import EdgetlError

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise EdgetlError(f"--seed {seed!r}: give an integer from 0 to {MAX_SEED}")
    return seed


def choices(options) -> list[str]:
    """The values of an enum (or of a sequence of enum members) as click.Choice takes them."""
    return [o.value for o in options]
