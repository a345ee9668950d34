"""The run folder: every path of a run in one place, its lineage, its lock and its temporary files.

A run is a chain of artifacts, each made from the one before and recording that one's identity:

    splits.json (dataset fingerprint) -> best.safetensors (fingerprint) -> model.onnx (checkpoint
    sha256) -> model.int8.onnx / quantize.json (model.onnx sha256) -> benchmark.json (sha256 of every
    model it timed) -> bundle manifest (all of them)

`RunFolder.check_for(step)` walks the links a pipeline step consumes and raises `StaleArtifact`, a one-line
error naming the artifact and the command that rebuilds it, so no step mixes two trainings. Writing
commands hold `RunFolder.lock()`; a second writer fails at once. Temporary files of interrupted
commands (kill -9) are swept under the lock by the next writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.runfolder.lineage import Step, check_lineage
from edgetl.runfolder.records import (
    BenchmarkRecord,
    ConfusionRecord,
    EpochRecord,
    ExportRecord,
    QuantizationRecord,
    SummaryRecord,
    load_epochs,
    load_typed,
)
from edgetl.runfolder.splits import SPLITS, Splits
from edgetl_runtime.fileio import UNWRITABLE, check_writable, sha256_file, write_text_atomic
from edgetl_runtime.modelinfo import Precision

LOCK = ".edgetl.lock"
# The run folder's file names: spelled here only; everything else asks RunFolder.
BEST = "best.safetensors"
LAST = "last.safetensors"
# Head-only companions, written by cached-feature epochs where nothing but the head changes.
BEST_HEAD = "best.head.safetensors"
LAST_HEAD = "last.head.safetensors"
LAST_STATE = "last_state.pt"
TEXT_STATE = "last_state.json"  # a text run's resume state (no optimizer tensors to keep)
BENCHMARK_TEXT_JSON = "benchmark_text.json"  # a text run's benchmark (sequence lengths, tokenization)
FROZEN_CHOICE = "frozen_path.json"
METRICS = "metrics.json"
CONFUSION = "confusion.json"
SUMMARY = "summary.json"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
FP32_STEM = "model"  # model.onnx, model.xml (+ .bin); the format adds its suffix
INT8_STEM = "model.int8"
EXPORT_JSON = "export.json"
QUANTIZE_JSON = "quantize.json"
CALIBRATION_JSON = "calibration.json"
BENCHMARK_JSON = "benchmark.json"
BENCHMARK_PNG = "benchmark.png"
REPORT_HTML = "report.html"
# `edgetl package RUN --out RUN/bundle.tar.gz` (or RUN/bundle/): removed with the run it ships
BUNDLE_ARCHIVE = "bundle.tar.gz"
BUNDLE_DIR = "bundle"
# Temporary names edgetl itself picks (work folders, bundle staging) start with this.
TMP_PREFIX = ".edgetl-tmp-"
# atomic_output's temporaries: ".<name>.<8 random chars>.tmp<suffix>" (tempfile.mkstemp).
_ATOMIC_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


class RunLocked(EdgetlError):
    """Another edgetl command is writing the run folder."""


class Kind(str, Enum):
    """What an artifact is; no command writes one kind over another."""

    SPLITS = "splits"
    CHECKPOINT = "checkpoint"
    TRAIN_STATE = "train state"
    TRAIN_RECORD = "training record"
    FP32_MODEL = "FP32/FP16 model"
    INT8_MODEL = "INT8 model"
    EXPORT_RECORD = "export record"
    QUANTIZE_RECORD = "quantization record"
    CALIBRATION = "calibration manifest"
    BENCHMARK_RECORD = "benchmark record"
    REPORT = "run report"
    PLOT = "plot image"
    BUNDLE = "deploy bundle"


# Run-folder file -> its kind, listed from the last stage back to the first: removing a run in this
# order (`RunFolder.clear`) leaves a shorter but consistent chain at every step if interrupted.
ARTIFACTS: dict[str, Kind] = {
    BUNDLE_ARCHIVE: Kind.BUNDLE,
    BUNDLE_DIR: Kind.BUNDLE,
    REPORT_HTML: Kind.REPORT,
    BENCHMARK_JSON: Kind.BENCHMARK_RECORD,
    BENCHMARK_TEXT_JSON: Kind.BENCHMARK_RECORD,
    BENCHMARK_PNG: Kind.PLOT,
    QUANTIZE_JSON: Kind.QUANTIZE_RECORD,
    CALIBRATION_JSON: Kind.CALIBRATION,
    f"{INT8_STEM}.onnx": Kind.INT8_MODEL,
    f"{INT8_STEM}.xml": Kind.INT8_MODEL,
    f"{INT8_STEM}.bin": Kind.INT8_MODEL,
    f"{INT8_STEM}.tflite": Kind.INT8_MODEL,
    EXPORT_JSON: Kind.EXPORT_RECORD,
    f"{FP32_STEM}.onnx": Kind.FP32_MODEL,
    f"{FP32_STEM}.onnx.data": Kind.FP32_MODEL,
    f"{FP32_STEM}.xml": Kind.FP32_MODEL,
    f"{FP32_STEM}.tflite": Kind.FP32_MODEL,
    f"{FP32_STEM}.bin": Kind.FP32_MODEL,
    SUMMARY: Kind.TRAIN_RECORD,
    CONFUSION: Kind.TRAIN_RECORD,
    CONFUSION_PNG: Kind.TRAIN_RECORD,
    CURVES_PNG: Kind.TRAIN_RECORD,
    METRICS: Kind.TRAIN_RECORD,
    LAST_STATE: Kind.TRAIN_STATE,
    TEXT_STATE: Kind.TRAIN_STATE,
    FROZEN_CHOICE: Kind.TRAIN_STATE,
    LAST_HEAD: Kind.CHECKPOINT,
    BEST_HEAD: Kind.CHECKPOINT,
    LAST: Kind.CHECKPOINT,
    BEST: Kind.CHECKPOINT,
    SPLITS: Kind.SPLITS,
}
# What marks a folder as holding a run (train refuses to start over it silently).
RUN_MARKERS = (SPLITS, BEST, LAST, LAST_STATE)


def dataset_fingerprint(splits: Splits) -> str:
    """sha256 over the split: labels, then each image's split, path relative to the data root, label
    and content. Equal fingerprints mean the same images with the same labels in the same splits."""
    digest = hashlib.sha256(json.dumps(list(splits.labels)).encode())
    for split, items in (("train", splits.train), ("val", splits.val)):
        for path, label in items:
            p = Path(path)
            rel = os.path.relpath(p, splits.data_root) if splits.data_root else p.name
            content = sha256_file(p) if p.is_file() else "missing"
            digest.update(f"{split}\t{Path(rel).as_posix()}\t{label}\t{content}\n".encode())
    return digest.hexdigest()


# --- the folder ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # paths
    splits = property(lambda self: self.root / SPLITS)
    best = property(lambda self: self.root / BEST)
    last = property(lambda self: self.root / LAST)
    best_head = property(lambda self: self.root / BEST_HEAD)
    last_head = property(lambda self: self.root / LAST_HEAD)
    last_state = property(lambda self: self.root / LAST_STATE)
    frozen_choice = property(lambda self: self.root / FROZEN_CHOICE)
    metrics = property(lambda self: self.root / METRICS)
    confusion = property(lambda self: self.root / CONFUSION)
    summary = property(lambda self: self.root / SUMMARY)
    curves_png = property(lambda self: self.root / CURVES_PNG)
    confusion_png = property(lambda self: self.root / CONFUSION_PNG)
    model = property(lambda self: self.root / f"{FP32_STEM}.onnx")
    model_xml = property(lambda self: self.root / f"{FP32_STEM}.xml")
    int8 = property(lambda self: self.root / f"{INT8_STEM}.onnx")
    int8_xml = property(lambda self: self.root / f"{INT8_STEM}.xml")
    export_record = property(lambda self: self.root / EXPORT_JSON)
    quantize_record = property(lambda self: self.root / QUANTIZE_JSON)
    calibration = property(lambda self: self.root / CALIBRATION_JSON)
    benchmark_record = property(lambda self: self.root / BENCHMARK_JSON)
    report_html = property(lambda self: self.root / REPORT_HTML)

    def model_file(self, precision: Precision | str, suffix: str = ".onnx") -> Path:
        """The run's FP32 or INT8 model in the format of `suffix` (".onnx", ".xml")."""
        stem = INT8_STEM if Precision(precision) is Precision.INT8 else FP32_STEM
        return self.root / f"{stem}{suffix}"

    def onnx_models(self) -> list[Path]:
        """The run's ONNX models that exist, FP32 first."""
        return [p for p in (self.model, self.int8) if p.is_file()]

    def holds_run(self) -> bool:
        return any((self.root / name).exists() for name in RUN_MARKERS)

    def foreign_artifacts(self) -> list[str]:
        """Files named like a run's artifacts in a folder that holds no run: the user's own."""
        if not self.root.is_dir() or self.holds_run():
            return []
        return [name for name in ARTIFACTS if (self.root / name).exists()]

    def checkpoint(self) -> Path | None:
        """The run's checkpoint: the best one, else the last (an interrupted run)."""
        return next((p for p in (self.best, self.last) if p.is_file()), None)

    def require_checkpoint(self) -> Path:
        """checkpoint(), or a one-line error saying how to get one."""
        if not self.root.is_dir():
            raise EdgetlError(
                f"{self.root}: no such run folder; train one with `edgetl train --data DIR --out {self.root}`"
            )
        checkpoint = self.checkpoint()
        if checkpoint is None:
            raise EdgetlError(
                f"{self.root}: run folder has no checkpoint ({BEST}); did `edgetl train` finish?"
            )
        return checkpoint

    # records
    def load_splits(self) -> Splits:
        return Splits.load(self.root)

    def save_export(self, record: ExportRecord) -> Path:
        return write_text_atomic(self.export_record, json.dumps(record.to_dict(), indent=1))

    def load_quantization(self) -> QuantizationRecord | None:
        return load_typed(QuantizationRecord, self.quantize_record)

    def save_quantization(self, record: QuantizationRecord) -> Path:
        return write_text_atomic(self.quantize_record, json.dumps(record.to_dict(), indent=1) + "\n")

    def load_benchmark(self) -> BenchmarkRecord | None:
        return load_typed(BenchmarkRecord, self.benchmark_record)

    def save_benchmark(self, record: BenchmarkRecord) -> Path:
        return write_text_atomic(self.benchmark_record, json.dumps(record.to_dict(), indent=1))

    def load_summary(self) -> SummaryRecord | None:
        return load_typed(SummaryRecord, self.summary)

    def load_confusion(self) -> ConfusionRecord | None:
        return load_typed(ConfusionRecord, self.confusion)

    def load_metrics(self) -> tuple[EpochRecord, ...] | None:
        return load_epochs(self.metrics)

    # locking and cleaning
    @contextlib.contextmanager
    def lock(self, command: str, *, read_only_ok: bool = False) -> Iterator[RunFolder]:
        """Hold the folder's write lock for `command`; fail at once if another command holds it.

        Temporary files left by an interrupted command are removed once the lock is held. With
        `read_only_ok` (commands that only read the run), a folder nobody may write to is used unlocked:
        no edgetl command can be writing it either.
        """
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / LOCK), timeout=0)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
            raise RunLocked(
                f"{self.root}: another edgetl command is writing this run folder; wait for it to finish "
                f"before `edgetl {command}`, or use another folder"
            ) from None
        except OSError as e:
            # a read-only mount is EROFS, not the PermissionError (EACCES) of a folder's mode bits
            if e.errno not in UNWRITABLE:
                raise
            if read_only_ok:
                yield self
                return
            raise EdgetlError(
                f"{self.root}: cannot write to this run folder ({e.strerror}); `edgetl {command}` needs to"
            ) from None
        try:
            self.sweep()
            yield self
        finally:
            lock.release()

    def discard_if_empty(self) -> None:
        """Remove a folder this command created when nothing but its lock file ended up in it."""
        if self.root.is_dir() and {p.name for p in self.root.iterdir()} <= {LOCK}:
            shutil.rmtree(self.root, ignore_errors=True)

    def sweep(self) -> list[Path]:
        """Remove temporaries of interrupted commands (call with the lock held)."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith(TMP_PREFIX) or (entry.is_file() and _ATOMIC_TMP.match(entry.name)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        return removed

    def prepare(self, splits: Splits, *, overwrite: bool, resuming: bool) -> None:
        """Ready the folder for a training's first write (rank 0, lock held): writable, the old run
        removed with --overwrite, the split saved unless resuming."""
        from edgetl.console import log

        check_writable(self.root, "--out", folder=True)
        if overwrite:
            removed = self.clear()
            if removed:
                log(f"--overwrite: removed the old run's {', '.join(removed)}")
        if not resuming:
            splits.save(self.root)

    def clear(self) -> list[str]:
        """Remove every artifact of the run (call with the lock held), last stage first, so an
        interruption leaves an older but consistent chain, never a newer artifact without its source.

        Only a folder that holds a run is cleared, and only the names a run writes: files of the same
        names in a folder with no run are the user's (`foreign_artifacts`), never removed."""
        removed: list[str] = []
        if not self.holds_run():
            return removed
        for name in ARTIFACTS:
            path = self.root / name
            if path.is_dir() and (path / "manifest.json").is_file():
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
            else:
                continue
            removed.append(name)
        return removed

    # lineage
    def check_for(self, step: Step | str) -> None:
        """Check the links of the chain that `step` consumes; StaleArtifact names the first stale one
        (lineage.check_lineage)."""
        check_lineage(self, Step(step))

    def sources(self, files: Sequence[Path]) -> dict[str, str]:
        """name -> sha256 of the run-folder files among `files` (what a benchmark record pins)."""
        return {
            p.name: sha256_file(p) for p in files if p.parent.resolve() == self.root.resolve() and p.is_file()
        }


def find_checkpoint(run: str | Path) -> Path:
    """A run folder's checkpoint (best, else last), or the file itself when given one."""
    run = Path(run)
    return run if run.is_file() else RunFolder(run).require_checkpoint()
