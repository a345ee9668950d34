"""What quantize works from and writes: the FP32 model and calibration images of a run or of files,
and the INT8 model written atomically with the FP32 metadata, its settings and its lineage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import DataError, EdgetlError
from edgetl.quantizer.calibration import (
    CalibrationSet,
    is_manifest,
    list_labelled_images,
    load_calibration,
    select_calibration,
)
from edgetl.quantizer.evaluation import map_eval_classes
from edgetl.runfolder.folder import CALIBRATION_JSON, RunFolder
from edgetl.runfolder.splits import SPLITS
from edgetl_runtime.modelfile import model_format, write_metadata
from edgetl_runtime.modelinfo import ModelInfo, Precision
from edgetl_runtime.preprocess import PreprocessSpec


def _check_out(model: Path, out: Path) -> Path:
    if out.resolve() == model.resolve():
        raise EdgetlError(f"--out {out}: that is the FP32 input model; write the INT8 model to another file")
    if out.suffix.lower() == ".json" or out.name in (SPLITS, CALIBRATION_JSON):
        raise EdgetlError(f"--out {out}: not a model file name; use e.g. model.int8.onnx")
    return out


def calibration_labels(calib: CalibrationSet, labels: Sequence[str]) -> np.ndarray | None:
    """The calibration images' classes as the model's class indices, when their folders name them."""
    classes = calib.manifest.classes
    if classes == ("",) or not classes:
        return None
    try:
        mapped = map_eval_classes(classes, labels)
    except DataError:
        return None
    return np.asarray([mapped[label] for _, _, label in calib.manifest.files])


@dataclass(frozen=True)
class Inputs:
    model: Path
    out: Path
    calibration: str | Path | None
    eval_source: str | Path | Sequence | None
    run: Path | None
    calib_items: tuple | None = None
    calib_classes: tuple = ()
    labels: tuple | None = None


def resolve_inputs(model, out, calibration, eval_dir, suffix: str, *, reads: str = ".onnx") -> Inputs:
    model = Path(model)
    if not model.is_dir():
        if out is None:
            raise EdgetlError(
                "--out is required when quantizing a model file (only a run folder has a default)"
            )
        if calibration is None:
            raise EdgetlError("--calibration DIR|MANIFEST.json is required when quantizing a model file")
        return Inputs(model, _check_out(model, Path(out)), calibration, eval_dir, None)
    run, folder = model, RunFolder(model)
    fp32 = folder.model_file(Precision.FP32, reads)
    if not fp32.is_file():
        raise EdgetlError(
            f"{run}: no {fp32.name} in this run folder; run `{model_format(fp32).rebuild[Precision.FP32].format(run=run)}` first"
        )
    splits = folder.load_splits()
    out = _check_out(fp32, Path(out) if out is not None else folder.model_file(Precision.INT8, suffix))
    calib_items = None
    if calibration is None:
        if not splits.train:
            raise DataError(f"{folder.splits}: no training images to calibrate with; pass --calibration DIR")
        calib_items = splits.train
    eval_source = eval_dir if eval_dir is not None else (splits.val or None)
    return Inputs(fp32, out, calibration, eval_source, run, calib_items, splits.labels, splits.labels)


def default_manifest_path(inputs: Inputs) -> Path:
    if inputs.run is not None:
        return RunFolder(inputs.run).calibration
    return inputs.out.parent / "calibration" / f"{inputs.out.stem}.json"


def get_calibration(
    inputs: Inputs, spec: PreprocessSpec, model_sha: str, num: int, seed: int, cross_fit: bool
) -> CalibrationSet:
    """The calibration sample; with `cross_fit`, split in folds for a gate on the same images."""
    if inputs.calib_items is not None:
        return select_calibration(
            inputs.calib_items,
            inputs.calib_classes,
            spec,
            model_sha256=model_sha,
            num=num,
            seed=seed,
            source=f"{inputs.run} training split",
            cross_fit=cross_fit,
        )
    if is_manifest(inputs.calibration):
        return load_calibration(inputs.calibration, spec, model_sha)
    items, classes = list_labelled_images(inputs.calibration)
    return select_calibration(
        items,
        classes,
        spec,
        model_sha256=model_sha,
        num=num,
        seed=seed,
        source=str(inputs.calibration),
        cross_fit=cross_fit,
    )


def write_model(candidate: Path, out: Path, info: ModelInfo, settings: dict, method: str) -> None:
    """Copy the chosen candidate to `out` atomically, carrying the FP32 metadata plus the settings."""
    meta = info.with_(precision=Precision.INT8, quantization={**settings, "method": method}).to_metadata()
    write_metadata(candidate, out, meta)
