"""edgetl quantize on a tiny efficientnet_lite0 (32 px, 3 digit classes): QDQ output with metadata,
manifest round trip, the accuracy gate, bad input and the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from badfiles import write_corrupt_image
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.errors import BundleError, DataError, EdgetlError, GateError
from edgetl.quantizer import (
    compare_logits,
    judge,
    load_eval_set,
    map_eval_classes,
    paired_drop_ci,
    quantize,
    resolvable_drop,
    run_model,
)
from edgetl.quantizer import ladder as ladder_module
from edgetl.quantizer.calibration import CalibrationManifest, assign_folds
from edgetl.quantizer.gate import score
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelfile import read_model_info


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    """The shared run folder: model.onnx, quantized through the run path (train split calibrates, val gates)."""
    return tiny_run


@pytest.fixture(scope="module")
def quantized(run, digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "model.int8.onnx"
    result = quantize(
        run / "model.onnx",
        out,
        calibration=digits_dir / "train",
        eval_dir=digits_dir / "val",
        num_calibration=24,
        max_drop=100,
        min_agreement=0,
    )
    return result


def test_bias_correction_moves_only_biases_to_the_fp32_weights_channel_means(run, digits_dir, tmp_path):
    from edgetl.quantizer import bias_correction as bc
    from edgetl.quantizer import ort as ort_q
    from edgetl_runtime.preprocess import list_images, preprocess_image

    spec = read_model_info(run / "model.onnx").preprocess
    x = np.stack([preprocess_image(p, spec) for p in sorted(list_images(digits_dir / "train"))[:24]])
    pre = ort_q.preprocess_for_quantization(run / "model.onnx", tmp_path / "pre.onnx")
    ranges = ort_q.calibrate_ranges(pre, x, ort_q.Method.MINMAX)
    plain = ort_q.quantize_with_ranges(pre, ort_q.Method.MINMAX, ranges, tmp_path / "q.onnx")
    fixed = bc.correct_biases(pre, plain, x, tmp_path / "fixed.onnx")

    def own_error(path: Path) -> float:
        """Sum over layers of |channel mean with FP32 weights - as quantized|, same quantized input."""
        model, float_model = onnx.load(str(path)), onnx.load(str(pre))
        layers = bc._corrected_layers(model)
        probe, twins = bc._with_float_twins(model, *bc.float_tables(float_model), layers)
        means = bc._channel_means(probe, [n.output[0] for n, _ in layers] + twins, x, 8, "test")
        return sum(
            np.abs(means[t] - means[n.output[0]]).sum() for (n, _), t in zip(layers, twins, strict=True)
        )

    assert len(bc._corrected_layers(onnx.load(str(plain)))) > 10
    assert own_error(fixed) < 0.2 * own_error(plain)
    before = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(plain)).graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(fixed)).graph.initializer}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert before.keys() == after.keys() and changed
    assert all(k.endswith("bias_quantized") and after[k].dtype == np.int32 for k in changed)


def test_run_folder_writes_model_manifest_and_summary(run):
    summary = json.loads((run / "quantize.json").read_text())
    assert Path(summary["int8_model"]) == run / "model.int8.onnx"
    assert (run / "model.int8.onnx").is_file() and (run / "calibration.json").is_file()
    # the learnt tiny task passes the default gate with the method asked for: no other rung was tried
    assert [(a["rung"], a["method"]) for a in summary["attempts"]] == [("calibration", "minmax")]
    assert summary["method"] == "minmax" and summary["eval_images"] == 12
    assert CalibrationManifest.load(run / "calibration.json").method == "minmax"
    assert summary["fp32_accuracy"] >= 0.75 and summary["agreement"] >= 11 / 12  # chance is 1/3
    gate = summary["gate"]
    assert gate["max_drop"] == 0.5 and gate["min_agreement"] == 0.95  # the defaults
    assert gate["metric"] == "top1" and gate["images"] == 12 and gate["calibration_images"] == 12
    # 12 images cannot show 95% agreement (12/12 gives [73.5%, 100%]): warn, which passes
    assert gate["verdict"] == "warn" and gate["passed"] and summary["passed"]
    assert "12 images cannot show it reaches --min-agreement 95%" in gate["reason"]
    # one image in 12 may flip between machines; whatever flipped, the interval is the exact paired
    # one for those counts (0 lost, 0 gained: [0, 0]) and never lies wholly above the bound (a fail)
    lost, gained = map(int, re.search(r"\((\d+) lost, (\d+) gained\)", gate["reason"]).groups())
    assert tuple(gate["drop_ci95"]) == pytest.approx(paired_drop_ci(lost, gained, 12))
    assert gate["drop_ci95"][0] <= 0.5
    assert summary["fp32_sha256"] == read_model_info(run / "model.int8.onnx").quantization["fp32_sha256"]


def test_quantized_model_has_qdq_nodes_and_metadata(run, quantized):
    proto = onnx.load(str(quantized.int8_model))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    info = read_model_info(quantized.int8_model)
    fp32 = read_model_info(run / "model.onnx")
    assert info.precision == "int8" and info.labels == fp32.labels and info.preprocess == fp32.preprocess
    assert info.quantization["method"] == quantized.method and info.quantization["per_channel"] is True
    # weights are stored as int8, per channel
    weights = {i.name: i for i in proto.graph.initializer}
    int8_weights = [w for w in weights.values() if w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 4]
    assert int8_weights
    assert quantized.size_ratio <= 0.3
    # auto measured all three calibration methods and kept one of them
    assert {a.method for a in quantized.attempts} == {"minmax", "entropy", "percentile"}
    assert quantized.agreement >= 11 / 12 and quantized.num_calibration == 24
    assert set(quantized.per_class) == {"0", "1", "2"}
    # no bound to miss (max_drop 100, min_agreement 0): every candidate passes outright
    assert quantized.gate["verdict"] == "pass" and all(a.verdict == "pass" for a in quantized.attempts)


def test_first_convolution_stays_in_float(quantized):
    proto = onnx.load(str(quantized.int8_model))
    producer = {o: n for n in proto.graph.node for o in n.output}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]

    def int8_weights(node) -> bool:
        return node.input[1] in producer and producer[node.input[1]].op_type == "DequantizeLinear"

    assert len(layers) > 10 and layers[0].op_type == "Conv"
    assert not int8_weights(layers[0]) and all(int8_weights(n) for n in layers[1:])
    assert quantized.settings["nodes_to_exclude"] == [layers[0].name]


def test_manifest_repeats_the_same_quantization(run, quantized, digits_dir, tmp_path):
    manifest = CalibrationManifest.load(quantized.calibration_manifest)
    assert len(manifest.files) == 24 and manifest.method == quantized.method
    # stratified: 8 of each of the 3 classes
    assert np.bincount([label for _, _, label in manifest.files]).tolist() == [8, 8, 8]
    again = quantize(
        run / "model.onnx",
        tmp_path / "again.onnx",
        calibration=quantized.calibration_manifest,
        eval_dir=digits_dir / "val",
        max_drop=100,
    )
    assert again.method == quantized.method and len(again.attempts) == 1
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_model(again.int8_model, x), run_model(quantized.int8_model, x))


def test_changed_calibration_file_is_an_error(run, digits_dir, tmp_path):
    data = shutil.copytree(digits_dir / "train", tmp_path / "train")
    first = quantize(
        run / "model.onnx",
        tmp_path / "a.onnx",
        calibration=data,
        method="minmax",
        num_calibration=6,
        min_agreement=0,
    )
    rel = CalibrationManifest.load(first.calibration_manifest).files[0][0]
    with open(data / rel, "ab") as f:  # still a readable PNG, but not the same bytes
        f.write(b"\0")
    with pytest.raises(DataError, match="changed since the manifest"):
        quantize(run / "model.onnx", tmp_path / "b.onnx", calibration=first.calibration_manifest)
    assert not (tmp_path / "b.onnx").exists()


def _stand_in(name):
    """A heavy rung replaced by one cheap onnxruntime candidate under the rung's name: the walk's
    order and bookkeeping are what is tested here, in seconds; the real rungs are walked by
    test_forced_failure_walks_every_real_rung (slow)."""

    def run_rung(ctx):
        calls.append(name)
        ladder_module._ort_candidate(ctx, ladder_module.ort.Method.MINMAX, (), name)

    return run_rung


def refuse_every_candidate(monkeypatch, **changes) -> None:
    """A gate no INT8 model can pass: the size bound (INT8 is about 0.29x its FP32 model) set to 0.01x.
    The options refuse an impossible --max-drop, so the bound that forces a refusal is the quantizer's."""
    import importlib
    from dataclasses import replace

    quantize_module = importlib.import_module("edgetl.quantizer.quantize")  # the module, not the function
    backend = quantize_module.QuantBackend.ONNXRUNTIME
    quantizer = quantize_module.QUANTIZERS[backend]
    monkeypatch.setitem(
        quantize_module.QUANTIZERS, backend, replace(quantizer, max_size_ratio=0.01, **changes)
    )


calls: list[str] = []


def test_forced_failing_gate_walks_each_rung_once(run, tmp_path, monkeypatch):
    run = shutil.copytree(run, tmp_path / "run")  # its quantize.json is rewritten; the shared run's stays
    monkeypatch.setattr(ladder_module, "RECOVERY_ATTEMPTS", 2)
    for name in ("nncf-ptq", "nncf-accuracy-control", "qat"):
        monkeypatch.setitem(
            ladder_module.RUNGS, name, ladder_module.Rung(name, _stand_in(name), lambda ctx: None)
        )
    refuse_every_candidate(monkeypatch)
    calls.clear()
    with pytest.raises(GateError, match="attempts on 5 rungs"):
        quantize(run, tmp_path / "x.onnx", method="minmax")
    assert not (tmp_path / "x.onnx").exists() and calls == ["nncf-ptq", "nncf-accuracy-control", "qat"]
    calls.clear()
    result = quantize(run, tmp_path / "x.onnx", method="minmax", allow_drop=True)
    assert (tmp_path / "x.onnx").is_file() and not result.passed and result.gate["verdict"] == "fail"
    rungs = [a.rung for a in result.attempts]
    # each rung once, in order; the calibration rung tries each method once
    assert list(dict.fromkeys(rungs)) == [
        "calibration",
        "float-nodes",
        "nncf-ptq",
        "nncf-accuracy-control",
        "qat",
    ]
    assert [a.method for a in result.attempts[:3]] == ["minmax", "percentile", "entropy"]
    assert 1 <= rungs.count("float-nodes") <= 2 and calls == ["nncf-ptq", "nncf-accuracy-control", "qat"]
    assert all(a.exclude for a in result.attempts if a.rung == "float-nodes")
    assert len(set(map(str, result.attempts))) == len(result.attempts)  # each attempt logged once
    assert result.agreement == min(result.attempts, key=score).agreement
    # a passing gate stops at the first rung
    monkeypatch.undo()
    passing = quantize(run, tmp_path / "y.onnx", max_drop=100, min_agreement=0, method="minmax")
    assert [a.rung for a in passing.attempts] == ["calibration"] and passing.gate["verdict"] == "pass"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_forced_failure_walks_every_real_rung(run, tmp_path, monkeypatch):
    """No stand-ins: NNCF PTQ, NNCF accuracy control and QAT each run on the tiny run and are measured."""
    run = shutil.copytree(run, tmp_path / "run")
    before = (run / "quantize.json").read_bytes()
    # a bound no interval can meet (a drop is at least -100 points): every rung is climbed and
    # refused, the best is kept (--allow-drop)
    refuse_every_candidate(monkeypatch)
    result = quantize(run, tmp_path / "x.int8.onnx", method="minmax", allow_drop=True)
    rungs = list(dict.fromkeys(a.rung for a in result.attempts))
    assert rungs == ["calibration", "float-nodes", "nncf-ptq", "nncf-accuracy-control", "qat"]
    assert (
        not result.passed and result.gate["verdict"] == "fail" and "more than 0.01x" in result.gate["reason"]
    )
    for attempt in result.attempts:
        # each candidate is a real INT8 model, measured on the 12 val images
        assert attempt.verdict == "fail" and 0 < attempt.size_ratio <= 0.3 and attempt.agreement >= 0.5
    proto = onnx.load(str(tmp_path / "x.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    assert (run / "quantize.json").read_bytes() != before  # the kept one is recorded in the run


def test_cli_refusal_exits_1_with_one_json_error_and_writes_nothing(run, tmp_path, monkeypatch):
    """The CLI path of a refused gate. The CLI takes no negative --max-drop, so the refusal is made by
    the size bound (INT8 at 0.29x, bound 0.01x); the ladder is cut to its first rung to keep this fast."""
    refuse_every_candidate(monkeypatch, ladder=("calibration",))
    run = Path(shutil.copytree(run, tmp_path / "run"))
    (run / "model.int8.onnx").unlink()
    (run / "calibration.json").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = CliRunner().invoke(main, ["quantize", str(run), "--method", "minmax", "--json"])
    assert res.exit_code == 1, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    error = json.loads(lines[0])["error"]
    assert error["kind"] == "error" and "the gate refuses INT8" in error["message"]
    assert "nothing written" in error["message"] and "--allow-drop" in error["message"]
    assert "more than 0.01x" in error["message"]
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # no INT8 model, no manifest, the old quantize.json untouched
    assert not [p for p in run.iterdir() if p.name.startswith(".edgetl-tmp")]


def test_interval_on_constructed_outcomes():
    n = 153
    labels = np.zeros(n, int)

    def verdict(lost: int, **kw):
        int8 = labels.copy()
        int8[:lost] = 1
        return judge(
            labels,
            int8,
            labels,
            max_drop=0.5,
            min_agreement=0.9,
            size_ratio=0.26,
            max_size_ratio=0.3,
            calibration_images=245,
            held_out=False,
            **kw,
        )

    same = verdict(0)
    assert same.drop == 0 and same.drop_ci95 == (0.0, 0.0) and same.verdict == "pass"
    one = verdict(1)  # one image of 153: 0.65 points, but the images cannot tell it from none
    assert one.drop == pytest.approx(100 / 153) and one.verdict == "warn" and one.passed
    assert one.drop_ci95[0] < 0 < 0.5 < one.drop_ci95[1] and "cannot tell" in one.reason
    assert "[-0.62, +0.65]" in one.reason and "153 images" in one.reason
    ten = verdict(10)  # ten lost, none gained: the whole interval lies above the bound
    assert ten.verdict == "fail" and not ten.passed and ten.drop_ci95[0] > 0.5
    assert ten.fp32_only == 10 and ten.int8_only == 0 and ten.images == 153
    # gains offset losses: 5 lost, 5 gained is no drop, with a wide interval
    lo, hi = paired_drop_ci(5, 5, n)
    assert lo < 0 < hi and lo == pytest.approx(-hi)
    # the smallest drop 153 images can show above 0.5 points is 7 images; 450 images resolve finer
    assert resolvable_drop(153, 0.5) == pytest.approx(700 / 153) and resolvable_drop(450, 0.5) < 2.5
    # agreement as the second criterion, and the agreement-only gate without labels
    unlabelled = judge(
        labels,
        labels,
        None,
        max_drop=0.5,
        min_agreement=0.99,
        size_ratio=0.26,
        max_size_ratio=0.3,
        calibration_images=200,
        held_out=True,
    )
    assert unlabelled.metric == "agreement" and unlabelled.drop is None and unlabelled.drop_ci95 is None
    assert unlabelled.verdict == "warn" and "held out" in unlabelled.reason  # 153/153 cannot show >= 99%
    too_big = judge(
        labels,
        labels,
        labels,
        max_drop=0.5,
        min_agreement=0.9,
        size_ratio=0.9,
        max_size_ratio=0.3,
        calibration_images=1,
        held_out=False,
    )
    assert too_big.verdict == "fail" and "size" in too_big.reason
    # fail by agreement alone: FP32 and INT8 are wrong on the same 40 images, but differently, so
    # the top-1 drop is nil while INT8 disagrees with FP32 on 40 of 153
    fp32_pred, int8_pred = labels.copy(), labels.copy()
    fp32_pred[:40], int8_pred[:40] = 1, 2
    disagree = judge(
        fp32_pred,
        int8_pred,
        labels,
        max_drop=0.5,
        min_agreement=0.9,
        size_ratio=0.26,
        max_size_ratio=0.3,
        calibration_images=245,
        held_out=False,
    )
    assert disagree.drop == 0 and disagree.drop_ci95 == (0.0, 0.0) and "within --max-drop" in disagree.reason
    assert disagree.agreement == pytest.approx(113 / 153) and disagree.agreement_ci95[1] < 0.9
    assert (
        disagree.verdict == "fail"
        and not disagree.passed
        and "lies below --min-agreement 90%" in disagree.reason
    )
    # the agreement metric without labels fails the same way
    low = judge(labels, int8_pred, None, max_drop=0.5, min_agreement=0.9, size_ratio=0.26,
                max_size_ratio=0.3, calibration_images=245, held_out=True)  # fmt: skip
    assert low.verdict == "fail" and low.metric == "agreement"


def _image_keys(x: np.ndarray) -> set[bytes]:
    return {a.tobytes() for a in x}


def test_cross_fit_never_judges_a_fold_model_on_its_own_calibration_images(
    run, digits_dir, tmp_path, monkeypatch
):
    """Spies on what calibrates each model and on what the gate runs each model on."""
    from edgetl.quantizer import gate as gate_module
    from edgetl.quantizer import ort as ort_module

    calibrated_on: dict[int, set[bytes]] = {}  # id(ranges) -> images
    model_ranges: dict[str, int] = {}  # written model -> id(its ranges)
    judged_on: dict[str, set[bytes]] = {}  # model the gate ran -> images
    real_calibrate, real_quantize, real_run = (
        ort_module.calibrate_ranges,
        ort_module.quantize_with_ranges,
        gate_module.run_model,
    )

    def calibrate(model, inputs, method):
        ranges = real_calibrate(model, inputs, method)
        calibrated_on[id(ranges)] = _image_keys(inputs)
        return ranges

    def quantize_with(model, method, ranges, out, exclude=()):
        model_ranges[str(out)] = id(ranges)
        return real_quantize(model, method, ranges, out, exclude)

    def run_gate(path, inputs, *args):
        judged_on.setdefault(str(path), set()).update(_image_keys(inputs))
        return real_run(path, inputs, *args)

    monkeypatch.setattr(ort_module, "calibrate_ranges", calibrate)
    monkeypatch.setattr(ort_module, "quantize_with_ranges", quantize_with)
    monkeypatch.setattr(gate_module, "run_model", run_gate)
    total = len(list((digits_dir / "train").rglob("*.png")))
    result = quantize(
        run / "model.onnx", tmp_path / "h.onnx", calibration=digits_dir / "train", min_agreement=0
    )
    given = {a.tobytes() for a in _given_images(result)}
    assert len(given) == total == result.num_calibration == result.gate["images"]
    measured = [p for p in judged_on if p in model_ranges]
    assert measured and len(measured) == 2 * len(result.attempts)  # two fold models per attempt
    for path in measured:
        own = calibrated_on[model_ranges[path]]
        assert own and judged_on[path] and not own & judged_on[path], path
        assert own | judged_on[path] == given  # calibrated on one fold, judged on the other
    # the model written is the refit on all images, which the gate never ran
    shipped = [p for p in model_ranges if Path(p).name.startswith("shipped")]
    assert len(shipped) == 1 and calibrated_on[model_ranges[shipped[0]]] == given
    assert shipped[0] not in judged_on
    gate = result.gate
    assert gate["metric"] == "agreement" and gate["held_out"] and "2-fold cross-fitted" in gate["reason"]
    record = gate["cross_fit"]
    assert record["folds"] == 2 and sum(m["judged_on"] for m in record["measured"]) == total
    assert [m["calibrated_on"] for m in record["measured"]] == [m["judged_on"] for m in record["measured"]][
        ::-1
    ]
    assert record["shipped"]["calibrated_on"] == total
    assert 0 <= record["shipped_vs_fold_models_agreement"] <= 1
    manifest = CalibrationManifest.load(result.calibration_manifest)
    assert len(manifest.folds) == len(manifest.files) == total and not manifest.holdout
    # the manifest repeats the cross-fit and the same shipped model
    again = quantize(
        run / "model.onnx", tmp_path / "again.onnx", calibration=result.calibration_manifest, min_agreement=0
    )
    assert again.gate["cross_fit"]["folds"] == 2 and again.method == result.method
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_model(again.int8_model, x), run_model(result.int8_model, x))
    # an --eval folder that overlaps the calibration images loses the overlap, and no cross-fit
    overlap = quantize(
        run / "model.onnx",
        tmp_path / "o.onnx",
        calibration=digits_dir / "train",
        eval_dir=digits_dir / "train",
        method="minmax",
        num_calibration=6,
        max_drop=100,
        min_agreement=0,
    )
    assert overlap.gate["images"] == total - 6 and not overlap.gate["held_out"]
    assert overlap.gate["cross_fit"] is None


def _given_images(result) -> np.ndarray:
    from edgetl.quantizer.calibration import load_calibration

    info = read_model_info(result.fp32_model)
    return load_calibration(result.calibration_manifest, info.preprocess, result.fp32_sha256).inputs


def test_folds_are_class_balanced_and_equal():
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 0]  # stratified order; class 0 has 6
    folds = np.asarray(assign_folds(labels, 2))
    labels = np.asarray(labels)
    assert abs(int(np.sum(folds == 0)) - int(np.sum(folds == 1))) <= 1
    for c in range(3):
        per_fold = np.bincount(folds[labels == c], minlength=2)
        assert abs(per_fold[0] - per_fold[1]) <= 1
    unlabelled = np.asarray(assign_folds([0] * 7, 2))
    assert np.bincount(unlabelled).tolist() == [4, 3]


def test_cross_fitted_300_images_can_pass():
    fp32 = np.zeros(300, int)
    int8 = fp32.copy()
    int8[:3] = 1  # 99% agreement on 300 cross-fitted images: the interval clears 95%
    report = judge(
        fp32,
        int8,
        None,
        max_drop=0.5,
        min_agreement=0.95,
        size_ratio=0.26,
        max_size_ratio=0.3,
        calibration_images=300,
        held_out=True,
        folds=2,
    )
    assert report.verdict == "pass" and report.agreement_ci95[0] > 0.95 and "cross-fitted" in report.reason
    # the hold-out gate it replaces judged 100 of them: 99 of 100 could only warn
    held = judge(
        fp32[:100],
        np.r_[1, fp32[1:100]],
        None,
        max_drop=0.5,
        min_agreement=0.95,
        size_ratio=0.26,
        max_size_ratio=0.3,
        calibration_images=200,
        held_out=True,
    )
    assert held.agreement == 0.99 and held.verdict == "warn"


def test_qat_folds_batchnorm_and_fake_quantizes_without_changing_the_model(run):
    import torch

    from edgetl.backbones.checkpoint import load_checkpoint
    from edgetl.quantizer import qat
    from edgetl.runfolder.folder import find_checkpoint

    model, _ = load_checkpoint(find_checkpoint(run))
    model.eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        before = model(x)
    qat._fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-3, rtol=1e-3)
    hooks = qat._insert_fake_quant(model)
    model.train()
    loss = model(x).pow(2).mean()
    loss.backward()  # the straight-through estimator passes gradients to the float weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        simulated = model(x)
    assert not torch.equal(simulated, before)  # int8 rounding is simulated
    qat._strip_fake_quant(model, hooks)
    # the stripped model keeps the int8-rounded weights: each output channel is an integer multiple
    # of its symmetric scale (max |w| / 127), which onnxruntime's per-channel quantization keeps exactly
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and not any(hasattr(m, "input_fq") for m in layers)
    for layer in layers:
        w = layer.weight.detach().flatten(1)
        scale = w.abs().amax(1, keepdim=True) / 127
        live = scale[:, 0] > 1e-5  # a dead channel's scale is clamped to the quantizer's epsilon
        q = w[live] / scale[live]
        assert (q - q.round()).abs().max() < 1e-2, layer
    with torch.no_grad():
        stripped = model(x)
    assert not torch.equal(stripped, simulated)  # the input rounding is gone


def test_nncf_ptq_rung_writes_qdq_onnx_that_onnxruntime_runs(run, digits_dir, tmp_path):
    from edgetl.quantizer import nncf_backend

    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    out = nncf_backend.quantize_onnx(run / "model.onnx", x, tmp_path / "n.onnx")
    proto = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    assert any(i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4 for i in proto.graph.initializer)
    logits = run_model(out, x)
    assert logits.shape == (8, 3) and np.isfinite(logits).all()


def test_bad_inputs(run, quantized, digits_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        quantize(run / "model.onnx", tmp_path / "e.onnx", calibration=empty)
    corrupt = tmp_path / "corrupt"
    write_corrupt_image(corrupt / "a.png")
    with pytest.raises(DataError, match="none of the 1 images is readable"):
        quantize(run / "model.onnx", tmp_path / "e.onnx", calibration=corrupt, eval_dir=digits_dir / "val")
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((digits_dir / "train").rglob("*.png"))[:3]:
        shutil.copy(path, few / path.name)
    with pytest.raises(DataError, match="too few to cross-fit"):
        quantize(run / "model.onnx", tmp_path / "e.onnx", calibration=few)
    # destructive if it regressed: a copy of the run, never the shared one
    copy = Path(shutil.copytree(run, tmp_path / "run-copy"))
    with pytest.raises(EdgetlError, match="FP32 input"):
        quantize(copy / "model.onnx", copy / "model.onnx", calibration=digits_dir / "train")
    assert sha256_file(copy / "model.onnx") == sha256_file(run / "model.onnx")
    with pytest.raises(BundleError, match="already quantized"):
        quantize(quantized.int8_model, tmp_path / "e.onnx", calibration=digits_dir / "train")
    # a manifest made for another model
    with pytest.raises(DataError, match="another model"):
        quantize(_other_model(run, tmp_path), tmp_path / "e.onnx", calibration=quantized.calibration_manifest)
    assert not (tmp_path / "e.onnx").exists()


def test_unwritable_manifest_fails_before_the_model_is_written(run, digits_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgetlError, match="--manifest"):
        quantize(
            run / "model.onnx",
            tmp_path / "q.onnx",
            calibration=digits_dir / "train",
            manifest=blocker / "m.json",
        )
    assert not (tmp_path / "q.onnx").exists()


def _other_model(run: Path, tmp_path: Path) -> Path:
    """The same FP32 model with one extra metadata entry: another file, another sha256."""
    proto = onnx.load(str(run / "model.onnx"))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "note", "copy"
    onnx.save(proto, str(tmp_path / "other.onnx"))
    return tmp_path / "other.onnx"


def test_mismatched_input_size_is_an_error(run, digits_dir, tmp_path):
    proto = onnx.load(str(run / "model.onnx"))
    for key in ("preprocess",):
        for p in proto.metadata_props:
            if p.key == f"edgetl.{key}":
                spec = json.loads(p.value)
                spec["crop"], spec["resize"] = 64, 73
                p.value = json.dumps(spec)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 32
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(BundleError, match="input"):
        quantize(tmp_path / "m.onnx", tmp_path / "o.onnx", calibration=digits_dir / "train")


def test_fewer_images_than_requested_warns_and_uses_all(run, digits_dir, tmp_path):
    write_corrupt_image(tmp_path / "cal" / "0" / "bad.png")
    shutil.copytree(digits_dir / "val" / "1", tmp_path / "cal" / "1")
    result = quantize(
        run / "model.onnx",
        tmp_path / "f.onnx",
        calibration=tmp_path / "cal",
        eval_dir=digits_dir / "val",
        method="minmax",
        max_drop=100,
        min_agreement=0,
    )
    assert result.num_calibration == 4 and result.calibration_skipped == 1


def test_cli_json(run, digits_dir, tmp_path):
    out = tmp_path / "cli.onnx"
    res = CliRunner().invoke(
        main,
        [
            "quantize",
            str(run / "model.onnx"),
            "--calibration",
            str(digits_dir / "train"),
            "--eval",
            str(digits_dir / "val"),
            "--out",
            str(out),
            "--method",
            "minmax",
            "--num-calibration",
            "6",
            "--max-drop",
            "100",
            "--min-agreement",
            "0",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    for key in (
        "int8_model",
        "fp32_accuracy",
        "int8_accuracy",
        "agreement",
        "size_ratio",
        "calibration_manifest",
        "method",
        "gate",
    ):
        assert key in summary
    assert Path(summary["int8_model"]) == out and out.is_file()
    assert Path(summary["calibration_manifest"]).is_file()
    bad = CliRunner().invoke(main, ["quantize", str(run / "model.onnx"), "--out", str(tmp_path / "y.onnx")])
    assert bad.exit_code == 1 and "--calibration" in bad.output


def test_compare_logits_counts_agreement_and_kl():
    fp32 = np.array([[3.0, 0.0], [0.0, 3.0]], np.float32)
    ev = compare_logits(fp32, fp32[::-1], np.array([0, 1]), ("a", "b"))
    assert ev.agreement == 0 and ev.accuracy == 0 and ev.kl > 1
    same = compare_logits(fp32, fp32, np.array([0, 0]), ("a", "b"))
    assert same.agreement == 1 and same.accuracy == 0.5 and same.per_class == {"a": 0.5}


def test_eval_classes_map_labels_synsets_and_indices():
    imagenet = tuple(f"description {i}" for i in range(1000))
    assert map_eval_classes(["description 3", "description 0"], imagenet) == [3, 0]
    # ImageFolder of synset ids, as ImageNet is distributed; edgetl export labels in synset order
    assert map_eval_classes(["n01440764", "n01443537", "n15075141"], imagenet) == [0, 1, 999]
    assert map_eval_classes(["0", "999"], imagenet) == [0, 999]
    # label names win over indices: the digit classes are named "0", "1", "2" in some other order
    assert map_eval_classes(["0", "1"], ("1", "0", "2")) == [1, 0]
    with pytest.raises(DataError, match="n99999999"):
        map_eval_classes(["n99999999"], imagenet)
    with pytest.raises(DataError, match="cat"):
        map_eval_classes(["0", "cat"], ("a", "b"))
    with pytest.raises(DataError, match="class indices"):
        map_eval_classes(["5"], ("a", "b"))


def test_flat_eval_folder_measures_agreement_only(run, digits_dir, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted((digits_dir / "val").rglob("*.png"))[:5]):
        shutil.copy(path, flat / f"{i}.png")
    evalset = load_eval_set(flat, read_model_info(run / "model.onnx"))
    assert evalset.labels is None and len(evalset.inputs) == 5
    assert "cannot measure a top-1 drop" in capsys.readouterr().err
    result = quantize(
        run / "model.onnx",
        tmp_path / "f.onnx",
        calibration=digits_dir / "train",
        eval_dir=flat,
        method="minmax",
        num_calibration=6,
    )
    assert result.passed and result.accuracy_drop is None and result.int8_accuracy is None
    assert result.eval_images == 5 and result.agreement == result.gate["agreement"] == 1.0  # the learnt task


def test_nncf_backend_writes_openvino_ir_with_metadata(run, digits_dir, tmp_path):
    import openvino as ov  # required dependencies: a broken install fails here, it is not skipped

    out = tmp_path / "model.int8.xml"
    result = quantize(
        run / "model.onnx",
        out,
        calibration=digits_dir / "train",
        eval_dir=digits_dir / "val",
        backend="nncf",
        method="nncf-fast-bias-correction",
        num_calibration=12,
        max_drop=100,
        min_agreement=0,
    )
    assert out.is_file() and out.with_suffix(".bin").is_file() and result.backend == "nncf"
    assert result.int8_bytes == out.stat().st_size + out.with_suffix(".bin").stat().st_size
    model = ov.Core().read_model(str(out))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    rt = model.get_rt_info()
    fp32 = read_model_info(run / "model.onnx")
    assert rt["edgetl"]["precision"].astype(str) == "int8"
    assert json.loads(rt["edgetl"]["labels"].astype(str)) == list(fp32.labels)
    assert json.loads(rt["edgetl"]["quantization"].astype(str))["backend"] == "nncf"
    # the gate ran the IR on OpenVINO and compared it with FP32 on the val split
    assert result.eval_images == 12 and result.attempts[0].method == "nncf-fast-bias-correction"
    assert result.size_ratio <= 0.4 and result.passed
    with pytest.raises(EdgetlError, match=r"\.xml"):
        quantize(run / "model.onnx", tmp_path / "x.onnx", calibration=digits_dir / "train", backend="nncf")
