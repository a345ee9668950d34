"""`edgetl export --format litert`: the .tflite beside the ONNX file, gated against the same
reference, its metadata inside; a model the converter cannot make, or one that fails the gate,
leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cliprobe import assert_one_line, invoke

from edgetl.errors import GateError
from edgetl.exporter import litert
from edgetl.exporter.export import export_onnx
from edgetl_runtime.modelfile import read_model_info


def test_export_writes_a_gated_tflite_that_describes_itself(litert_run):
    record = json.loads((litert_run / "export.json").read_text())
    assert record["litert"] == str(litert_run / "model.tflite")
    checks = {c["runtime"]: c for c in record["checks"]}
    assert set(checks) == {"onnxruntime-cpu", "litert-cpu"}
    parity = checks["litert-cpu"]
    assert parity["passed"] and parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
    assert parity["top1_agreement"] == 1.0 and parity["n_images"] == 12
    onnx_info, tflite_info = (
        read_model_info(litert_run / "model.onnx"),
        read_model_info(litert_run / "model.tflite"),
    )
    # the same model in another layout: only the preprocessing's layout differs
    assert tflite_info.preprocess.layout == "NHWC" and onnx_info.preprocess.layout == "NCHW"
    assert tflite_info.with_(preprocess=onnx_info.preprocess) == onnx_info


def test_an_export_without_litert_keeps_its_summary_keys(tiny_run, tmp_path):
    result = export_onnx(tiny_run / "best.safetensors", tmp_path / "m.onnx", max_images=4)
    assert "litert" not in result.to_dict()


def test_a_tflite_failing_the_gate_leaves_nothing_written(litert_run, tmp_path, monkeypatch):
    # a "conversion" that gives another model (the INT8 one): its logits are not the FP32 model's
    monkeypatch.setattr(
        litert,
        "onnx_to_tflite",
        lambda src, out: Path(shutil.copyfile(litert_run / "model.int8.tflite", out)),
    )
    out = tmp_path / "m.onnx"
    with pytest.raises(GateError, match="litert-cpu"):
        export_onnx(litert_run / "best.safetensors", out, formats=("onnx", "litert"), max_images=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_refused_conversion_is_one_line_and_writes_nothing(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(litert.shutil, "which", lambda name: None)
    out = tmp_path / "m.onnx"
    outcome = invoke(
        "edgetl",
        [
            "export",
            str(tiny_run / "best.safetensors"),
            "--out",
            str(out),
            "--format",
            "litert",
            "--max-check-images",
            "4",
        ],
    )
    assert_one_line(outcome, 1, "pip install uv")
    assert not out.exists() and not out.with_suffix(".tflite").exists()


def test_no_python_for_the_converter_says_what_to_install(monkeypatch):
    monkeypatch.setattr(litert, "_candidates", lambda: [])
    monkeypatch.setattr(litert.shutil, "which", lambda name: "/usr/bin/uv")
    with pytest.raises(litert.EdgetlError, match=r"needs Python >= 3\.12.*EDGETL_LITERT_PYTHON"):
        litert.find_converter()


def test_a_text_run_is_refused_litert(text_run):
    outcome = invoke("edgetl", ["export", str(text_run), "--format", "litert", "--json"])
    assert outcome.code == 1
    assert "litert" in outcome.error["message"]
