"""Text export: parity at several sequence lengths, and the tokenizer carried by the model."""

from __future__ import annotations

import json
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_export_parity_at_several_lengths(text_run, bert):
    record = json.loads((text_run / "export.json").read_text())
    runtimes = [c["runtime"] for c in record["checks"]]
    assert runtimes == ["onnxruntime-cpu@16", "onnxruntime-cpu@64", "onnxruntime-cpu@128"]
    assert all(c["passed"] and c["max_abs_diff"] < 1e-4 for c in record["checks"])
    from edgetl_runtime.modelfile import read_model_info

    info = read_model_info(text_run / "model.onnx")
    assert info.modality.value == "text" and info.preprocess.max_length == 128
    assert (
        info.preprocess.tokenizer == (bert / "tokenizer.json").read_text()
    )  # the model carries its tokenizer


def test_text_export_parity_gate_refuses_and_writes_nothing(text_run, tmp_path):
    """No conversion reproduces PyTorch to 0: the gate refuses, names the length, writes nothing."""
    import pytest

    from edgetl.errors import GateError
    from edgetl.exporter.export import export_onnx
    from edgetl.runfolder.folder import find_checkpoint

    out = tmp_path / "strict.onnx"
    refusal = r"--tolerance 0(\.0)?: onnxruntime differs from PyTorch at onnxruntime-cpu@16"
    with pytest.raises(GateError, match=refusal):
        export_onnx(find_checkpoint(text_run), out, tolerance=0.0)
    assert not out.exists() and not list(tmp_path.iterdir())
    loose = export_onnx(find_checkpoint(text_run), tmp_path / "loose.onnx", tolerance=1e-3)
    assert (tmp_path / "loose.onnx").is_file() and all(c.passed for c in loose.checks)
