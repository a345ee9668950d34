"""The run folder's JSON records, read back as the frozen dataclasses they are written from.

Each record's `from_dict` is the one place its JSON is validated: a value of the wrong type is one
EdgetlError naming the file and the key (`typed_record`). Keys a record does not know are ignored, so
an older edgetl reads a newer record; keys added since an older record was written take defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetl.errors import EdgetlError

T = typing.TypeVar("T")


def read_json(path: Path):
    """A run-folder JSON file as parsed, None when absent; unreadable JSON is one EdgetlError."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EdgetlError(f"{path}: unreadable ({e}); rerun the stage that writes it") from None


def read_record(path: Path) -> dict | None:
    """A JSON object record (quantize.json, benchmark.json, ...), None when absent."""
    d = read_json(path)
    if d is None:
        return None
    if not isinstance(d, dict):
        raise EdgetlError(f"{path}: not an edgetl record (a JSON object is expected)")
    return d


def load_typed(cls: type[T], path: Path) -> T | None:
    """The record at `path` as `cls` (None when absent), validated by `cls.from_dict`."""
    d = read_record(path)
    return None if d is None else cls.from_dict(d, source=str(path))


# --- validation -----------------------------------------------------------------------------------


class _Wrong(Exception):
    def __init__(self, key: str, expected: str) -> None:
        super().__init__(key)
        self.key, self.expected = key, expected


def _convert(hint, value, key: str):
    """`value` checked against the type hint `hint` (and lists turned into tuples where declared)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except _Wrong:
                continue
        raise _Wrong(key, " or ".join(getattr(a, "__name__", str(a)) for a in args))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Wrong(key, "a JSON object")
        return _build(hint, value, key + ".")
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            raise _Wrong(key, "a JSON list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise _Wrong(key, f"a list of {len(args)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False)))
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise _Wrong(key, "a JSON list")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Wrong(key, "a JSON object")
        if args:
            return {k: _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if hint is typing.Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Wrong(key, "a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Wrong(key, "an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _Wrong(key, "true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _Wrong(key, "a string")
        return value
    raise TypeError(f"records cannot hold {hint!r}")  # a programming error, not bad input


def _build(cls, d: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Wrong(prefix + f.name, "present")
            continue
        values[f.name] = _convert(hints[f.name], d[f.name], prefix + f.name)
    return cls(**values)


def typed_record(cls: type[T], d: dict, source: str) -> T:
    """`cls` built from the JSON object `d`; a missing or mistyped key is one EdgetlError."""
    if not isinstance(d, dict):
        raise EdgetlError(f"{source}: not an edgetl record (a JSON object is expected)")
    try:
        return _build(cls, d)
    except _Wrong as e:
        raise EdgetlError(
            f"{source}: key {e.key!r} must be {e.expected}; rerun the stage that writes it"
        ) from None


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "record"):
        return typed_record(cls, d, source)


@dataclass(frozen=True)
class ParityRecord(Record):
    runtime: str = ""
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    tolerance: float | None = None
    passed: bool = False


@dataclass(frozen=True)
class ExportRecord(Record):
    """RUN/export.json: what model.onnx was made from (`source_sha256`: the checkpoint's sha256)."""

    onnx: str
    source: str
    source_sha256: str
    sha256: str  # of the ONNX file written
    openvino: str | None = None
    backbone: str = ""
    opset: int = 0
    precision: str = ""
    optimized: bool = False
    max_abs_diff: float | None = None  # onnxruntime CPU vs PyTorch
    top1_agreement: float | None = None
    n_images: int = 0
    check_images: str = ""
    skipped_images: int = 0
    tolerance: float | None = None
    size_bytes: int = 0
    nodes: int = 0
    seconds: float = 0.0
    checks: tuple[dict, ...] = ()
    litert: str | None = None  # the .tflite written beside the ONNX file (--format litert)


@dataclass(frozen=True)
class GateRecord(Record):
    """The quantization gate's verdict (quantize.json's "gate")."""

    metric: str = "top-1 accuracy"
    images: int = 0
    calibration_images: int | None = None
    fp32: float | None = None
    int8: float | None = None
    drop: float | None = None  # points
    drop_ci95: tuple[float, float] | None = None
    max_drop: float | None = None
    agreement: float | None = None
    agreement_ci95: tuple[float, float] | None = None
    min_agreement: float | None = None
    resolvable_drop: float | None = None
    fp32_only: int = 0
    int8_only: int = 0
    held_out: bool = False
    passed: bool = False
    verdict: str = ""
    reason: str = ""
    cross_fit: dict | None = None  # the fold models a cross-fitted gate measured, and the refit shipped


@dataclass(frozen=True)
class AttemptRecord(Record):
    """One candidate the quantization ladder tried."""

    rung: str = ""
    method: str = ""
    exclude: tuple[str, ...] = ()
    agreement: float | None = None
    kl: float | None = None
    accuracy: float | None = None
    drop: float | None = None
    drop_ci95: tuple[float, float] | None = None
    size_ratio: float | None = None
    latency_ms: float | None = None
    verdict: str = ""
    passed: bool = False


@dataclass(frozen=True)
class QuantizationRecord(Record):
    """RUN/quantize.json: the INT8 model, the FP32 model it was made from, and the gate's figures.

    `source_sha256` is the sha256 of the FP32 model.onnx quantized; `sha256` that of the INT8 file.
    Records written before these fields existed leave them empty and the lineage falls back to the
    calibration manifest's `model_sha256`. Records written before the gate record (`gate` None) have
    the flat accuracy fields only; `verdict()` rebuilds a gate from them.
    """

    int8_model: str
    fp32_model: str
    source_sha256: str = ""
    sha256: str = ""
    fp32_sha256: str = ""
    backend: str = ""
    rung: str = ""
    method: str = ""
    settings: dict = field(default_factory=dict)  # the quantizer's own settings, by quantizer
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    accuracy_drop: float | None = None  # points
    agreement: float | None = None
    kl: float | None = None
    per_class: dict[str, dict[str, float | None]] = field(default_factory=dict)  # label -> fp32/int8
    size_ratio: float | None = None
    fp32_bytes: int | None = None
    int8_bytes: int | None = None
    calibration_manifest: str = ""
    num_calibration: int | None = None
    calibration_skipped: int = 0
    eval_images: int = 0
    eval_skipped: int = 0
    max_drop: float | None = None
    passed: bool = False
    gate: GateRecord | None = None
    attempts: tuple[AttemptRecord, ...] = ()

    def verdict(self) -> GateRecord:
        """The gate's verdict: the gate record when written, else one from the older flat fields."""
        if self.gate is not None:
            return self.gate
        n, drop, agreement = self.eval_images, self.accuracy_drop, self.agreement
        ci = None
        if n and drop is not None and agreement is not None:
            # Images whose correctness differs are at most the disagreeing ones: a conservative bound.
            half = 196 * ((1 - agreement) / n) ** 0.5
            ci = (drop - half, drop + half)
        return GateRecord(
            images=n,
            calibration_images=self.num_calibration,
            fp32=self.fp32_accuracy,
            int8=self.int8_accuracy,
            drop=drop,
            drop_ci95=ci,
            max_drop=self.max_drop,
            passed=self.passed,
            verdict="passed" if self.passed else "failed",
            reason="interval: conservative bound from top-1 agreement (quantize.json has no gate record)"
            if ci
            else "",
        )


@dataclass(frozen=True)
class BenchRowRecord(Record):
    """One row of benchmark.json (written from bench.results.BenchRow)."""

    backend: str
    precision: str
    status: str
    model: str = ""  # file name; older and hand-written records may leave it out
    batch: int = 1
    reason: str = ""
    model_path: str = ""
    device: str = ""
    threads: int | None = None
    execution_precision: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    cv: float | None = None
    runs: int = 0
    throughput: float | None = None
    macs: int | None = None
    gops: float | None = None
    peak_rss_mb: float | None = None
    rss_before_load_mb: float | None = None
    model_size_mb: float | None = None
    load_s: float | None = None
    attempts: int = 0
    attempt_p50_ms: tuple[float, ...] = ()
    noisy: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class BenchmarkRecord(Record):
    """RUN/benchmark.json: the rows, how and where they were measured, and the sha256 of every model
    file (and checkpoint) timed."""

    rows: tuple[BenchRowRecord, ...] = ()
    method: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # file name -> sha256


@dataclass(frozen=True)
class ConfusionRecord(Record):
    """RUN/confusion.json: the best checkpoint on the validation images (rows: true class)."""

    labels: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]
    per_class_accuracy: dict[str, float | None] = field(default_factory=dict)
    accuracy: float | None = None


@dataclass(frozen=True)
class CheckpointHeader(Record):
    """A checkpoint's edgetl header as read without torch (backbones.checkpoint.CheckpointInfo's JSON)."""

    backbone: str = ""
    labels: tuple[str, ...] = ()
    preprocess: dict = field(default_factory=dict)
    epoch: int = 0
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    modality: str = "image"  # absent in checkpoints written before text


@dataclass(frozen=True)
class PhaseRecord(Record):
    index: int
    unfreeze: int
    epochs_run: int
    seconds: float
    best_val_accuracy: float
    stopped_early: bool


@dataclass(frozen=True)
class SummaryRecord(Record):
    """RUN/summary.json: the finished training (trainer.session.TrainResult plus per-class accuracy)."""

    best_val_accuracy: float
    best_epoch: int
    run: str = ""
    checkpoint: str = ""
    train_seconds: float = 0.0
    epochs: int = 0
    skipped: int = 0
    num_train: int = 0
    num_val: int = 0
    labels: tuple[str, ...] = ()
    backbone: str = ""
    device: str = ""
    stages: tuple[PhaseRecord, ...] = ()
    frozen_compute: dict | None = None
    world_size: int = 1
    backend: str | None = None
    per_class_accuracy: dict[str, float | None] = field(default_factory=dict)
