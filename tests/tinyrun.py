"""A tiny but complete run folder for the package and runtime tests: checkpoint, splits, FP32 and
INT8 ONNX made by the real export and quantize stages (efficientnet_lite0 at 32 px, 3 digit classes)."""

from __future__ import annotations

from pathlib import Path

from edgetl.backbones.checkpoint import CheckpointInfo, save_checkpoint
from edgetl.backbones.registry import create_model, get_backbone
from edgetl.exporter.export import export_onnx
from edgetl.quantizer import quantize
from edgetl.runfolder.folder import BEST
from edgetl.runfolder.splits import Splits
from edgetl_runtime.preprocess import list_images

BACKBONE = "efficientnet_lite0"


def labelled(folder: Path, labels: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((str(p), labels.index(p.parent.name)) for p in list_images(folder))


def make_run(run: Path, data: Path) -> Path:
    labels = tuple(sorted(p.name for p in (data / "train").iterdir()))
    spec = get_backbone(BACKBONE).preprocess.with_size(32)
    run.mkdir(parents=True)
    Splits(labels, labelled(data / "train", labels), labelled(data / "val", labels), str(data)).save(run)
    # pretrained features with a fresh head: logits differ clearly between images, so top-1 is stable
    model = create_model(BACKBONE, num_classes=len(labels))
    info = CheckpointInfo(BACKBONE, labels, spec, recipe={"epochs": 0, "note": "untrained head"})
    save_checkpoint(model, info, run / BEST)
    export_onnx(run)
    quantize(run, method="minmax", num_calibration=12, allow_drop=True)
    return run
