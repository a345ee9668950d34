"""A bundle never pairs models that disagree: an FP32 and an INT8 model with other labels or other
preprocessing, given as files or in a run folder, are refused with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl_runtime.modelfile import read_metadata, write_metadata


def _with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of a model whose edgetl metadata differs in `changes` (keys without the edgetl. prefix)."""
    meta = read_metadata(src)
    write_metadata(src, dst, {**meta, **{f"edgetl.{k}": v for k, v in changes.items()}})
    return dst


def _other_preprocess(model: Path) -> str:
    spec = json.loads(read_metadata(model)["edgetl.preprocess"])
    spec["mean"] = [m + 0.1 for m in spec["mean"]]
    return json.dumps(spec)


def _package(*args: str):
    return CliRunner().invoke(main, ["package", *args, "--json"])


@pytest.mark.parametrize("differs", ["labels", "preprocess"])
def test_package_refuses_model_files_that_disagree(tiny_run, tmp_path, differs):
    fp32 = tiny_run / "model.onnx"
    change = {"labels": json.dumps(["a", "b", "c"]), "preprocess": _other_preprocess(fp32)}[differs]
    int8 = _with_metadata(tiny_run / "model.int8.onnx", tmp_path / "other.int8.onnx", **{differs: change})
    out = tmp_path / "bundle.tar.gz"
    outcome = _package(str(fp32), str(int8), "--out", str(out))
    assert outcome.exit_code == 1, outcome.output
    message = json.loads(outcome.stdout.strip().splitlines()[-1])["error"]["message"]
    assert "labels or preprocessing differ" in message and "model.onnx" in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other.int8.onnx"]
    # the same two files, each with its own partner, package fine
    fine = _package(str(fp32), str(tiny_run / "model.int8.onnx"), "--out", str(tmp_path / "ok.tar.gz"))
    assert fine.exit_code == 0, fine.output


def test_package_refuses_a_run_whose_model_has_other_labels_than_its_checkpoint(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    for name in ("model.int8.onnx", "quantize.json", "calibration.json"):
        (run / name).unlink(missing_ok=True)
    relabelled = _with_metadata(run / "model.onnx", tmp_path / "m.onnx", labels=json.dumps(["x", "y", "z"]))
    shutil.move(relabelled, run / "model.onnx")
    out = tmp_path / "b"
    outcome = _package(str(run), "--precision", "fp32", "--out", str(out))
    assert outcome.exit_code == 1, outcome.output
    message = json.loads(outcome.stdout.strip().splitlines()[-1])["error"]["message"]
    assert "exported from another checkpoint (labels differ)" in message and not out.exists()


def test_package_refuses_an_int8_model_quantized_from_another_fp32_model(tiny_run, tmp_path):
    """Same labels, same preprocessing, same tensors: only the INT8 model's record of the FP32 model
    it was made from tells that these two files do not belong together."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(tiny_run / "model.onnx"))
    weight = proto.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + np.float32(0.01), weight.name))
    other = tmp_path / "retrained.onnx"
    onnx.save(proto, str(other))
    out = tmp_path / "bundle.tar.gz"
    outcome = _package(str(other), str(tiny_run / "model.int8.onnx"), "--out", str(out))
    assert outcome.exit_code == 1, outcome.output
    message = json.loads(outcome.stdout.strip().splitlines()[-1])["error"]["message"]
    assert "quantized from another FP32 model" in message and not out.exists()


def test_package_refuses_model_files_of_two_formats(tiny_run, tmp_path):
    ir = tmp_path / "model.int8.xml"
    ir.write_text("<net/>")  # never read: the formats differ by name already
    out = tmp_path / "bundle.tar.gz"
    outcome = _package(str(tiny_run / "model.onnx"), str(ir), "--out", str(out))
    assert outcome.exit_code == 1, outcome.output
    message = json.loads(outcome.stdout.strip().splitlines()[-1])["error"]["message"]
    assert message == f"{ir}: not a .onnx file like model.onnx; give one format" and not out.exists()
