"""A run's lineage: each artifact records the identity of the one it was made from (folder.py's
docstring draws the chain); a step checks the links it consumes before it runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.errors import EdgetlError
from edgetl.runfolder.records import read_record
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelinfo import Precision

if TYPE_CHECKING:
    from edgetl.runfolder.folder import RunFolder


class StaleArtifact(EdgetlError):
    """An artifact was made from something that has changed since; the message says how to rebuild it."""


class Step(str, Enum):
    TRAIN = "train"
    EXPORT = "export"
    QUANTIZE = "quantize"
    BENCHMARK = "benchmark"
    PACKAGE = "package"


def _model_source(path: Path) -> str:
    """The `edgetl.source_sha256` a model file records (ONNX or OpenVINO IR)."""
    from edgetl_runtime.modelfile import read_model_info

    return read_model_info(path).source_sha256


def check_lineage(folder: RunFolder, step: Step) -> None:
    """Check the links of the chain that `step` consumes; StaleArtifact names the first stale one.

    Links whose records predate lineage (no sha256 recorded) are not checked.
    """
    run = folder.root
    splits = folder.load_splits() if folder.splits.is_file() else None
    checkpoint = folder.checkpoint()
    if step is Step.TRAIN or checkpoint is None:
        return
    if folder.last_state.is_file() and not folder.summary.is_file():
        raise StaleArtifact(
            f"{run}: training was interrupted ({folder.summary.name} missing); finish it with "
            f"`edgetl train --data DATA --out {run} --resume`"
        )
    if splits is not None and splits.fingerprint:
        from edgetl.backbones.checkpoint import read_checkpoint_info

        trained_on = read_checkpoint_info(checkpoint).data_fingerprint
        if trained_on and trained_on != splits.fingerprint:
            raise StaleArtifact(
                f"{checkpoint}: trained on other data than {folder.splits} records; retrain with "
                f"`edgetl train --data DATA --out {run} --overwrite`"
            )
    if step is Step.EXPORT:
        return
    checkpoint_sha = sha256_file(checkpoint)
    fp32 = [p for p in (folder.model, folder.model_xml) if p.is_file()]
    for path in fp32:
        if _model_source(path) not in ("", checkpoint_sha):
            raise StaleArtifact(
                f"{path}: exported from an older checkpoint than {checkpoint.name}; "
                f"rebuild it with `edgetl export {run}`"
            )
    if step is Step.QUANTIZE:
        return
    model_sha = sha256_file(folder.model) if folder.model.is_file() else None
    _check_int8(folder, checkpoint_sha, model_sha)
    if step is Step.BENCHMARK:
        return
    _check_benchmark(folder)


def _check_int8(folder: RunFolder, checkpoint_sha: str, model_sha: str | None) -> None:
    run = folder.root
    int8 = [p for p in (folder.int8, folder.int8_xml) if p.is_file()]
    rebuild = f"rebuild it with `edgetl quantize {run}`"
    for path in int8:
        if _model_source(path) not in ("", checkpoint_sha):
            raise StaleArtifact(f"{path}: quantized from an older training; {rebuild}")
    record = folder.load_quantization()
    if not int8 and record is None:
        return
    if int8 and record is not None and record.shipped is Precision.FP32:
        raise StaleArtifact(f"{int8[0]}: the last quantization shipped FP32 ({record.reason}); {rebuild}")
    what = int8[0] if int8 else folder.quantize_record
    if model_sha is None:
        raise StaleArtifact(
            f"{what}: its FP32 model {folder.model} is gone; run `edgetl export {run}`, then quantize"
        )
    made_from = record.source_sha256 if record else ""
    if not made_from and folder.calibration.is_file():
        made_from = str((read_record(folder.calibration) or {}).get("model_sha256") or "")
    if made_from and made_from != model_sha:
        raise StaleArtifact(
            f"{what}: quantized from another {folder.model.name} than the current one; {rebuild}"
        )
    if record and record.sha256:
        # a record whose INT8 model was removed describes nothing that can ship: not stale
        path = folder.root / Path(record.int8_model).name
        if path.is_file() and record.sha256 != sha256_file(path):
            raise StaleArtifact(f"{folder.quantize_record}: describes another INT8 model; {rebuild}")


def _check_benchmark(folder: RunFolder) -> None:
    record = folder.load_benchmark()
    if record is None:
        return
    for name, sha in record.sources.items():
        path = folder.root / name
        if path.is_file() and sha256_file(path) != sha:
            raise StaleArtifact(
                f"{folder.benchmark_record}: timed an older {name}; rebuild it with `edgetl benchmark {folder.root}`"
            )
