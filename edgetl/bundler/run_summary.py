"""What a bundle's manifest tells of the run beyond its models: the quantization settings and
accuracy, the benchmark rows, the dataset the model learnt from, and the source commit."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from edgetl.runfolder.folder import RunFolder, dataset_fingerprint
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelinfo import ModelInfo, Precision

# The benchmark row fields worth carrying to the device; the full report stays in the run.
BENCH_FIELDS = (
    "backend",
    "model",
    "precision",
    "batch",
    "device",
    "threads",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "throughput",
    "peak_rss_mb",
    "model_size_mb",
)


@dataclass(frozen=True)
class DatasetSummary:
    """The manifest's provenance["dataset"]: the split train used."""

    fingerprint: str
    train_images: int
    val_images: int
    missing_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_quantization(run: Path, info: ModelInfo | None, int8: Path | None) -> tuple[dict, dict]:
    """(quantization settings, accuracy metrics) from the INT8 model's metadata and quantize.json."""
    record = RunFolder(run).load_quantization()
    settings = dict(info.quantization) if info is not None else {}
    metrics: dict = {}
    if record is None or (int8 is not None and Path(record.int8_model).name != int8.name):
        # quantize.json describes the run's other INT8 model (ONNX vs IR): its figures are not this one's
        return settings, metrics
    if record.shipped is Precision.FP32:
        # quantize wrote no INT8 model: its decision and the FP32 accuracy, no INT8 figures
        return settings, {
            "shipped": record.shipped.value,
            "reason": record.reason,
            "fp32_accuracy": record.fp32_accuracy,
            "eval_images": record.eval_images,
        }
    metrics = {
        "fp32_accuracy": record.fp32_accuracy,
        "int8_accuracy": record.int8_accuracy,
        "accuracy_drop": record.accuracy_drop,
        "agreement": record.agreement,
        "eval_images": record.eval_images,
    }
    if info is None:
        return settings, metrics
    settings |= {
        "backend": record.backend,
        "method": record.method,
        "num_calibration": record.num_calibration,
        "max_drop": record.max_drop,
    }
    calibration = record.calibration_manifest
    if calibration and Path(calibration).is_file():
        settings["calibration_manifest"] = Path(calibration).name
        settings["calibration_manifest_sha256"] = sha256_file(calibration)
    return settings, metrics


def summarize_benchmark(run: Path) -> dict | None:
    record = RunFolder(run).load_benchmark()
    if record is None:
        return None
    # fields a row has no value for (an older record, a GPU row's threads) are left out, not null
    rows = [
        {k: getattr(r, k) for k in BENCH_FIELDS if getattr(r, k) not in (None, "")}
        for r in record.rows
        if r.ok
    ]
    return {"rows": rows, "environment": record.environment}


def summarize_dataset(run: RunFolder) -> DatasetSummary | None:
    """The split's fingerprint as train recorded it (recomputed for runs made before it was recorded)."""
    if not run.splits.is_file():
        return None
    splits = run.load_splits()
    missing = sum(not Path(p).is_file() for p, _ in (*splits.train, *splits.val))
    return DatasetSummary(
        fingerprint=splits.fingerprint or dataset_fingerprint(splits),
        train_images=len(splits.train),
        val_images=len(splits.val),
        missing_images=missing,
    )


def read_git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None
