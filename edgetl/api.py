"""The Python API: one function per CLI verb, each taking the previous step's result or a path.

    import edgetl
    run = edgetl.train("data", "runs/a")
    edgetl.export(run); edgetl.quantize(run)
    bundle = edgetl.package(run, "runs/a/bundle.tar.gz")

A step's result stands for the run folder it wrote into (a model exported or quantized outside a
run stands for its own file), so every verb accepts what the one before it returned. Each verb
imports its stage on first use: `import edgetl` loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edgetl.bench.results import BenchReport
    from edgetl.bundler.package import Bundle
    from edgetl.exporter.describe import DescribeResult
    from edgetl.exporter.export import ExportResult
    from edgetl.quantizer.quantize import QuantResult
    from edgetl.reporting.report import Report
    from edgetl.trainer.session import TrainResult

__all__ = ["Step", "benchmark", "describe", "export", "package", "quantize", "report", "train"]


@runtime_checkable
class Step(Protocol):
    """A pipeline step's result: it names the file or folder it made."""

    @property
    def artifact(self) -> Path: ...


Source = Step | str | os.PathLike


def _run_of(artifact: Path) -> Path | None:
    from edgetl.runfolder.folder import RunFolder

    for folder in (artifact, artifact.parent):
        if folder.is_dir() and RunFolder(folder).holds_run():
            return folder
    return None


def resolve_source(source: Source) -> Path:
    """The run folder a result belongs to, else its own file; a path is taken as given."""
    if isinstance(source, Step):
        return _run_of(source.artifact) or source.artifact
    return Path(source)


def train(data: str | os.PathLike, out: str | os.PathLike, **options) -> TrainResult:
    """Fine-tune a pretrained backbone on `data` into the run folder `out` (see `edgetl train --help`)."""
    from edgetl.trainer.train import train as run_training

    return run_training(data, out, **options)


def export(source: Source | None = None, out: str | os.PathLike | None = None, **options) -> ExportResult:
    """Export a run (or `backbone=NAME`, pretrained) to ONNX behind a parity gate."""
    from edgetl.exporter.export import export_onnx

    return export_onnx(None if source is None else resolve_source(source), out, **options)


def quantize(source: Source, out: str | os.PathLike | None = None, **options) -> QuantResult:
    """INT8 from calibration data behind the paired accuracy gate; a run calibrates on its own splits."""
    from edgetl.quantizer.quantize import quantize as quantize_model

    return quantize_model(resolve_source(source), out, **options)


def benchmark(source: Source | list[Source], **options) -> BenchReport:
    """Latency of a run's models (or of model files) on every available backend."""
    from edgetl.bench.benchmark import benchmark as time_models
    from edgetl.errors import EdgetlError

    paths = [resolve_source(s) for s in (source if isinstance(source, list) else [source])]
    if len(paths) > 1 and any(p.is_dir() for p in paths):
        raise EdgetlError("give either one run folder or model files, not both")
    return time_models(paths[0] if len(paths) == 1 and paths[0].is_dir() else paths, **options)


def package(
    source: Source | list[Source],
    out: str | os.PathLike,
    *,
    precision: str | None = None,
    format: str = "onnx",
    **options,
) -> Bundle:
    """A verified deploy bundle from a run folder, or from model files carrying edgetl metadata.

    `precision` and `format` choose among a run's models; model files ship as they are.
    """
    from edgetl.bundler.package import build_bundle, build_bundle_from_models
    from edgetl.errors import EdgetlError
    from edgetl_runtime.modelfile import FORMATS

    paths = [resolve_source(s) for s in (source if isinstance(source, list) else [source])]
    if len(paths) == 1 and (paths[0].is_dir() or paths[0].suffix not in FORMATS):
        return build_bundle(paths[0], out, precision=precision, format=format, **options)
    if any(p.is_dir() for p in paths):
        raise EdgetlError("give one run folder, or one or two model files (FP32 and/or INT8), not both")
    if precision is not None:
        raise EdgetlError("--precision picks models of a run folder; with model files, give the ones to ship")
    if format != "onnx":
        raise EdgetlError(
            "--format picks models of a run folder; model files are shipped in their own format"
        )
    return build_bundle_from_models(paths, out, **options)


def report(source: Source, out: str | os.PathLike | None = None, **options) -> Report:
    """The run's self-contained HTML report (RUN/report.html unless `out`)."""
    from edgetl.reporting.report import build_report

    return build_report(resolve_source(source), out, **options)


def describe(model: str | os.PathLike, out: str | os.PathLike, **options) -> DescribeResult:
    """Give an ONNX model from elsewhere the labels and preprocessing edgetl needs."""
    from edgetl.exporter.describe import describe_model

    return describe_model(model, out, **options)
