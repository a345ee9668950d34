"""The deploy manifest: everything a device needs besides the model bytes, in one JSON file.

Labels, preprocessing, tensor names/shapes, each model file with its precision, intended backends and
sha256, quantization settings, accuracy, benchmark figures and provenance. The file carries a digest of
its own canonical form, so a changed byte anywhere in a bundle (manifest included) is detected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .errors import BundleError
from .inputs import InputSpec, parse_modality, parse_spec
from .modality import Modality
from .modelinfo import Precision

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.txt"
README = "README.md"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a symbolic (dynamic) dimension, e.g. "batch"
    dtype: str  # numpy name: "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model insists on, or None when the batch dimension is dynamic."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle. Model files also say their precision and the backends meant to run them."""

    path: str
    sha256: str
    size: int
    precision: Precision | None = None
    backends: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = {"path": self.path, "sha256": self.sha256, "size": self.size}
        if self.precision is not None:
            d |= {"precision": self.precision.value, "backends": list(self.backends)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FileEntry:
        return cls(
            path=d["path"],
            sha256=d["sha256"],
            size=int(d["size"]),
            precision=Precision(d["precision"]) if "precision" in d else None,
            backends=tuple(d.get("backends", ())),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    labels: tuple[str, ...]
    preprocess: InputSpec
    input: TensorSpec
    output: TensorSpec
    models: tuple[FileEntry, ...]  # preferred first: "auto" takes the first one the backend can run
    files: tuple[FileEntry, ...]  # the other files (labels.txt, README.md)
    created: str  # ISO 8601 UTC, taken from the inputs so rebuilding gives the same bytes
    quantization: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    benchmark: dict | None = None
    provenance: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    modality: Modality = Modality.IMAGE  # absent in bundles made before text: images

    @property
    def all_files(self) -> tuple[FileEntry, ...]:
        return self.models + self.files

    def precisions(self) -> tuple[str, ...]:
        return tuple(m.precision.value for m in self.models)

    def select_model(self, precision: str = "auto", backend: str | None = None) -> FileEntry:
        """The model file for a precision; "auto" takes the first one meant for `backend`."""
        if precision == "auto":
            for model in self.models:
                if backend is None or backend in model.backends:
                    return model
            return self.models[0]
        for model in self.models:
            if model.precision.value == precision:
                return model
        raise BundleError(
            f"--precision {precision}: this bundle has no {precision} model "
            f"(it has {', '.join(self.precisions())}); choose one of those or 'auto'"
        )

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "created": self.created,
            "labels": list(self.labels),
            "preprocess": self.preprocess.to_dict(),
            "modality": self.modality.value,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "models": [m.to_dict() for m in self.models],
            "files": [f.to_dict() for f in self.files],
            "quantization": self.quantization,
            "metrics": self.metrics,
            "benchmark": self.benchmark,
            "provenance": self.provenance,
        }

    def to_json(self) -> str:
        body = self.to_dict()
        return _canonical({**body, "digest": _digest(body)})

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{MANIFEST}: schema version {version!r} is not {SCHEMA_VERSION}; "
                "install the edgetl-runtime release that matches the edgetl that built the bundle"
            )
        try:
            modality = parse_modality(d.get("modality"), MANIFEST)
            return cls(
                name=d["name"],
                labels=tuple(d["labels"]),
                modality=modality,
                preprocess=parse_spec(modality, d["preprocess"]),
                input=TensorSpec.from_dict(d["input"]),
                output=TensorSpec.from_dict(d["output"]),
                models=tuple(FileEntry.from_dict(m) for m in d["models"]),
                files=tuple(FileEntry.from_dict(f) for f in d["files"]),
                created=d["created"],
                quantization=d.get("quantization") or {},
                metrics=d.get("metrics") or {},
                benchmark=d.get("benchmark"),
                provenance=d.get("provenance") or {},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(
                f"{MANIFEST}: malformed ({type(e).__name__}: {e}); rebuild the bundle"
            ) from None

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse and check the manifest is exactly as written: any edit, even whitespace, is refused."""
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(
                f"{MANIFEST}: not valid JSON ({e}); the bundle is damaged, rebuild it"
            ) from None
        if not isinstance(d, dict) or "digest" not in d:
            raise BundleError(f"{MANIFEST}: no digest; not a manifest written by `edgetl package`")
        body = {k: v for k, v in d.items() if k != "digest"}
        if d["digest"] != _digest(body) or _canonical(d) != text:
            raise BundleError(
                f"{MANIFEST}: modified after packaging (digest mismatch); rebuild with `edgetl package`"
            )
        return cls.from_dict(body)


def _canonical(d: dict) -> str:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _digest(body: dict) -> str:
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()
