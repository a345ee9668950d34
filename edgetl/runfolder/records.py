"""The run folder's JSON records, read back as the frozen dataclasses they are written from.

Each record's `from_dict` is the one place its JSON is validated (runfolder/typed.py): a value of the
wrong type is one EdgetlError naming the file and the key. Keys a record does not know are ignored, so
an older edgetl reads a newer record; keys added since an older record was written take defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.runfolder.typed import T, typed_record
from edgetl_runtime.modelinfo import Precision


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
class CrossFitRecord(Record):
    """What a report shows of a gate's "cross_fit" (kept whole, as a dict, in the gate record)."""

    folds: int
    shipped_vs_fold_models_agreement: float


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
    reason: str = ""  # why a candidate did not apply to the graph (verdict "not applicable")


@dataclass(frozen=True)
class ClassAccuracy(Record):
    """One class's accuracy on the gate's images, FP32 model and INT8 model."""

    fp32: float | None = None
    int8: float | None = None


@dataclass(frozen=True)
class QuantizationRecord(Record):
    """RUN/quantize.json: the INT8 model, the FP32 model it was made from, and the gate's figures.

    `source_sha256` is the sha256 of the FP32 model.onnx quantized; `sha256` that of the INT8 file.
    Records written before these fields existed leave them empty and the lineage falls back to the
    calibration manifest's `model_sha256`. Records written before the gate record (`gate` None) have
    the flat accuracy fields only; `verdict()` rebuilds a gate from them. `shipped` FP32: no INT8
    model was worth writing (`reason` says why; `int8_model` empty, the INT8 figures None).
    """

    int8_model: str
    fp32_model: str
    shipped: Precision = Precision.INT8
    reason: str = ""  # why FP32 shipped, or why the INT8 model --method asked for is no faster
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
    per_class: dict[str, ClassAccuracy] = field(default_factory=dict)  # by label
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


class Status(str, Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # not installed or no device here; the reason says which
    FAILED = "failed"  # tried and raised; the error is kept
    SKIPPED = "skipped"  # does not apply (wrong file type, FP16 on CPU, no checkpoint)


@dataclass(frozen=True)
class BenchRow(Record):
    """One (backend, model, batch) of a benchmark with its status: a row of benchmark.json."""

    backend: str
    precision: str
    status: Status
    model: str = ""  # file name (model_path has the full path); hand-written records may leave it out
    batch: int = 1
    reason: str = ""  # why unavailable / skipped, or the error of a failed row
    model_path: str = ""
    device: str = ""
    threads: int | None = None  # effective CPU threads of the backend
    # What the backend computes in: "model" = the file's own types; OpenVINO runs FP32 files in bf16
    # on CPUs with bf16 support unless told otherwise, and a row must say so.
    execution_precision: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    cv: float | None = None
    runs: int = 0
    throughput: float | None = None  # images/s
    macs: int | None = None  # per image
    gops: float | None = None  # achieved: 2 * MACs * throughput / 1e9
    peak_rss_mb: float | None = None  # of the backend's own worker process
    rss_before_load_mb: float | None = None  # the same process before the session existed
    model_size_mb: float | None = None
    load_s: float | None = None  # session creation (compilation included)
    attempts: int = 0
    attempt_p50_ms: tuple[float, ...] = ()  # every attempt's p50, the kept one included
    noisy: bool = False

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


@dataclass(frozen=True)
class BenchmarkRecord(Record):
    """RUN/benchmark.json: the rows, how and where they were measured, and the sha256 of every model
    file (and checkpoint) timed."""

    rows: tuple[BenchRow, ...] = ()
    method: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # file name -> sha256


@dataclass(frozen=True)
class EnvironmentRecord(Record):
    """What a report shows of benchmark.json's "environment" (kept whole, as a dict, in the record)."""

    cpu: str = ""
    date: str = ""


@dataclass(frozen=True)
class ConfusionRecord(Record):
    """RUN/confusion.json: the best checkpoint on the validation images (rows: true class)."""

    labels: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]
    per_class_accuracy: dict[str, float | None] = field(default_factory=dict)
    accuracy: float | None = None


@dataclass(frozen=True)
class StagePlanRecord(Record):
    """One stage of a checkpoint's recipe; numbers keep the JSON's own int or float."""

    epochs: int | None = None
    unfreeze: int = 0
    lr: int | float | None = None
    lr_backbone: int | float | None = None


@dataclass(frozen=True)
class RecipeRecord(Record):
    """What a report shows of the recipe in a checkpoint's header (trainer.recipe.Recipe's JSON)."""

    stages: tuple[StagePlanRecord, ...] = ()
    batch_size: int | None = None
    label_smoothing: int | float | None = None
    balance: str | None = None
    hflip: bool | None = None
    weight_decay: int | float | None = None
    dropout: int | float | None = None
    patience: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class CheckpointHeader(Record):
    """A checkpoint's edgetl header as read without torch (backbones.checkpoint.CheckpointInfo's JSON)."""

    backbone: str = ""
    labels: tuple[str, ...] = ()
    preprocess: dict = field(default_factory=dict)
    epoch: int = 0
    recipe: RecipeRecord = RecipeRecord()
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
class EpochRecord(Record):
    """One epoch of RUN/metrics.json."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    stage: int = 1
    unfreeze: int = 0
    lr: float | None = None
    seconds: float = 0.0


def load_epochs(path: Path) -> tuple[EpochRecord, ...] | None:
    """RUN/metrics.json: one record per epoch so far, None when absent."""
    rows = read_json(path)
    if rows is None:
        return None
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        raise EdgetlError(f"{path}: not a list of epoch records; rerun `edgetl train`")
    return tuple(EpochRecord.from_dict(r, source=f"{path} epoch {i + 1}") for i, r in enumerate(rows))


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


@dataclass(frozen=True)
class DatasetProvenance(Record):
    fingerprint: str | None = None


@dataclass(frozen=True)
class ProvenanceRecord(Record):
    """What a report shows of a bundle manifest's "provenance" (bundler.package writes it)."""

    git_commit: str | None = None
    dataset: DatasetProvenance | None = None
    checkpoint_sha256: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
