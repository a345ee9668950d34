"""What a run report reads: the run folder's records, each read once (`RunFiles`), and one page
section (`Section`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import RunFolder
from edgetl.runfolder.records import CheckpointHeader, CrossFitRecord, EnvironmentRecord, ProvenanceRecord
from edgetl.runfolder.splits import Splits

if TYPE_CHECKING:
    from edgetl.quantizer.calibration import CalibrationManifest
    from edgetl_runtime.inputs import InputSpec

GALLERY_LIMIT = 20
VERSIONED = ("edgetl", "edgetl-runtime", "torch", "timm", "onnx", "onnxruntime", "openvino", "matplotlib")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    body: str  # the rendered template (reporting.html.render)
    missing: str | None = None  # the command that would produce this section's artifact
    half: bool = False  # shares a row with its neighbour on a wide screen


def _loaded(load):
    """A RunFiles attribute: the record `load(folder)` returns, read on first use only."""
    return cached_property(lambda files: load(files.folder))


class RunFiles:
    """The run folder's records, each read once and None when absent."""

    def __init__(self, run: Path, bundle: Path | None = None, gallery_limit: int = GALLERY_LIMIT) -> None:
        self.run, self.bundle_path, self.gallery_limit = run, bundle, gallery_limit
        self.folder = RunFolder(run)

    # each record read once, through its dataclass, and None when absent
    summary = _loaded(RunFolder.load_summary)
    metrics = _loaded(RunFolder.load_metrics)
    confusion = _loaded(RunFolder.load_confusion)
    quantize = _loaded(RunFolder.load_quantization)
    benchmark = _loaded(RunFolder.load_benchmark)

    @cached_property
    def splits(self) -> Splits | None:
        return self.folder.load_splits() if self.folder.splits.is_file() else None

    @cached_property
    def bench_environment(self) -> EnvironmentRecord:
        environment = self.benchmark.environment if self.benchmark else {}
        return EnvironmentRecord.from_dict(environment, source=f"{self.folder.benchmark_record} environment")

    @cached_property
    def cross_fit(self) -> CrossFitRecord | None:
        gate = self.quantize.verdict() if self.quantize else None
        if gate is None or not gate.cross_fit:
            return None
        return CrossFitRecord.from_dict(
            gate.cross_fit, source=f"{self.folder.quantize_record} gate.cross_fit"
        )

    @cached_property
    def calibration(self) -> CalibrationManifest | None:
        """The calibration manifest quantize.json names, None when there is none (or it is gone)."""
        from edgetl.quantizer.calibration import CalibrationManifest

        path = Path(self.quantize.calibration_manifest) if self.quantize else None
        return CalibrationManifest.load(path) if path and path.is_file() else None

    @cached_property
    def checkpoint_header(self) -> CheckpointHeader | None:
        """The edgetl header of the run's checkpoint (best, else last), read without loading weights."""
        from safetensors import SafetensorError, safe_open

        path = self.folder.checkpoint()
        if path is None:
            return None
        try:
            with safe_open(str(path), "numpy") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise EdgetlError(f"{path}: not a readable checkpoint ({e})") from None
        try:
            header = json.loads(meta["edgetl"]) if "edgetl" in meta else {}
        except ValueError as e:
            raise EdgetlError(f"{path}: unreadable edgetl header ({e}); retrain the run") from None
        return CheckpointHeader.from_dict(header, source=f"{path} (edgetl header)")

    @cached_property
    def bundle(self):
        """(path, manifest) of the run's bundle: --bundle, or one inside the run folder."""
        from edgetl_runtime.bundle import open_bundle

        candidates = [self.bundle_path] if self.bundle_path else []
        candidates += sorted(self.run.glob("*.tar.gz")) + sorted(
            p.parent for p in self.run.glob("*/manifest.json")
        )
        for path in candidates:
            try:
                with open_bundle(path) as opened:
                    return path, opened.manifest
            except (EdgetlError, OSError) as e:
                if path == self.bundle_path:
                    raise EdgetlError(f"--bundle {path}: {e}") from None
        return None

    @cached_property
    def provenance(self) -> ProvenanceRecord:
        """What the bundle's manifest records of its making (empty without a bundle)."""
        found = self.bundle
        source = f"{found[0]}: manifest provenance" if found else "provenance"
        return ProvenanceRecord.from_dict(found[1].provenance if found else {}, source=source)

    @cached_property
    def input_spec(self) -> InputSpec | None:
        """The checkpoint header's preprocessing, typed by the runtime (None without a header)."""
        from edgetl_runtime.inputs import parse_modality, parse_spec

        header = self.checkpoint_header
        if header is None or not header.preprocess:
            return None
        source = f"{self.folder.checkpoint()} (edgetl header)"
        try:
            return parse_spec(parse_modality(header.modality, source), header.preprocess)
        except (ValueError, TypeError, EdgetlError) as e:
            raise EdgetlError(f"{source}: key 'preprocess': {e}; retrain the run") from None
