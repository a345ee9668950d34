"""Text INT8: the candidates tried, the gate's record, and the ranking that keeps a slow INT8 out."""

from __future__ import annotations

import json
from pathlib import Path

from tinytext import fixed_latency

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_int8_gate_and_record(text_run):
    q = json.loads((text_run / "quantize.json").read_text())
    assert [a["method"] for a in q["attempts"]] == ["dynamic"] == [q["method"]]  # the fixture names it
    assert q["gate"]["images"] == q["eval_images"] > 0 and q["shipped"] == "int8"
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
    dynamic, logits = text_module._dynamic, text_module.text_logits

    def calibrate(src, dst, texts, spec):
        calibrated.extend(texts)
        return dynamic(src, dst, texts, spec)

    answers = []

    def gate_logits(path, texts, spec):
        gated.append(list(texts))
        answers.append(logits(path, texts, spec))
        return answers[-1]

    monkeypatch.setattr(text_module, "_methods", lambda: {"dynamic": calibrate})
    monkeypatch.setattr(text_module, "text_logits", gate_logits)
    # named: auto could ship FP32 (the tiny model's INT8 is not clearly faster), with no gate to check
    result = quantize(run, tmp_path / "x.int8.onnx", method="dynamic", num_calibration=10, allow_drop=True)
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
        EdgetlError,
        match="--method minmax: a text model takes auto, dynamic, dynamic-mixed, fused-dynamic, static-qdq-matmul",
    ):
        quantize(run, out, method="minmax")
    assert not out.exists()


def test_fused_dynamic_fuses_the_tiny_bert_and_keeps_its_names_metadata_and_logits(text_run, tmp_path):
    """The tiny BERT's residual-add LayerNorms and GELUs fuse (SkipLayerNormalization, BiasGelu); the
    MatMuls are INT8; the model keeps the FP32 model's tensor names and edgetl metadata, and its
    logits agree with FP32's on the validation texts."""
    from collections import Counter

    import numpy as np
    import onnx

    from edgetl.data.texts import read_recorded
    from edgetl.quantizer import quantize
    from edgetl.quantizer.text import text_logits
    from edgetl.quantizer.text_fusion import FUSED_QUANTIZED_OPS
    from edgetl.runfolder.splits import Splits
    from edgetl_runtime.modelfile import read_model_info
    from edgetl_runtime.modelinfo import Precision

    run = _copy(text_run, tmp_path)
    out = tmp_path / "fused.int8.onnx"
    result = quantize(run, out, method="fused-dynamic", allow_drop=True)
    assert result.int8_model == out and [c.method for c in result.attempts] == ["fused-dynamic"]
    fp32, int8 = onnx.load(str(run / "model.onnx")).graph, onnx.load(str(out)).graph
    ops = Counter(n.op_type for n in int8.node)
    assert ops["SkipLayerNormalization"] == 4 and ops["BiasGelu"] == 2  # 2 layers: 2 norms, 1 GELU each
    assert ops["MatMulInteger"] > 0 and "Erf" not in ops
    assert [i.name for i in int8.input] == [i.name for i in fp32.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in int8.output] == [o.name for o in fp32.output]
    info, source = read_model_info(out), read_model_info(run / "model.onnx")
    assert info.precision is Precision.INT8 and info.labels == source.labels
    assert info.preprocess == source.preprocess
    assert info.quantization["method"] == "fused-dynamic"
    assert info.quantization["op_types"] == FUSED_QUANTIZED_OPS
    assert info.quantization["fused"] == {"BiasGelu": 2, "SkipLayerNormalization": 4}
    texts = read_recorded([p for p, _ in Splits.load(run).val])
    reference, got = (
        text_logits(run / "model.onnx", texts, source.preprocess),
        text_logits(out, texts, info.preprocess),
    )
    assert (reference.argmax(1) == got.argmax(1)).all()
    assert np.abs(reference - got).max() < 0.05 * np.abs(reference).max()


def test_a_graph_the_optimizer_cannot_fuse_is_not_applicable_and_the_others_still_run(
    text_run, tmp_path, monkeypatch
):
    import onnx
    import pytest
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.onnx_model import OnnxModel

    from edgetl.errors import EdgetlError
    from edgetl.quantizer import quantize
    from edgetl.quantizer import text as text_module
    from edgetl.quantizer.text_fusion import fused_dynamic

    run = _copy(text_run, tmp_path)
    monkeypatch.setattr(
        text_module, "_methods", lambda: {"dynamic": text_module._dynamic, "fused-dynamic": fused_dynamic}
    )
    monkeypatch.setattr(text_module, "latencies_ms", fixed_latency(run, 0.5))

    def fail(path, **options):
        raise RuntimeError("no pattern\nsecond line")

    for optimize, reason in (
        (fail, "onnxruntime's transformer optimizer failed (RuntimeError: no pattern)"),
        (lambda path, **options: OnnxModel(onnx.load(path)), "fused nothing in this graph"),
    ):
        monkeypatch.setattr(optimizer, "optimize_model", optimize)
        result = quantize(run, allow_drop=True)
        record = json.loads((run / "quantize.json").read_text())
        fused = next(a for a in record["attempts"] if a["method"] == "fused-dynamic")
        assert fused["verdict"] == "not applicable" and reason in fused["reason"] and not fused["passed"]
        assert fused["latency_ms"] is None and fused["agreement"] is None
        assert result.method == record["method"] == "dynamic" and (run / "model.int8.onnx").is_file()
        # asked for by name, a candidate that cannot apply is one error, and nothing is written
        out = tmp_path / "asked.int8.onnx"
        with pytest.raises(EdgetlError, match="no INT8 method applies to this graph") as refused:
            quantize(run, out, method="fused-dynamic")
        assert reason in str(refused.value) and "\n" not in str(refused.value) and not out.exists()


def test_an_int8_clearly_faster_than_fp32_ships_with_every_candidate_recorded(
    text_run, tmp_path, monkeypatch
):
    from edgetl.quantizer import quantize
    from edgetl.quantizer import text as text_module
    from edgetl.quantizer.nncf_backend import nncf_available

    run = _copy(text_run, tmp_path)
    (run / "model.int8.onnx").unlink()
    monkeypatch.setattr(text_module, "latencies_ms", fixed_latency(run, 0.5))
    result = quantize(run, allow_drop=True)
    methods = ["dynamic", "dynamic-mixed", "fused-dynamic", "static-qdq-matmul"] + [
        "nncf-transformer"
    ] * nncf_available()
    q = json.loads((run / "quantize.json").read_text())
    assert [a["method"] for a in q["attempts"]] == methods and q["method"] in methods
    assert q["shipped"] == result.to_dict()["shipped"] == "int8" and q["reason"] == ""
    assert (run / "model.int8.onnx").is_file() and result.artifact == run / "model.int8.onnx"
    assert q["int8_model"] == str(run / "model.int8.onnx") and result.to_dict()["latency_ratio"] == 0.5


def test_a_named_method_is_written_even_when_not_faster_and_its_summary_says_so(
    text_run, tmp_path, monkeypatch
):
    from edgetl.quantizer import quantize
    from edgetl.quantizer import text as text_module

    run = _copy(text_run, tmp_path)
    monkeypatch.setattr(text_module, "latencies_ms", fixed_latency(run, 0.95))
    out = tmp_path / "asked.int8.onnx"
    result = quantize(run, out, method="dynamic", allow_drop=True)
    assert out.is_file() and result.summary["shipped"] == "int8"
    assert "--method dynamic: 0.95x FP32's latency" in result.reason
    assert "not faster than FP32 by the 0.8x bound" in result.summary["reason"]
    assert json.loads((run / "quantize.json").read_text())["reason"] == result.reason


def test_dynamic_mixed_keeps_the_costliest_matmuls_float_measured_on_calibration_texts(
    text_run, tmp_path, monkeypatch
):
    """dynamic-mixed measures each weight MatMul's KL cost on the calibration texts it is given (never
    the gate's), keeps the costliest tenth (at least one) in float and quantizes the rest."""
    import onnx

    from edgetl.data.texts import read_recorded
    from edgetl.quantizer import text as text_module
    from edgetl.quantizer import text_mixed
    from edgetl.runfolder.splits import Splits
    from edgetl_runtime.modelfile import read_model_info

    run = _copy(text_run, tmp_path)
    spec = read_model_info(run / "model.onnx").preprocess
    src = text_module._without_value_info(run / "model.onnx", tmp_path / "prepared.onnx")
    names = text_mixed.weight_matmuls(src)
    assert len(names) >= 10  # 2 layers x (q, k, v, out, 2 FFN) and the head
    calib = read_recorded([p for p, _ in Splits.load(run).train])[:12]
    seen = []
    measure = text_mixed.rank_sensitivity

    def recording(source, texts, spec_, quantize, work):
        seen.append(list(texts))
        costs = measure(source, texts, spec_, quantize, work)
        assert set(costs) == set(names)
        # a known order from here on: the result must follow it, whatever the real costs were
        return {name: float(i) for i, name in enumerate(names)}

    monkeypatch.setattr(text_mixed, "rank_sensitivity", recording)
    settings = text_mixed.dynamic_mixed(src, tmp_path / "mixed.onnx", calib, spec)
    assert seen == [calib]
    keep = max(1, int(0.1 * len(names)))
    assert settings["float_nodes"] == names[::-1][:keep]
    graph = onnx.load(str(tmp_path / "mixed.onnx")).graph
    # a float MatMul keeps its name, a float Gemm (the head) comes back as "<name>_MatMul" + Add
    still_float = {n.name.removesuffix("_MatMul") for n in graph.node if n.op_type in ("MatMul", "Gemm")}
    still_float &= set(names)
    assert still_float == set(settings["float_nodes"])
    quantized = {n.name for n in graph.node if n.op_type == "MatMulInteger"}
    assert len(quantized) == len(names) - keep
