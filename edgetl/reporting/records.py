"""What a run report reads: the run folder's records, each read once (`RunFiles`), and one page
section (`Section`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import RunFolder
from edgetl.runfolder.records import (
    BenchmarkRecord,
    CheckpointHeader,
    ConfusionRecord,
    QuantizationRecord,
    SummaryRecord,
)
from edgetl.runfolder.splits import Splits

GALLERY_LIMIT = 20
VERSIONED = ("edgetl", "edgetl-runtime", "torch", "timm", "onnx", "onnxruntime", "openvino", "matplotlib")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    body: str  # HTML
    missing: str | None = None  # the command that would produce this section's artifact
    half: bool = False  # shares a row with its neighbour on a wide screen


class RunFiles:
    """The run folder's records, each read once and None when absent."""

    def __init__(self, run: Path, bundle: Path | None = None, gallery_limit: int = GALLERY_LIMIT) -> None:
        self.run, self.bundle_path, self.gallery_limit = run, bundle, gallery_limit
        self.folder = RunFolder(run)

    @cached_property
    def summary(self) -> SummaryRecord | None:
        return self.folder.load_summary()

    @cached_property
    def metrics(self) -> list[dict] | None:
        return self.folder.load_metrics()

    @cached_property
    def confusion(self) -> ConfusionRecord | None:
        return self.folder.load_confusion()

    @cached_property
    def splits(self) -> Splits | None:
        return self.folder.load_splits() if self.folder.splits.is_file() else None

    @cached_property
    def quantize(self) -> QuantizationRecord | None:
        return self.folder.load_quantization()

    @cached_property
    def benchmark(self) -> BenchmarkRecord | None:
        return self.folder.load_benchmark()

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
            header = json.loads(meta.get("edgetl", "{}"))
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
