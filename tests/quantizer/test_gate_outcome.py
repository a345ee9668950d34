"""What `edgetl quantize` ships and says after the gate: --max-drop deciding the verdict, and the
rung reported being the rung whose model was written. On a copy of the shared tiny run; the gate
sees crafted INT8 predictions or stand-in rungs, so nothing here depends on how well INT8 does."""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.quantizer import gate as gate_module
from edgetl.quantizer import ladder as ladder_module
from edgetl.quantizer import quantize
from edgetl.quantizer.calibration import CalibrationManifest
from edgetl.runfolder.splits import Splits
from edgetl_runtime.modelfile import read_model_info
from edgetl_runtime.preprocess import preprocess_batch

LOST = 8  # of the 12 val images: the drop's interval starts at +17.5 points


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def _first_rung_only(monkeypatch) -> None:
    module = importlib.import_module("edgetl.quantizer.quantize")  # the module, not the function
    backend = module.QuantBackend.ONNXRUNTIME
    monkeypatch.setitem(
        module.QUANTIZERS, backend, replace(module.QUANTIZERS[backend], ladder=("calibration",))
    )


def _lose_images(monkeypatch, run: Path, lost: int) -> None:
    """Every INT8 candidate answers like FP32 except on `lost` images FP32 gets right, where it
    answers another class: exactly `lost` lost, none gained."""
    fp32_model = run / "model.onnx"
    spec = read_model_info(fp32_model).preprocess
    splits = Splits.load(run)
    images = preprocess_batch([p for p, _ in splits.val], spec)
    label_of = {x.tobytes(): y for x, (_, y) in zip(images, splits.val, strict=True)}
    real = gate_module.run_model

    def run_model(path, inputs, *args):
        logits = real(fp32_model, inputs)
        if Path(path) == fp32_model:
            return logits
        labels = np.array([label_of[x.tobytes()] for x in inputs])
        right = np.flatnonzero(logits.argmax(1) == labels)
        assert len(right) >= lost, (
            "the tiny run's FP32 model gets fewer val images right than this test needs"
        )
        for i in right[:lost]:
            logits[i] = np.roll(logits[i], 1)  # its top-1 moves to another class
        return logits

    monkeypatch.setattr(gate_module, "run_model", run_model)


def _cli(run: Path, out: Path, *options: str):
    args = ["quantize", str(run), "--out", str(out), "--method", "minmax", "--min-agreement", "0", "--json"]
    return CliRunner().invoke(main, [*args, *options])


def test_max_drop_given_on_the_command_line_decides_the_verdict(run, tmp_path, monkeypatch):
    _first_rung_only(monkeypatch)
    _lose_images(monkeypatch, run, LOST)
    loose = _cli(run, tmp_path / "loose.onnx", "--max-drop", "20")
    assert loose.exit_code == 0, loose.output
    gate = json.loads(loose.stdout)["gate"]
    assert (gate["fp32_only"], gate["int8_only"], gate["images"]) == (LOST, 0, 12)
    assert gate["max_drop"] == 20 and gate["verdict"] == "warn" and (tmp_path / "loose.onnx").is_file()
    assert 10 < gate["drop_ci95"][0] < 20  # the bound below decides, not the images
    strict = _cli(run, tmp_path / "strict.onnx", "--max-drop", "10")
    assert strict.exit_code == 1, strict.output
    message = json.loads(strict.stdout.strip().splitlines()[-1])["error"]["message"]
    assert "the gate refuses INT8" in message and "lies above --max-drop 10" in message
    assert not (tmp_path / "strict.onnx").exists()


def test_the_reported_rung_is_the_rung_whose_model_was_written(run, tmp_path, monkeypatch):
    """The calibration rung yields only a refused candidate (the FP32 model itself: too large), the
    next rung a passing INT8 one; the result, the manifest, the run's record and the written model
    must all name that next rung, and the file written must be its INT8 model."""

    def refused(ctx):
        ctx.fit(
            "calibration", "minmax", (), {"made": "fp32 copy"}, lambda part, out: shutil.copy(ctx.model, out)
        )

    def passing(ctx):
        ladder_module._ort_candidate(ctx, ladder_module.ort.Method.MINMAX, (), "nncf-ptq")

    always = ladder_module.RUNGS["calibration"].applies
    monkeypatch.setitem(
        ladder_module.RUNGS, "calibration", ladder_module.Rung("calibration", refused, always)
    )
    monkeypatch.setitem(
        ladder_module.RUNGS, "float-nodes", ladder_module.Rung("float-nodes", refused, lambda ctx: "not here")
    )
    monkeypatch.setitem(ladder_module.RUNGS, "nncf-ptq", ladder_module.Rung("nncf-ptq", passing, always))
    out = tmp_path / "x.onnx"
    result = quantize(run, out, method="minmax", max_drop=100, min_agreement=0)
    assert [(a.rung, a.verdict) for a in result.attempts] == [("calibration", "fail"), ("nncf-ptq", "pass")]
    assert result.passed and result.rung == "nncf-ptq" and result.settings["rung"] == "nncf-ptq"
    assert result.size_ratio < 0.3 and result.size_ratio == result.attempts[1].size_ratio
    assert read_model_info(out).quantization["rung"] == "nncf-ptq"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    assert json.loads((run / "quantize.json").read_text())["rung"] == "nncf-ptq"
    assert CalibrationManifest.load(result.calibration_manifest).settings["rung"] == "nncf-ptq"
