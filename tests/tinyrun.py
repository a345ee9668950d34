"""A tiny but complete run folder for the package and runtime tests: checkpoint, splits, FP32 and
INT8 ONNX made by the real export and quantize stages (efficientnet_lite0 at 32 px, 3 digit classes).

The head is fitted to the train split's pretrained features (a linear probe), so the task is learnt
and its logits are far apart: the INT8 model passes the default gate with onnxruntime minmax on its
own merits. An untrained head leaves logits so close that INT8 flips a quarter of the top-1s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgetl.backbones.checkpoint import CheckpointInfo, save_checkpoint
from edgetl.backbones.registry import create_model, get_backbone
from edgetl.exporter.export import export_onnx
from edgetl.quantizer import quantize
from edgetl.runfolder.folder import BEST, dataset_fingerprint
from edgetl.runfolder.splits import Splits
from edgetl_runtime.preprocess import list_images, preprocess_batch

BACKBONE = "efficientnet_lite0"
PROBE_STEPS = 300


def labelled(folder: Path, labels: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((str(p), labels.index(p.parent.name)) for p in list_images(folder))


def fit_head(model, spec, train: tuple[tuple[str, int], ...]) -> None:
    """Full-batch Adam on the head alone over the frozen features (deterministic, under a second)."""
    x = torch.from_numpy(preprocess_batch([p for p, _ in train], spec))
    y = torch.tensor([label for _, label in train])
    with torch.no_grad():
        features = model.eval().forward_features(x)
    torch.manual_seed(0)
    head = model.head
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    head.train()
    for _ in range(PROBE_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features), y).backward()
        optimizer.step()
    model.eval()


def make_run(run: Path, data: Path) -> Path:
    labels = tuple(sorted(p.name for p in (data / "train").iterdir()))
    spec = get_backbone(BACKBONE).preprocess.with_size(32)
    run.mkdir(parents=True)
    splits = Splits(labels, labelled(data / "train", labels), labelled(data / "val", labels), str(data))
    splits = splits.with_fingerprint(dataset_fingerprint(splits))  # the lineage `edgetl train` records
    splits.save(run)
    model = create_model(BACKBONE, num_classes=len(labels))
    fit_head(model, spec, splits.train)
    info = CheckpointInfo(
        BACKBONE,
        labels,
        spec,
        recipe={"epochs": 0, "note": "linear probe on frozen features"},
        data_fingerprint=splits.fingerprint,
    )
    save_checkpoint(model, info, run / BEST)
    export_onnx(run)
    # the default gate, no --allow-drop: the run is only usable if its INT8 model is
    quantize(run, method="minmax", num_calibration=12)
    return run


def copy_exported_as(run: Path, dest: Path, fmt: str) -> Path:
    """A copy of `run` with `edgetl export --format FMT` beside its ONNX model, by the CLI. The re-export
    may write new ONNX bytes; the ONNX INT8 is then quantized again so the copy's lineage holds."""
    import shutil

    from click.testing import CliRunner

    from edgetl.cli import main
    from edgetl_runtime.fileio import sha256_file

    copy = Path(shutil.copytree(run, dest))
    onnx_before = sha256_file(copy / "model.onnx")
    exported = CliRunner().invoke(main, ["export", str(copy), "--format", fmt, "--json"])
    assert exported.exit_code == 0, exported.output
    if sha256_file(copy / "model.onnx") != onnx_before:
        args = [
            "quantize",
            str(copy),
            "--method",
            "minmax",
            "--num-calibration",
            "12",
            "--allow-drop",
            "--json",
        ]
        assert CliRunner().invoke(main, args).exit_code == 0
    return copy
