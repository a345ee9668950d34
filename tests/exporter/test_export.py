"""Export stage: ONNX + OpenVINO IR from a tiny run (efficientnet_lite0 at 32 px), metadata round trip,
the parity gate (passing and failing), FP16, a bare pretrained backbone, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from badfiles import write_corrupt_image
from click.testing import CliRunner

from edgetl.backbones.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from edgetl.backbones.registry import create_model, get_backbone
from edgetl.cli import main
from edgetl.errors import GateError
from edgetl.exporter.convert import opset_range
from edgetl.exporter.export import export_onnx
from edgetl.exporter.parity import FP16_RELATIVE_TOLERANCE
from edgetl.runfolder.folder import BEST, LOCK
from edgetl.runfolder.splits import Splits
from edgetl_runtime.backends import load_session
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelfile import read_model_info
from edgetl_runtime.preprocess import list_images, preprocess_batch

BACKBONE = "efficientnet_lite0"


def _labelled(folder: Path, labels: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((str(p), labels.index(p.parent.name)) for p in list_images(folder))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_dir) -> Path:
    """A run folder as `edgetl train` leaves it: checkpoint + splits (pretrained features, seeded head)."""
    run = tmp_path_factory.mktemp("export") / "run"
    run.mkdir()
    labels = tuple(sorted(p.name for p in (digits_dir / "train").iterdir()))
    torch.manual_seed(0)
    model = create_model(BACKBONE, num_classes=len(labels))
    spec = get_backbone(BACKBONE).preprocess.with_size(32)
    save_checkpoint(model, CheckpointInfo(BACKBONE, labels, spec), run / BEST)
    Splits(
        labels,
        _labelled(digits_dir / "train", labels),
        _labelled(digits_dir / "val", labels),
        str(digits_dir),
    ).save(run)
    return run


@pytest.fixture(scope="session")
def exported(tiny_run) -> dict:
    """One CLI export shared by the tests: ONNX + OpenVINO IR at the run's default paths."""
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--format", "openvino", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _val_batch(run: Path) -> np.ndarray:
    model_info = read_model_info(run / "model.onnx")
    return preprocess_batch([p for p, _ in Splits.load(run).val], model_info.preprocess)


def test_cli_export_gates_and_summarises(tiny_run, exported):
    assert exported["onnx"] == str(tiny_run / "model.onnx")
    assert exported["n_images"] == len(Splits.load(tiny_run).val) == 12
    assert exported["max_abs_diff"] <= 1e-4
    assert exported["top1_agreement"] == 1.0
    assert exported["size_bytes"] == (tiny_run / "model.onnx").stat().st_size
    assert [c["runtime"] for c in exported["checks"]] == ["onnxruntime-cpu", "openvino-cpu"]
    assert all(c["passed"] for c in exported["checks"])
    record = json.loads((tiny_run / "export.json").read_text())
    assert {k: record[k] for k in exported} == exported
    # lineage: what the model was made from, and the model itself
    assert record["source_sha256"] == sha256_file(tiny_run / BEST)
    assert record["sha256"] == sha256_file(tiny_run / "model.onnx")
    # one self-contained file: no external data, no temp files left beside it (the run's lock file stays)
    produced = {p.name for p in tiny_run.iterdir()}
    assert produced == {BEST, "splits.json", "model.onnx", "model.xml", "model.bin", "export.json", LOCK}


def test_onnx_metadata_round_trip_and_dynamic_batch(tiny_run, exported):
    path = tiny_run / "model.onnx"
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch

    info = read_model_info(path)
    _, ckpt = load_checkpoint(tiny_run / BEST)
    assert info.labels == ckpt.labels
    assert info.preprocess == ckpt.preprocess
    assert info.backbone == BACKBONE
    assert info.precision == "fp32"
    assert info.source_sha256 == sha256_file(tiny_run / BEST)

    model, _ = load_checkpoint(tiny_run / BEST)
    batch = _val_batch(tiny_run)
    session = load_session(path, "onnxruntime-cpu")
    with torch.inference_mode():
        for n in (1, 5):
            expected = model(torch.from_numpy(batch[:n])).numpy()
            np.testing.assert_allclose(session.run(batch[:n]), expected, atol=1e-4)


def test_openvino_ir_carries_metadata_and_matches(tiny_run, exported):
    xml = tiny_run / "model.xml"
    assert exported["openvino"] == str(xml)
    assert read_model_info(xml) == read_model_info(tiny_run / "model.onnx")
    batch = _val_batch(tiny_run)
    ov_logits = load_session(xml, "openvino-cpu", exact=True).run(batch)
    ort_logits = load_session(tiny_run / "model.onnx", "onnxruntime-cpu").run(batch)
    np.testing.assert_allclose(ov_logits, ort_logits, atol=1e-4)


def test_gate_failure_writes_nothing(tiny_run, exported, tmp_path, monkeypatch):
    """A conversion that changes the numbers (one bias shifted) must be caught and leave no file."""
    import edgetl.exporter.export as ex

    good = onnx.load(tiny_run / "model.onnx")
    bias = next(t for t in good.graph.initializer if t.dims == [3])
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += 0.01
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    monkeypatch.setattr(ex, "to_onnx", lambda *args: good)

    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(GateError, match=r"parity gate failed on onnxruntime-cpu: .*nothing was written"):
        export_onnx(tiny_run, out, formats=("onnx", "openvino"))
    assert list(out.parent.iterdir()) == []


def test_fp16_optimized_export(tiny_run, exported, tmp_path):
    out = tmp_path / "model.fp16.onnx"
    result = export_onnx(tiny_run, out, precision="fp16", optimize=True)
    assert result.precision == "fp16" and result.optimized
    assert read_model_info(out).precision == "fp16"
    proto = onnx.load(out)
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same callers
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}  # portable: standard ops only
    assert result.size_bytes < 0.6 * exported["size_bytes"]
    # the stated rule: 1% of the largest reference |logit|, never tighter than the FP32 tolerance
    assert 1e-4 < result.tolerance <= FP16_RELATIVE_TOLERANCE * 100
    assert result.top1_agreement == 1.0
    assert not (tiny_run / "model.fp16.onnx").exists()
    # independent of export's own parity gate: the FP16 file against PyTorch on the val images
    model, info = load_checkpoint(tiny_run / BEST)
    x = preprocess_batch([p for p, _ in Splits.load(tiny_run).val], info.preprocess)
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(x)).numpy()
    fp16 = load_session(out, "onnxruntime-cpu").run(x)
    assert fp16.dtype == np.float32 and fp16.shape == reference.shape
    diff = np.abs(fp16 - reference).max()
    assert 1e-6 < diff <= 0.01 * np.abs(reference).max(), diff  # rounded to FP16, within 1% of the range
    assert (fp16.argmax(1) == reference.argmax(1)).all()


def test_pretrained_backbone_on_real_photos(tmp_path):
    """The ImageNet head exported offline: 1000 named classes, parity on real photos, a cat is a cat."""
    from PIL import Image
    from skimage import data as skimage_data  # a dev dependency: imported, never skipped

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(skimage_data, name)()).save(photos / f"{name}.png")
    write_corrupt_image(photos / "broken.jpg")

    out = tmp_path / "lite0.onnx"
    result = export_onnx(backbone=BACKBONE, out=out, check_images=photos)
    assert (result.n_images, result.skipped_images) == (3, 1)
    assert result.max_abs_diff < 1e-4 and result.top1_agreement == 1.0
    info = read_model_info(out)
    assert len(info.labels) == 1000 and info.labels[0].startswith("tench")
    assert info.preprocess == get_backbone(BACKBONE).preprocess

    logits = load_session(out, "onnxruntime-cpu").run(
        preprocess_batch([photos / "chelsea.png"], info.preprocess)
    )
    assert "cat" in info.labels[int(logits.argmax())]  # Chelsea is a tabby cat


@pytest.fixture()
def misfit_checkpoint(tmp_path) -> Path:
    """A header claiming 4 classes over weights with a 3-class head."""
    path = tmp_path / "misfit.safetensors"
    spec = get_backbone(BACKBONE).preprocess.with_size(32)
    save_checkpoint(
        create_model(BACKBONE, num_classes=3, weights="none"),
        CheckpointInfo(BACKBONE, ("a", "b", "c", "d"), spec),
        path,
    )
    return path


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{tmp}/no-such-run"], 1, "no such run folder"),
        (["{run}", "--backbone", "resnet18"], 1, "was trained from efficientnet_lite0"),
        (["{tmp}/misfit.safetensors"], 1, "weights do not fit"),
        (["{run}", "--out", "{tmp}/afile/model.onnx"], 1, "afile is a file, not a folder"),
        (["{run}", "--opset", "17"], 2, "Invalid value for '--opset': 17 is not in the range 18<=x"),  # usage
        (["{run}", "--opset", "{over}"], 1, "choose 18 to"),  # newer than onnx or onnxruntime take
        ([], 1, "--backbone NAME"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_run, misfit_checkpoint, tmp_path, args, code, message):
    (tmp_path / "afile").write_text("a file where a folder is expected")
    args = [a.format(run=tiny_run, tmp=tmp_path, over=opset_range()[1] + 1) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.onnx")]
    before = {p.name for p in tiny_run.iterdir()} - {LOCK}  # the lock file is no artifact
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == code, result.output  # 1 handled, 2 usage; 70 would be a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.stdout == ""
    assert not list(tmp_path.rglob("*.onnx"))
    assert {p.name for p in tiny_run.iterdir()} - {LOCK} == before
