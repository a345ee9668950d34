"""The FP32-ships rule of text INT8: with `--method auto`, when no INT8 candidate the gate lets
through is at least 20% faster than FP32, no INT8 model is written, quantize.json says why, and
package, lineage, report and the demo carry on with FP32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinytext import fixed_latency

from edgetl.cli import main


@pytest.fixture(scope="module")
def shipped_fp32(text_run, tmp_path_factory) -> tuple[Path, object]:
    """A copy of the tiny text run (model.int8.onnx included) after `edgetl quantize RUN --json` with
    every INT8 candidate timed at 0.95x FP32; returns the run and the CLI's result."""
    from edgetl.quantizer import text as text_module

    run = Path(shutil.copytree(text_run, tmp_path_factory.mktemp("fp32") / "run"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(text_module, "latencies_ms", fixed_latency(run, 0.95))
        result = CliRunner().invoke(main, ["quantize", str(run), "--json"])
    return run, result


def test_quantize_json_prints_one_object_saying_fp32_ships_and_why(shipped_fp32):
    from edgetl.quantizer.text import _methods

    _, result = shipped_fp32
    assert result.exit_code == 0, result.output  # a decision, not an error
    summary = json.loads(result.stdout)  # exactly one JSON object: anything more is "Extra data"
    assert summary["shipped"] == "fp32" and summary["int8_model"] == "" and summary["int8_accuracy"] is None
    assert [a["method"] for a in summary["attempts"]] == list(_methods())
    for method in _methods():
        assert f"{method} 0.95x" in summary["reason"]
    assert "0.8x FP32's latency or less" in summary["reason"] and "10.00 ms" in summary["reason"]
    assert "FP32 ships, no INT8 model written" in result.stderr


def test_the_record_says_fp32_shipped_and_the_earlier_int8_model_is_gone(shipped_fp32):
    from edgetl.runfolder.folder import RunFolder
    from edgetl_runtime.modelinfo import Precision

    run, result = shipped_fp32
    assert not (run / "model.int8.onnx").exists()  # the fixture's INT8 model is not what ships now
    record = RunFolder(run).load_quantization()
    assert record.shipped is Precision.FP32 and record.reason == json.loads(result.stdout)["reason"]
    assert record.int8_model == "" and record.sha256 == "" and record.gate is None
    assert record.int8_accuracy is None and record.agreement is None and record.fp32_accuracy is not None
    assert all(a.latency_ms == 9.5 and a.verdict != "fail" for a in record.attempts)


def test_a_run_that_shipped_fp32_is_not_stale_and_packages_fp32(shipped_fp32, tmp_path):
    import edgetl
    from edgetl.runfolder.folder import RunFolder, Step

    run, _ = shipped_fp32
    RunFolder(run).check_for(Step.PACKAGE)  # no StaleArtifact
    bundle = edgetl.package(run, tmp_path / "bundle.tar.gz")
    manifest = bundle.manifest
    assert [m.precision.value for m in manifest.models] == ["fp32"]
    assert manifest.metrics["shipped"] == "fp32" and "0.95x" in manifest.metrics["reason"]
    assert "int8_accuracy" not in manifest.metrics and "agreement" not in manifest.metrics
    refused = CliRunner().invoke(
        main, ["package", str(run), "--out", str(tmp_path / "int8.tar.gz"), "--precision", "int8"]
    )
    assert refused.exit_code != 0 and not (tmp_path / "int8.tar.gz").exists()
    message = refused.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "--precision int8: `edgetl quantize" in message and "shipped FP32, no INT8 model" in message
    assert "dynamic 0.95x" in message  # and why


def test_the_report_shows_fp32_shipped_instead_of_int8_figures(shipped_fp32, tmp_path):
    from edgetl.reporting.report import build_report

    run, result = shipped_fp32
    html = build_report(run, tmp_path / "report.html").path.read_text()
    reason = json.loads(result.stdout)["reason"].replace("'", "&#39;")
    assert f"FP32 shipped: {reason}" in html and "INT8 accuracy" not in html
    assert "none written" in html and "not applicable" not in html


def test_the_text_demo_runs_to_the_end_when_quantize_ships_fp32(text_run, tmp_path, monkeypatch, capsys):
    """The demo's quantize, benchmark, package (with held-out predictions) and report steps on the
    tiny run, its training and export taken as done."""
    from edgetl import demo as demo_module
    from edgetl.cli.demo import print_demo
    from edgetl.quantizer import text as text_module
    from edgetl.runfolder.folder import RunFolder
    from edgetl.runfolder.splits import Splits

    run = Path(shutil.copytree(text_run, tmp_path / "out" / "run"))
    monkeypatch.setattr(text_module, "latencies_ms", fixed_latency(run, 0.95))
    monkeypatch.setattr(text_module, "_methods", lambda: {"dynamic": text_module._dynamic})
    splits = Splits.load(run)
    for path, label in splits.val:
        target = tmp_path / "out" / "data" / "test" / splits.labels[label] / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    export = json.loads(RunFolder(run).export_record.read_text())

    def done(demo):
        demo.run, demo.data = run, tmp_path / "out" / "data"
        return {"checkpoint": str(run / "best.safetensors"), "train_seconds": 1.0, "best_val_accuracy": 1.0}

    steps = [
        ("train", done),
        ("export", lambda demo: {k: export[k] for k in ("onnx", "max_abs_diff", "top1_agreement")}),
        ("quantize", demo_module.quantize_model),
        ("benchmark", demo_module.benchmark_text_models),
        ("package", demo_module.package_and_predict),
        ("report", demo_module.write_report),
    ]
    summary = demo_module.run_demo(tmp_path / "out", steps=steps, modality="text")
    assert summary["quantize"]["shipped"] == "fp32" and summary["quantize"]["int8_model"] == ""
    assert summary["package"]["held_out_texts"] == len(splits.val)
    latency = summary["benchmark"]["latency"]["onnxruntime-cpu, 128 tokens"]
    assert latency["fp32_p50_ms"] and latency["int8_p50_ms"] is None
    capsys.readouterr()
    print_demo(summary)
    printed = capsys.readouterr().out
    assert "FP32 ships, no INT8 model" in printed and "dynamic 0.95x" in printed
    assert "demo done in" in printed and "report:" in printed


def test_fp32_shipping_with_out_elsewhere_removes_the_runs_int8_and_a_restored_one_is_stale(
    text_run, tmp_path, monkeypatch
):
    """With --out elsewhere, the run's own model.int8.onnx from an earlier quantize goes too (package
    would bundle it); an INT8 model put back beside the FP32 decision is stale, not bundled."""
    import edgetl
    from edgetl.quantizer import text as text_module
    from edgetl.runfolder.lineage import StaleArtifact

    run = Path(shutil.copytree(text_run, tmp_path / "run"))
    earlier = (run / "model.int8.onnx").read_bytes()
    monkeypatch.setattr(text_module, "latencies_ms", fixed_latency(run, 0.95))
    monkeypatch.setattr(text_module, "_methods", lambda: {"dynamic": text_module._dynamic})
    result = edgetl.quantize(run, tmp_path / "elsewhere.int8.onnx")
    assert result.to_dict()["shipped"] == "fp32"
    assert not (run / "model.int8.onnx").exists() and not (tmp_path / "elsewhere.int8.onnx").exists()
    (run / "model.int8.onnx").write_bytes(earlier)
    with pytest.raises(StaleArtifact, match="shipped FP32"):
        edgetl.package(run, out=tmp_path / "bundle.tar.gz")
    assert not (tmp_path / "bundle.tar.gz").exists()
