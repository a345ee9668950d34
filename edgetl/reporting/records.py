"""What a run report reads: the run folder's records, each read once (`RunFiles`), and one page
section (`Section`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import BENCHMARK_SCHEMA, QUANTIZE_SCHEMA, read_record

REPORT_HTML = "report.html"
GALLERY_LIMIT = 20
VERSIONED = ("edgetl", "edgetl-runtime", "torch", "timm", "onnx", "onnxruntime", "openvino", "matplotlib")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    body: str  # HTML
    missing: str | None = None  # the command that would produce this section's artifact
    half: bool = False  # shares a row with its neighbour on a wide screen


# The records the page reads, each checked against its shape (metrics.json is a list of epochs).
RECORD_SCHEMAS = {
    "summary.json": {"labels": (list, str), "stages": (list, dict), "recipe": dict},
    "confusion.json": {"labels": (list, str), "matrix": (list, list)},
    "splits.json": {"labels": (list, str), "train": (list, list), "val": (list, list)},
    "quantize.json": QUANTIZE_SCHEMA,
    "benchmark.json": BENCHMARK_SCHEMA,
}


class RunFiles:
    """The run folder's records, each read once and None when absent."""

    def __init__(self, run: Path, bundle: Path | None = None, gallery_limit: int = GALLERY_LIMIT) -> None:
        self.run, self.bundle_path, self.gallery_limit = run, bundle, gallery_limit

    def json(self, name: str):
        path = self.run / name
        if name in RECORD_SCHEMAS:
            return read_record(path, RECORD_SCHEMAS[name])
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EdgetlError(f"{path}: unreadable ({e}); rerun the command that writes it") from None
        if not (isinstance(d, list) and all(isinstance(row, dict) for row in d)):
            raise EdgetlError(
                f"{path}: must be a JSON list of objects (one per epoch); rerun the command that writes it"
            )
        return d

    @cached_property
    def summary(self) -> dict | None:
        return self.json("summary.json")

    @cached_property
    def metrics(self) -> list | None:
        return self.json("metrics.json")

    @cached_property
    def confusion(self) -> dict | None:
        return self.json("confusion.json")

    @cached_property
    def splits(self) -> dict | None:
        return self.json("splits.json")

    @cached_property
    def quantize(self) -> dict | None:
        return self.json("quantize.json")

    @cached_property
    def benchmark(self) -> dict | None:
        return self.json("benchmark.json")

    @cached_property
    def checkpoint_header(self) -> dict | None:
        """The edgetl header of the best checkpoint, read without torch (safetensors' JSON header)."""
        for name in ("best.safetensors", "last.safetensors"):
            path = self.run / name
            if path.is_file():
                try:
                    with path.open("rb") as f:
                        (size,) = struct.unpack("<Q", f.read(8))
                        if size > path.stat().st_size:
                            raise ValueError(f"header of {size} bytes in a {path.stat().st_size}-byte file")
                        header = json.loads(f.read(size))
                    edgetl = json.loads(header["__metadata__"]["edgetl"])
                    if not isinstance(edgetl, dict):
                        raise TypeError("the edgetl header is not a JSON object")
                except (struct.error, ValueError, KeyError, TypeError) as e:
                    problem = f"{type(e).__name__}: {e}" if not isinstance(e, KeyError) else f"no {e} key"
                    raise EdgetlError(
                        f"{path}: not a readable edgetl checkpoint ({problem}); retrain with `edgetl train`"
                    ) from None
                return edgetl
        return None

    @cached_property
    def bundle(self):
        """(path, manifest) of the run's bundle: --bundle, or one inside the run folder."""
        from edgetl_runtime.bundle import open_bundle
        from edgetl_runtime.errors import EdgetlError as RuntimeError_

        candidates = [self.bundle_path] if self.bundle_path else []
        candidates += sorted(self.run.glob("*.tar.gz")) + sorted(
            p.parent for p in self.run.glob("*/manifest.json")
        )
        for path in candidates:
            try:
                with open_bundle(path) as opened:
                    return path, opened.manifest
            except (RuntimeError_, OSError) as e:
                if path == self.bundle_path:
                    raise EdgetlError(f"--bundle {path}: {e}") from None
        return None
