"""Calibration sets for INT8 quantization: a seeded, class-stratified sample of images and its manifest.

The manifest records exactly which files (with their sha256) calibrated which model at which
preprocessing, so `edgetl quantize --calibration MANIFEST.json` repeats the same quantization, and a
changed or missing file is an error instead of a silently different model.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgetl.console import warn
from edgetl.data.images import preprocess_readable
from edgetl.errors import DataError
from edgetl.options import DEFAULT_NUM_CALIBRATION
from edgetl_runtime.fileio import sha256_file, write_text_atomic
from edgetl_runtime.preprocess import PreprocessSpec, list_images, preprocess_image

# Without labelled gate images the given ones are cross-fitted: split in this many folds, a model
# calibrated on all folds but one is judged on that one, and the model shipped is refit on them all.
CROSS_FIT_FOLDS = 2
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class CalibrationManifest:
    """Which images calibrated a model; enough to repeat the quantization exactly."""

    root: str  # absolute folder the file paths are relative to
    files: tuple[tuple[str, str, int], ...]  # (relative path, sha256, class index)
    classes: tuple[str, ...]
    seed: int
    requested: int
    preprocess: PreprocessSpec
    model_sha256: str
    skipped: int = 0  # unreadable files met while sampling, left out
    method: str = ""  # the calibration method the quantization finally used
    settings: dict = field(default_factory=dict)  # the rest of that quantization's settings
    # images held out of the calibration sample to gate on (manifests before cross-fitting)
    holdout: tuple[tuple[str, str, int], ...] = ()
    folds: tuple[int, ...] = ()  # each file's cross-fit fold; empty when a labelled set gated

    def with_(self, **changes) -> CalibrationManifest:
        return replace(self, **changes)

    def paths(self) -> list[Path]:
        return [Path(self.root) / rel for rel, _, _ in self.files]

    def holdout_paths(self) -> list[Path]:
        return [Path(self.root) / rel for rel, _, _ in self.holdout]

    def to_dict(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "root": self.root,
            "classes": list(self.classes),
            "seed": self.seed,
            "requested": self.requested,
            "skipped": self.skipped,
            "preprocess": self.preprocess.to_dict(),
            "model_sha256": self.model_sha256,
            "method": self.method,
            "settings": self.settings,
            "files": [{"path": p, "sha256": h, "label": i} for p, h, i in self.files],
            "holdout": [{"path": p, "sha256": h, "label": i} for p, h, i in self.holdout],
            "folds": list(self.folds),
        }

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationManifest:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                root=d["root"],
                files=tuple((f["path"], f["sha256"], int(f["label"])) for f in d["files"]),
                classes=tuple(d["classes"]),
                seed=int(d["seed"]),
                requested=int(d["requested"]),
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                model_sha256=d["model_sha256"],
                skipped=int(d.get("skipped", 0)),
                method=d.get("method", ""),
                settings=d.get("settings", {}),
                holdout=tuple((f["path"], f["sha256"], int(f["label"])) for f in d.get("holdout", [])),
                folds=tuple(int(k) for k in d.get("folds", [])),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a calibration manifest ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images and the manifest that names them."""

    inputs: np.ndarray  # (N, 3, H, W) float32, in manifest order
    manifest: CalibrationManifest
    holdout: np.ndarray | None = None  # the held-out gate images, in manifest order

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def folds(self) -> np.ndarray | None:
        """Each image's cross-fit fold, None when the images are not cross-fitted."""
        return np.asarray(self.manifest.folds) if self.manifest.folds else None


def is_manifest(source: str | Path) -> bool:
    return Path(source).suffix.lower() == ".json"


def list_labelled_images(folder: str | Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """Images under `folder` with class indices: ImageFolder subfolders are classes, else one class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such calibration folder; pass a folder of images or a manifest .json")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: no images found (looked for jpg/png/... files, recursively)")
    classes = sorted({p.relative_to(folder).parts[0] for p in images if len(p.relative_to(folder).parts) > 1})
    if not classes or any(len(p.relative_to(folder).parts) == 1 for p in images):
        return [(p, 0) for p in images], ("",)
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[p.relative_to(folder).parts[0]]) for p in images], tuple(classes)


def _stratified_order(items: Sequence[tuple[Path, int]], seed: int) -> list[tuple[Path, int]]:
    """All items, classes interleaved round-robin, each class shuffled by `seed`.

    Taking a prefix of this order gives a class-balanced sample; a corrupt file is replaced by the
    next candidate without changing which classes are represented.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for item in sorted(items, key=lambda x: (x[1], str(x[0]))):
        by_class.setdefault(item[1], []).append(item)
    queues = []
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        queues.append(group)
    order = []
    for rank in range(max(len(q) for q in queues)):
        order.extend(q[rank] for q in queues if rank < len(q))
    return order


def select_calibration(
    items: Sequence[tuple[str | Path, int]],
    classes: Sequence[str],
    spec: PreprocessSpec,
    *,
    model_sha256: str,
    num: int = DEFAULT_NUM_CALIBRATION,
    seed: int = 0,
    source: str = "calibration images",
    cross_fit: bool = False,
) -> CalibrationSet:
    """Sample `num` images class-stratified, preprocess them, skip and count unreadable ones.

    cross_fit: the sample is also split into CROSS_FIT_FOLDS folds (see `assign_folds`) for a gate
    that judges each image with a model calibrated without it.
    """
    if num <= 0:
        raise DataError(f"--num-calibration must be positive, got {num}")
    items = [(Path(p).resolve(), int(i)) for p, i in items]
    if not items:
        raise DataError(f"{source}: no images to calibrate with")
    ordered = _stratified_order(items, seed)
    arrays, kept, skipped = preprocess_readable([p for p, _ in ordered], spec, "calibration", limit=num)
    chosen = [ordered[i] for i in kept]
    if not chosen:
        raise DataError(f"{source}: none of the {len(items)} images is readable ({skipped} skipped)")
    folds: tuple[int, ...] = ()
    if cross_fit:
        if len(chosen) < 2 * CROSS_FIT_FOLDS:
            raise DataError(
                f"{source}: {len(chosen)} readable images are too few to cross-fit the gate on "
                f"({2 * CROSS_FIT_FOLDS} at least); pass more, or labelled gate images with --eval"
            )
        folds = assign_folds([label for _, label in chosen], CROSS_FIT_FOLDS)
        warn(
            f"{source}: no labelled gate images; the {len(chosen)} images are cross-fitted in "
            f"{CROSS_FIT_FOLDS} folds (seed {seed}): each is judged by a model calibrated without it, "
            "and the model written is calibrated on all of them"
        )
    if len(chosen) < num:
        warn(f"{source}: only {len(chosen)} readable images, fewer than the {num} requested; using them all")
    root = Path(os.path.commonpath([str(p.parent) for p, _ in chosen]))
    manifest = CalibrationManifest(
        root=str(root),
        files=tuple((p.relative_to(root).as_posix(), sha256_file(p), label) for p, label in chosen),
        classes=tuple(classes),
        seed=seed,
        requested=num,
        preprocess=spec,
        model_sha256=model_sha256,
        skipped=skipped,
        folds=folds,
    )
    return CalibrationSet(np.stack(arrays), manifest)


def assign_folds(labels: Sequence[int], k: int) -> tuple[int, ...]:
    """Each image's fold, stratified: the images grouped by class (each class in its given, seeded
    order) are dealt to the folds in turn, so each class is split across the folds to one image and
    the folds are equal in size to one image."""
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    folds = [0] * len(labels)
    for position, i in enumerate(order):
        folds[i] = position % k
    return tuple(folds)


def load_calibration(manifest_path: str | Path, spec: PreprocessSpec, model_sha256: str) -> CalibrationSet:
    """Re-read the images a manifest names, refusing anything that would not repeat it exactly."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: no such calibration manifest")
    manifest = CalibrationManifest.load(manifest_path)
    if manifest.preprocess != spec:
        raise DataError(
            f"{manifest_path}: made for preprocessing {manifest.preprocess.to_json()}, but the model "
            f"wants {spec.to_json()}; calibrate from an image folder instead"
        )
    if manifest.model_sha256 != model_sha256:
        raise DataError(
            f"{manifest_path}: made for another model (sha256 {manifest.model_sha256[:12]}, this one is "
            f"{model_sha256[:12]}); calibrate from an image folder instead"
        )

    def read(paths: list[Path], files: tuple, what: str) -> list[np.ndarray]:
        arrays = []
        for path, (rel, digest, _) in zip(paths, files, strict=True):
            if not path.is_file():
                raise DataError(f"{manifest_path}: {what} image {path} is missing")
            if sha256_file(path) != digest:
                raise DataError(f"{manifest_path}: {what} image {rel} changed since the manifest was written")
            arrays.append(preprocess_image(path, spec))
        return arrays

    arrays = read(manifest.paths(), manifest.files, "calibration")
    held = read(manifest.holdout_paths(), manifest.holdout, "held-out gate")
    return CalibrationSet(np.stack(arrays), manifest, np.stack(held) if held else None)
