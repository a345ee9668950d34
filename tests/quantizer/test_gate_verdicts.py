"""The INT8 gate's verdict at the edges of its policy, and the candidate the ladder keeps: crafted
predictions and fake candidates, no model run (each test fails when the rule it names is broken)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl.quantizer import judge
from edgetl.quantizer.gate import LATENCY_RUNS, Attempt, Evaluation, GateReport, measure_latencies
from edgetl.quantizer.ladder import Context, climb


def _judge(lost: int, gained: int, n: int, *, max_drop: float, min_agreement: float = 0.0, **kw):
    """Verdict on n labelled images of class 0: INT8 misses `lost` images FP32 gets right and gets
    `gained` right that FP32 misses."""
    labels = np.zeros(n, int)
    fp32, int8 = labels.copy(), labels.copy()
    int8[:lost] = 1
    fp32[lost : lost + gained] = 1
    options = dict(size_ratio=0.26, max_size_ratio=0.3, calibration_images=100, held_out=False)
    return judge(fp32, int8, labels, max_drop=max_drop, min_agreement=min_agreement, **{**options, **kw})


def test_no_drop_on_a_wide_interval_warns_instead_of_passing():
    # 5 lost and 5 gained of 200: no drop at the point, but the interval reaches past 1 point
    report = _judge(5, 5, 200, max_drop=1.0)
    assert report.drop == 0 and report.drop_ci95[0] < 0 < 1.0 < report.drop_ci95[1]
    assert report.verdict == "warn" and report.passed and "cannot tell" in report.reason
    assert "(5 lost, 5 gained)" in report.reason


def test_an_interval_inside_the_bound_passes_and_one_above_it_fails():
    assert _judge(5, 5, 200, max_drop=6.0).verdict == "pass"  # upper end about +4.1
    # the upper end exactly at the bound is within it
    upper = _judge(5, 5, 200, max_drop=6.0).drop_ci95[1]
    edge = _judge(5, 5, 200, max_drop=upper)
    assert edge.verdict == "pass" and "within --max-drop" in edge.reason
    # the lower end exactly at the bound is not above it: the images cannot tell
    lower = _judge(12, 0, 200, max_drop=0.0).drop_ci95[0]
    at_lower = _judge(12, 0, 200, max_drop=lower)
    assert at_lower.verdict == "warn" and at_lower.passed
    above = _judge(12, 0, 200, max_drop=lower - 0.01)
    assert above.verdict == "fail" and not above.passed and "lies above --max-drop" in above.reason


def test_agreement_bounds_pass_warn_and_fail():
    all_agree = _judge(0, 0, 400, max_drop=1.0, min_agreement=0.99)
    assert all_agree.verdict == "pass" and all_agree.agreement_ci95[0] >= 0.99
    # the bound inside the agreement interval: warn, not pass
    some = _judge(2, 0, 400, max_drop=5.0, min_agreement=0.99)
    assert some.agreement_ci95[0] < 0.99 < some.agreement_ci95[1]
    assert some.verdict == "warn" and "cannot show it reaches --min-agreement 99%" in some.reason
    # the interval's upper end exactly at the bound is not below it
    at = _judge(2, 0, 400, max_drop=5.0, min_agreement=some.agreement_ci95[1])
    assert at.verdict == "warn"


def test_size_exactly_at_the_bound_passes_and_above_it_fails():
    assert _judge(0, 0, 400, max_drop=1.0, size_ratio=0.3).verdict == "pass"
    big = _judge(0, 0, 400, max_drop=1.0, size_ratio=0.31)
    assert big.verdict == "fail" and not big.passed and "more than 0.3x" in big.reason


def test_report_counts_and_resolution():
    report = _judge(3, 1, 150, max_drop=0.5)
    assert (report.fp32_only, report.int8_only, report.images) == (3, 1, 150)
    assert report.fp32 == pytest.approx(149 / 150) and report.int8 == pytest.approx(147 / 150)
    assert report.drop == pytest.approx(200 / 150) and report.metric == "top1"
    assert report.calibration_images == 100 and report.max_drop == 0.5
    assert report.resolvable_drop == pytest.approx(700 / 150)


def test_agreement_only_gate_says_how_its_images_were_kept_apart():
    labels = np.zeros(60, int)
    options = dict(max_drop=1.0, min_agreement=0.0, size_ratio=0.2, max_size_ratio=0.3, calibration_images=9)
    crossed = judge(labels, labels, None, held_out=True, folds=2, **options)
    assert "2-fold cross-fitted" in crossed.reason and crossed.resolvable_drop is None
    # without labels nothing is lost or gained, whatever the agreement
    assert (crossed.drop, crossed.fp32_only, crossed.int8_only, crossed.int8) == (None, 0, 0, 1.0)
    held = judge(labels, labels, None, held_out=True, **options)
    assert "held out of the calibration images" in held.reason and "cross-fitted" not in held.reason
    bare = judge(labels, labels, None, held_out=False, **options)
    assert bare.reason.endswith("no labels: agreement only")


# --- the ladder: which candidate is kept -------------------------------------------------------


def _attempt(rung: str, verdict: str, kl: float, agreement: float = 0.9, exclude=()) -> Attempt:
    return Attempt(
        rung, "minmax", tuple(exclude), agreement, kl, None, None, None, 0.26, 1.0, verdict, verdict != "fail"
    )


class FakeGate:
    """Measures nothing: hands out the attempts it was given, in order, and records them like Gate."""

    folds = None

    def __init__(self, attempts: list[Attempt]) -> None:
        self.queue = list(attempts)
        self.attempts, self.predictions = [], []

    def measure(self, rung, method, exclude, paths):
        attempt = self.queue.pop(0)
        self.attempts.append(attempt)
        self.predictions.append(np.zeros(3, int))
        report = GateReport(
            "agreement", 3, 9, 1.0, attempt.agreement, None, None, 1.0, attempt.agreement, (0.0, 1.0),
            0.0, None, 0, 0, True, attempt.passed, attempt.verdict, attempt.verdict,
        )  # fmt: skip
        return attempt, Evaluation(None, attempt.agreement, attempt.kl), report


def _context(attempts: list[Attempt], tmp_path: Path) -> Context:
    calib = SimpleNamespace(inputs=np.zeros((3, 1)))
    return Context(
        model=tmp_path / "model.onnx", info=None, calib=calib, calib_labels=None, gate=FakeGate(attempts),
        work=tmp_path, methods=("minmax",), search_all=True, exclude=(), run=None, seed=0,
    )  # fmt: skip


def _fit_all(ctx: Context, n: int) -> None:
    for i in range(n):
        ctx.fit(ctx.gate.queue[0].rung, "minmax", (), {"i": i}, lambda part, out: out)


@pytest.mark.parametrize(
    "verdicts, kept",
    [
        # a passing candidate beats a warning one, whatever their KL
        ((("warn", 0.001), ("pass", 0.5)), 1),
        # a warning one beats a failing one
        ((("fail", 0.0), ("warn", 0.9)), 1),
        # among passing ones the lowest KL is kept, in any order
        ((("pass", 0.3), ("pass", 0.1), ("pass", 0.2)), 1),
        ((("pass", 0.1), ("pass", 0.3)), 0),
        # the first of equals stays
        ((("pass", 0.2), ("pass", 0.2)), 0),
    ],
    ids=["pass-over-warn", "warn-over-fail", "lowest-kl", "lowest-kl-first", "first-of-equals"],
)
def test_ladder_keeps_the_best_candidate(verdicts, kept, tmp_path):
    attempts = [_attempt("calibration", v, kl) for v, kl in verdicts]
    ctx = _context(attempts, tmp_path)
    _fit_all(ctx, len(attempts))
    assert ctx.best is ctx.candidates[kept] and ctx.best.settings == {"i": kept}
    assert len(ctx.candidates) == len(attempts)


def test_ties_on_kl_go_to_agreement_then_fewer_float_nodes(tmp_path):
    attempts = [
        _attempt("calibration", "pass", 0.1, 0.90),
        _attempt("calibration", "pass", 0.1, 0.95, exclude=("a", "b")),
        _attempt("calibration", "pass", 0.1, 0.95, exclude=("a",)),
    ]
    ctx = _context(attempts, tmp_path)
    _fit_all(ctx, 3)
    assert ctx.best is ctx.candidates[2]


def test_climb_stops_at_the_first_rung_whose_best_passes(tmp_path, monkeypatch):
    from edgetl.quantizer import ladder

    ran = []

    def rung(name):
        return ladder.Rung(name, lambda ctx: (ran.append(name), _fit_all(ctx, 1)), lambda ctx: None)

    for name in ("calibration", "float-nodes", "nncf-ptq"):
        monkeypatch.setitem(ladder.RUNGS, name, rung(name))
    attempts = [_attempt("calibration", "fail", 0.0), _attempt("float-nodes", "pass", 0.4)]
    ctx = _context(attempts, tmp_path)
    best = climb(ctx, ("calibration", "float-nodes", "nncf-ptq"))
    assert ran == ["calibration", "float-nodes"] and best.attempt.rung == "float-nodes"
    # nothing passes: every rung is climbed and the best refused one is returned
    ran.clear()
    attempts = [
        _attempt(r, "fail", kl) for r, kl in (("calibration", 0.3), ("float-nodes", 0.1), ("nncf-ptq", 0.2))
    ]
    best = climb(_context(attempts, tmp_path), ("calibration", "float-nodes", "nncf-ptq"))
    assert ran == ["calibration", "float-nodes", "nncf-ptq"] and best.attempt.rung == "float-nodes"
    assert not best.attempt.passed


def test_resolvable_drop_is_the_fewest_images_lost_whose_interval_clears_the_bound():
    from edgetl.quantizer import paired_drop_ci, resolvable_drop

    # on 12 images only all 12 lost clears 45 points (11 lost starts at +39.4); nothing clears 50
    assert resolvable_drop(12, 45.0) == 100.0 and resolvable_drop(12, 50.0) is None
    # a lower end exactly at the bound does not clear it: one more image is needed
    at = paired_drop_ci(7, 0, 150)[0]
    assert resolvable_drop(150, at) == pytest.approx(800 / 150)
    assert resolvable_drop(150, at - 1e-9) == pytest.approx(700 / 150)


def test_compare_logits_without_labels_measures_agreement_only():
    from edgetl.quantizer import compare_logits

    fp32 = np.array([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], np.float32)
    int8 = np.array([[3.0, 0.0], [3.0, 0.0], [2.0, 0.0]], np.float32)
    ev = compare_logits(fp32, int8, None, ("a", "b"))
    assert ev.accuracy is None and ev.per_class == {} and ev.agreement == pytest.approx(2 / 3)


def test_latency_is_in_milliseconds(tmp_path):
    """The text ladder ranks INT8 against FP32 by this figure: a one-node model takes well under a
    millisecond a run, never seconds."""
    from tinyonnx import write_identity

    from edgetl.quantizer.gate import measure_latency

    write_identity(tmp_path / "identity.onnx", [1, 3])
    ms = measure_latency(tmp_path / "identity.onnx", np.zeros((4, 3), np.float32), "onnxruntime-cpu")
    assert 0 < ms < 50


def test_each_cross_fit_part_calibrates_on_the_other_folds_with_their_own_labels(tmp_path):
    ctx = _context([], tmp_path)
    ctx.gate.folds = np.array([0, 1, 0, 1, 1])
    ctx.calib = SimpleNamespace(inputs=np.arange(5)[:, None] * 10)
    ctx.calib_labels = np.arange(5)
    parts = ctx.parts()
    assert [p.name for p in parts] == ["without-fold-0", "without-fold-1"]
    assert parts[0].labels.tolist() == [1, 3, 4] and parts[1].labels.tolist() == [0, 2]
    for part in parts:  # each image keeps its own label
        assert (part.inputs[:, 0] == part.labels * 10).all()


# --- the rungs that try several candidates: where each stops ---------------------------------------


class ScriptedGate(FakeGate):
    """FakeGate whose candidates also come with their own gate predictions."""

    def __init__(self, scripted: list[tuple[Attempt, list[int]]]) -> None:
        super().__init__([a for a, _ in scripted])
        self.scripted_predictions = [np.array(p) for _, p in scripted]
        self.inputs = np.zeros((4, 1))

    def measure(self, rung, method, exclude, paths):
        out = super().measure(rung, method, exclude, paths)
        self.predictions[-1] = self.scripted_predictions.pop(0)
        return out


def _stand_in_for_ort_candidates(monkeypatch) -> list[tuple[str, ...]]:
    """onnxruntime candidates made of nothing, measured by the context's gate; returns the float
    node sets they were asked for."""
    from edgetl.quantizer import ladder

    tried = []

    def candidate(ctx, method, exclude, rung):
        tried.append(exclude)
        return ctx.fit(rung, method.value, exclude, {}, lambda part, out: out)

    monkeypatch.setattr(ladder, "_ort_candidate", candidate)
    return tried


def _float_nodes_context(tmp_path, monkeypatch, scripted, groups):
    from edgetl.quantizer import ladder

    tried = _stand_in_for_ort_candidates(monkeypatch)
    monkeypatch.setattr(ladder.ort, "rank_sensitive_nodes", lambda *a: groups)
    ctx = _context([], tmp_path)
    ctx.gate, ctx._pre = ScriptedGate(scripted), tmp_path / "pre.onnx"
    ctx.fit("calibration", "minmax", (), {}, lambda part, out: out)  # the refused calibration model
    return ctx, tried


def test_float_nodes_keeps_groups_that_help_and_stops_at_the_first_pass(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from edgetl.quantizer import ladder

    base = (replace(_attempt("calibration", "fail", 0.3, 0.5), latency_ms=10.0), [0, 0, 0, 0])
    better = (_attempt("float-nodes", "fail", 0.2, 0.75, exclude=("a",)), [1, 0, 0, 0])
    worse = (_attempt("float-nodes", "fail", 0.1, 0.5, exclude=("a", "b")), [2, 0, 0, 0])
    passing = _attempt("float-nodes", "pass", 0.3, 1.0, exclude=("a", "c"))
    passes = (replace(passing, latency_ms=13.5), [1, 1, 0, 0])
    never = (_attempt("float-nodes", "pass", 0.0, 1.0), [1, 1, 1, 0])
    groups = [("a",), ("b",), ("c",), ("d",)]
    ctx, tried = _float_nodes_context(tmp_path, monkeypatch, [base, better, worse, passes, never], groups)
    ladder.rung_float_nodes(ctx)
    # a group that helped stays in float, one that did not is dropped again; nothing after the pass
    assert tried == [("a",), ("a", "b"), ("a", "c")]
    assert ctx.best.attempt is passes[0] and ctx.gate.queue == [never[0]]
    # what keeping them in float costs, against the refused calibration model
    assert "2 float nodes cost +3.50 ms per image" in " ".join(capsys.readouterr().err.split())


def test_rungs_that_need_labels_nncf_or_a_run_say_why_they_do_not_apply(tmp_path, monkeypatch):
    from edgetl.quantizer import ladder

    ctx = _context([], tmp_path)
    qat = ladder.RUNGS["qat"].applies
    assert "needs a run folder" in qat(ctx)
    ctx.run = tmp_path
    assert qat(ctx) is None
    ctx.gate.folds = np.zeros(3, int)  # cross-fitted gate images come from the train split QAT trains on
    assert "pass --eval" in qat(ctx)
    ctx.gate.folds = None
    applies = ladder.RUNGS["nncf-accuracy-control"].applies
    assert "needs labelled calibration images" in applies(ctx)
    ctx.calib_labels = np.zeros(3, int)
    for installed in (True, False):
        monkeypatch.setattr(ladder.nncf_backend, "nncf_available", lambda installed=installed: installed)
        reason = applies(ctx)
        assert reason is None if installed else reason == "nncf is not installed (pip install 'edgetl[nncf]')"


def test_float_nodes_stops_when_a_group_changes_no_gate_prediction(tmp_path, monkeypatch):
    from edgetl.quantizer import ladder

    base = (_attempt("calibration", "fail", 0.3, 0.5), [0, 0, 0, 0])
    same = (_attempt("float-nodes", "fail", 0.2, 0.5, exclude=("a",)), [0, 0, 0, 0])
    later = (_attempt("float-nodes", "pass", 0.1, 1.0, exclude=("a", "b")), [1, 1, 0, 0])
    ctx, tried = _float_nodes_context(tmp_path, monkeypatch, [base, same, later], [("a",), ("b",)])
    ladder.rung_float_nodes(ctx)
    assert tried == [("a",)] and not ctx.best.attempt.passed


@pytest.mark.parametrize("first, tried", [("pass", 1), ("warn", 1), ("fail", 2)])  # warn passes
@pytest.mark.parametrize("rung", ["calibration", "openvino"])
def test_a_rung_of_variants_stops_at_the_first_that_passes_unless_told_to_search_all(
    rung, first, tried, tmp_path, monkeypatch
):
    from edgetl.quantizer import ladder

    _stand_in_for_ort_candidates(monkeypatch)
    monkeypatch.setattr(ladder.ort, "input_layers", lambda pre: ())
    monkeypatch.setattr(ladder.nncf_backend, "quantize_openvino", lambda model, inputs, out, **kw: out)
    methods = ("minmax", "entropy") if rung == "calibration" else tuple(ladder.nncf_backend.OPENVINO_VARIANTS)
    for search_all in (False, True):
        ctx = _context([_attempt(rung, first, 0.2), _attempt(rung, "pass", 0.1)], tmp_path)
        ctx.methods, ctx.search_all, ctx._pre = methods, search_all, tmp_path / "pre.onnx"
        ladder.RUNGS[rung].run(ctx)
        assert len(ctx.candidates) == (2 if search_all else tried)
        assert ctx.best.attempt.passed and ctx.best is ctx.candidates[-1 if search_all or tried == 2 else 0]


def test_the_gate_logs_top1_and_its_interval_only_when_it_has_labels(tmp_path, capsys):
    from tinyonnx import write_identity

    from edgetl.quantizer.gate import Gate

    model = write_identity(tmp_path / "identity.onnx", ["n", 3])
    inputs = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    for labels in (np.array([0, 1, 2, 1]), None):
        gate = Gate(
            fp32_model=model, inputs=inputs, labels=labels, names=("a", "b", "c"), max_drop=0.5,
            min_agreement=0.5, backend="onnxruntime-cpu", suffix=".onnx", max_size_ratio=2.0,
            calibration_images=4, held_out=True,
        )  # fmt: skip
        attempt, _, report = gate.measure("calibration", "minmax", (), [model])
        line = " ".join(capsys.readouterr().err.split())  # rich wraps at the console width
        assert attempt.agreement == 1.0 and "agreement 100.00%" in line
        if labels is None:
            assert report.drop is None and "top-1" not in line
            assert attempt.to_dict()["drop_ci95"] is None
        else:
            assert "top-1 75.00% (drop +0.00 [" in line
            assert attempt.to_dict()["drop_ci95"] == list(attempt.drop_ci95)


def test_a_cross_fitted_gate_judges_each_image_by_the_model_of_its_own_fold(tmp_path):
    from tinyonnx import write_identity

    from edgetl.quantizer.gate import Gate

    same = write_identity(tmp_path / "identity.onnx", ["n", 3])
    flipped = write_identity(tmp_path / "neg.onnx", ["n", 3], op="Neg")  # one-hot -> argmax elsewhere
    gate = Gate(
        fp32_model=same, inputs=np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]], labels=None,
        names=("a", "b", "c"), max_drop=0.5, min_agreement=0.4, backend="onnxruntime-cpu", suffix=".onnx",
        max_size_ratio=2.0, calibration_images=6, held_out=False, folds=np.array([0, 1, 0, 1, 0, 1]),
    )  # fmt: skip
    attempt, _, report = gate.measure("calibration", "minmax", (), [same, flipped])
    assert attempt.agreement == 0.5 and "2-fold cross-fitted" in report.reason
    np.testing.assert_array_equal(gate.run([same, flipped]).argmax(1), [0, 0, 2, 1, 1, 0])
    with pytest.raises(ValueError, match="1 fold models for 2 folds"):
        gate.run([same])


def test_candidates_are_timed_in_turns_so_load_falls_on_all_alike(monkeypatch):
    """measure_latencies alternates the models round by round: each round times every model once,
    FP32 included, instead of one model's runs all before the next's."""
    import edgetl_runtime.backends as backends

    calls: list[str] = []

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, x):
            calls.append(self.name)

    monkeypatch.setattr(backends, "load_session", lambda path, backend, threads=None: Recording(str(path)))
    p50 = measure_latencies({"fp32": "a", "int8": "b"}, np.zeros((1, 3)), "onnxruntime-cpu", rounds=5)
    assert set(p50) == {"fp32", "int8"}
    timed = calls[6:]  # after three warm-up calls each
    per_round = LATENCY_RUNS // 5
    assert timed == (["a"] * per_round + ["b"] * per_round) * 5
