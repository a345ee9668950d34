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
