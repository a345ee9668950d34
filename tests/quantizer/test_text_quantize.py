"""Text INT8: the candidates tried, the gate's record, and the ranking that keeps a slow INT8 out."""

from __future__ import annotations

import json
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_int8_gate_and_record(text_run):
    q = json.loads((text_run / "quantize.json").read_text())
    from edgetl.quantizer.nncf_backend import nncf_available

    methods = {"dynamic", "static-qdq-matmul"} | ({"nncf-transformer"} if nncf_available() else set())
    assert {a["method"] for a in q["attempts"]} == methods
    assert q["gate"]["images"] == q["eval_images"] > 0 and q["method"] in methods
    import onnx

    graph = onnx.load(str(text_run / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "Gather" in ops and (
        "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops or "QuantizeLinear" in ops
    )


def test_an_int8_candidate_not_clearly_faster_than_fp32_is_not_chosen():
    from edgetl.quantizer.text import TextCandidate, rank_candidate

    slow = TextCandidate("nncf-transformer", 0.95, 0.0007, 1.0, -5.0, (-5.0, 4.75), 0.26, 45.8, "warn")
    fast = TextCandidate("dynamic", 0.95, 0.0011, 1.0, -5.0, (-5.0, 4.75), 0.65, 19.3, "warn")
    assert min([slow, fast], key=lambda c: rank_candidate(c, 31.0)) is fast
    # agreeing on one more text does not buy a model that a busy machine timed at 0.9x FP32
    barely = TextCandidate("nncf-transformer", 0.96, 0.0007, 1.0, -5.0, (-5.0, 4.75), 0.26, 27.9, "warn")
    assert min([barely, fast], key=lambda c: rank_candidate(c, 31.0)) is fast
    # one flipped text of 80 (warn) does not outweigh a KL seventy times lower
    close = TextCandidate("dynamic", 79 / 80, 0.0007, 0.95, 1.25, (-1.19, 1.25), 0.65, 14.2, "warn")
    coarse = TextCandidate("static-qdq-matmul", 1.0, 0.046, 0.96, 0.0, (0.0, 0.0), 0.65, 18.0, "pass")
    assert min([coarse, close], key=lambda c: rank_candidate(c, 40.0)) is close
    failing = TextCandidate("static-qdq-matmul", 0.5, 0.9, 0.5, 40.0, (30.0, 50.0), 0.65, 10.0, "fail")
    assert min([failing, slow], key=lambda c: rank_candidate(c, 31.0)) is slow
    # exactly 20% faster is clearly faster: it ranks with the fast ones, by KL
    at_bound = TextCandidate("static-qdq-matmul", 0.95, 0.0009, 1.0, -5.0, (-5.0, 4.75), 0.65, 8.0, "warn")
    quick = TextCandidate("dynamic", 0.95, 0.0011, 1.0, -5.0, (-5.0, 4.75), 0.65, 5.0, "warn")
    assert min([quick, at_bound], key=lambda c: rank_candidate(c, 10.0)) is at_bound


def _copy(text_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(text_run, tmp_path / "run"))


def test_text_gate_refuses_and_writes_nothing_unless_the_drop_is_allowed(text_run, tmp_path, monkeypatch):
    """A size bound no INT8 text model meets (0.01x): the refusal, its message, nothing written."""
    import pytest

    from edgetl.errors import GateError
    from edgetl.quantizer import quantize
    from edgetl.quantizer import text as text_module

    run = _copy(text_run, tmp_path)
    record = (run / "quantize.json").read_bytes()
    monkeypatch.setattr(text_module, "TEXT_MAX_SIZE_RATIO", 0.01)
    out = tmp_path / "refused.int8.onnx"
    with pytest.raises(GateError, match="every method failed") as refused:
        quantize(run, out, method="dynamic")
    assert "more than 0.01x" in str(refused.value) and "--allow-drop" in str(refused.value)
    assert not out.exists() and (run / "quantize.json").read_bytes() == record
    kept = quantize(run, out, method="dynamic", allow_drop=True)
    assert out.is_file() and kept.gate["verdict"] == "fail" and not kept.summary["passed"]
    assert kept.artifact == out  # what the next step (package, benchmark) is handed
    assert json.loads((run / "quantize.json").read_text())["passed"] is False


def test_text_calibration_texts_are_training_texts_and_never_gate_texts(text_run, tmp_path, monkeypatch):
    from edgetl.data.texts import read_recorded
    from edgetl.quantizer import quantize
    from edgetl.quantizer import text as text_module
    from edgetl.runfolder.splits import Splits

    run = _copy(text_run, tmp_path)
    calibrated, gated = [], []
    dynamic, logits = text_module._dynamic, text_module._logits

    def calibrate(src, dst, texts, spec):
        calibrated.extend(texts)
        return dynamic(src, dst, texts, spec)

    answers = []

    def gate_logits(path, texts, spec):
        gated.append(list(texts))
        answers.append(logits(path, texts, spec))
        return answers[-1]

    monkeypatch.setattr(text_module, "_methods", lambda: {"dynamic": calibrate})
    monkeypatch.setattr(text_module, "_logits", gate_logits)
    result = quantize(run, tmp_path / "x.int8.onnx", num_calibration=10, allow_drop=True)
    splits = Splits.load(run)
    train = set(read_recorded([p for p, _ in splits.train]))
    val = read_recorded([p for p, _ in splits.val])
    assert len(calibrated) == 10 and set(calibrated) <= train
    assert not set(calibrated) & set(val)
    assert gated and all(texts == val for texts in gated)  # FP32 and INT8 judged on every val text
    assert result.gate["images"] == len(val) and result.gate["calibration_images"] == 10
    labels = [y for _, y in splits.val]
    assert result.fp32_accuracy == float((answers[0].argmax(1) == labels).mean())  # the FP32 model's, first


def test_calibration_texts_go_in_full_batches_of_eight_padded_to_one_shape(text_run):
    import numpy as np

    from edgetl.quantizer.text import calibration_batches
    from edgetl_runtime.modelfile import read_model_info
    from edgetl_runtime.textinput import encode_texts

    spec = read_model_info(text_run / "model.onnx").preprocess
    texts = [" ".join(["word"] * (1 + i % 5)) + f" number {i}" for i in range(20)]
    batches = calibration_batches(texts, spec)
    assert len(batches) == 2  # 20 texts: two of 8, the last 4 left out
    for k, batch in enumerate(batches):
        own = encode_texts(texts[8 * k : 8 * k + 8], spec).feed(spec)
        assert batch.keys() == own.keys()
        for name, value in batch.items():
            assert value.shape == (8, spec.max_length)
            width = own[name].shape[1]
            np.testing.assert_array_equal(value[:, :width], own[name])
            assert not value[:, width:].any()  # padding is zeros: masked out


def test_an_image_method_on_a_text_run_is_one_error_naming_the_choices(text_run, tmp_path):
    import pytest

    from edgetl.errors import EdgetlError
    from edgetl.quantizer import quantize

    run = _copy(text_run, tmp_path)
    out = tmp_path / "x.int8.onnx"
    with pytest.raises(
        EdgetlError, match="--method minmax: a text model takes auto, dynamic, static-qdq-matmul"
    ):
        quantize(run, out, method="minmax")
    assert not out.exists()
