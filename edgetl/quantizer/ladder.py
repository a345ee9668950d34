"""One search loop over a ladder of rungs, each different in kind and dearer than the one before,
stopping at the first whose best candidate the gate does not refuse:

1. calibration: onnxruntime QDQ with each calibration method (auto measures all, keeps the best);
2. float-nodes: the most quantization-sensitive tensors kept in float, one group at a time;
3. nncf-ptq: NNCF's post-training quantization of the ONNX model, bias correction included;
4. nncf-accuracy-control: NNCF reverting the quantizers that cost most accuracy (labels needed);
5. qat: quantization-aware fine-tuning of a run's model on its train split (a run needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.console import log
from edgetl.quantizer import nncf_backend, ort
from edgetl.quantizer.calibration import CalibrationSet
from edgetl.quantizer.gate import Attempt, Evaluation, Gate, GateReport, score
from edgetl_runtime.modelfile import ONNX, OPENVINO
from edgetl_runtime.modelinfo import ModelInfo

RECOVERY_ATTEMPTS = 6  # most sensitive tensor groups tried in float, one at a time
SENSITIVITY_IMAGES = 16


@dataclass(frozen=True)
class Candidate:
    attempt: Attempt
    evaluation: Evaluation
    report: GateReport
    path: Path
    settings: dict
    predictions: np.ndarray


@dataclass(kw_only=True)
class Context:
    model: Path  # the FP32 ONNX model
    info: ModelInfo
    calib: CalibrationSet
    calib_labels: np.ndarray | None  # the calibration images' classes in the model's indices
    gate: Gate
    work: Path
    methods: Sequence[str]  # calibration methods (or NNCF variants), in the order tried
    search_all: bool
    exclude: tuple[str, ...]
    run: Path | None
    seed: int
    best: Candidate | None = None
    candidates: list[Candidate] = field(default_factory=list)
    ranges: dict = field(default_factory=dict)
    _pre: Path | None = None

    @property
    def pre(self) -> Path:
        if self._pre is None:
            self._pre = ort.preprocess_for_quantization(self.model, self.work / "pre.onnx")
        return self._pre

    def measure(
        self, rung: str, method: str, exclude: Sequence[str], path: Path, settings: dict
    ) -> Candidate:
        att, ev, report = self.gate.measure(rung, method, exclude, path)
        cand = Candidate(att, ev, report, path, settings, self.gate.predictions[-1])
        self.candidates.append(cand)
        if self.best is None or score(att) < score(self.best.attempt):
            self.best = cand
        return cand

    def candidate_path(self, suffix: str = ONNX.suffix) -> Path:
        return self.work / f"cand-{len(self.gate.attempts)}{suffix}"


def _ort_candidate(ctx: Context, method: ort.Method, exclude: tuple[str, ...], rung: str) -> Candidate:
    if method not in ctx.ranges:
        log(f"calibrating ({method.value}) on {len(ctx.calib)} images")
        ctx.ranges[method] = ort.calibrate_ranges(ctx.pre, ctx.calib.inputs, method)
    out = ctx.candidate_path()
    ort.quantize_with_ranges(ctx.pre, method, ctx.ranges[method], out, exclude)
    settings = {
        "backend": "onnxruntime",
        **ort.ORT_SETTINGS,
        "calibrator": ort.CALIBRATORS[method][1],
        "nodes_to_exclude": list(exclude),
    }
    return ctx.measure(rung, method.value, exclude, out, settings)


def rung_calibration(ctx: Context) -> None:
    for name in ctx.methods:
        _ort_candidate(ctx, ort.Method(name), ctx.exclude, "calibration")
        if ctx.best.attempt.passed and not ctx.search_all:
            return


def rung_float_nodes(ctx: Context) -> None:
    """Greedy: a group stays in float only if the gate improves (fewer flipped predictions); a lower
    KL alone is not worth it, as float nodes break the integer kernels' chain (latency is measured
    per attempt). Stops as soon as a group changes no gate prediction: the outcome cannot change."""
    base = min((c for c in ctx.candidates if c.attempt.rung == "calibration"), key=lambda c: score(c.attempt))
    log("the gate refuses: measuring per-tensor sensitivity to keep the worst tensors in float")
    groups = ort.rank_sensitive_nodes(ctx.pre, base.path, ctx.gate.inputs[:SENSITIVITY_IMAGES])
    method = ort.Method(base.attempt.method)
    kept = base
    for group in groups[:RECOVERY_ATTEMPTS]:
        cand = _ort_candidate(
            ctx, method, tuple(dict.fromkeys((*kept.attempt.exclude, *group))), "float-nodes"
        )
        if np.array_equal(cand.predictions, kept.predictions):
            log("  keeping this group in float changed no gate prediction: stopping this rung")
            return
        if (cand.attempt.passed, cand.attempt.agreement) > (kept.attempt.passed, kept.attempt.agreement):
            kept = cand
        if kept.attempt.passed:
            cost = kept.attempt.latency_ms - base.attempt.latency_ms
            log(f"  {len(kept.attempt.exclude)} float nodes cost {cost:+.2f} ms per image on this CPU")
            return


def rung_nncf_ptq(ctx: Context) -> None:
    out = nncf_backend.quantize_onnx(ctx.model, ctx.calib.inputs, ctx.candidate_path(), exclude=ctx.exclude)
    settings = {
        "backend": "nncf-onnx",
        "preset": "mixed",
        "fast_bias_correction": True,
        "ignored_scope": list(ctx.exclude),
    }
    ctx.measure("nncf-ptq", "nncf-ptq", ctx.exclude, out, settings)


def rung_nncf_accuracy_control(ctx: Context) -> None:
    log(f"NNCF accuracy control, validated on the {len(ctx.calib)} labelled calibration images")
    out = nncf_backend.quantize_onnx_with_accuracy_control(
        ctx.model, ctx.calib.inputs, ctx.calib_labels, ctx.candidate_path(), max_drop=ctx.gate.max_drop
    )
    settings = {
        "backend": "nncf-onnx",
        "preset": "mixed",
        "accuracy_control": {
            "max_drop": ctx.gate.max_drop,
            "iterations": nncf_backend.ACCURACY_CONTROL_ITERATIONS,
        },
    }
    ctx.measure("nncf-accuracy-control", "nncf-accuracy-control", (), out, settings)


def rung_qat(ctx: Context) -> None:
    from edgetl.quantizer.qat import finetune_qat

    out, settings = finetune_qat(ctx.run, ctx.model, ctx.info, ctx.work, seed=ctx.seed)
    ctx.measure("qat", "qat", (), out, settings)


def rung_openvino(ctx: Context) -> None:
    for variant in ctx.methods:
        log(f"quantizing with NNCF ({variant}) on {len(ctx.calib)} images")
        out = nncf_backend.quantize_openvino(
            ctx.model,
            ctx.calib.inputs,
            ctx.candidate_path(OPENVINO.suffix),
            fast_bias_correction=nncf_backend.OPENVINO_VARIANTS[variant],
            exclude=ctx.exclude,
        )
        settings = {
            "backend": "nncf",
            "fast_bias_correction": nncf_backend.OPENVINO_VARIANTS[variant],
            "ignored_scope": list(ctx.exclude),
        }
        ctx.measure("openvino", variant, ctx.exclude, out, settings)
        if ctx.best.attempt.passed and not ctx.search_all:
            return


@dataclass(frozen=True)
class Rung:
    name: str
    run: Callable[[Context], None]
    applies: Callable[[Context], str | None]  # why it does not apply, or None


def _always(ctx: Context) -> str | None:
    return None


def _needs_nncf(ctx: Context) -> str | None:
    return None if nncf_backend.nncf_available() else "nncf is not installed (pip install 'edgetl[nncf]')"


def _needs_labels(ctx: Context) -> str | None:
    if ctx.calib_labels is None:
        return "needs labelled calibration images (a run, or class folders named like the model's labels)"
    return _needs_nncf(ctx)


def _needs_calibration_rung(ctx: Context) -> str | None:
    if any(c.attempt.rung == "calibration" for c in ctx.candidates):
        return None
    return "nothing from the calibration rung to keep nodes of in float"


def _needs_run(ctx: Context) -> str | None:
    return None if ctx.run is not None else "needs a run folder (its checkpoint and train split)"


RUNGS: dict[str, Rung] = {
    r.name: r
    for r in (
        Rung("calibration", rung_calibration, _always),
        Rung("float-nodes", rung_float_nodes, _needs_calibration_rung),
        Rung("nncf-ptq", rung_nncf_ptq, _needs_nncf),
        Rung("nncf-accuracy-control", rung_nncf_accuracy_control, _needs_labels),
        Rung("qat", rung_qat, _needs_run),
        Rung("openvino", rung_openvino, _needs_nncf),
    )
}
ONNX_LADDER = ("calibration", "float-nodes", "nncf-ptq", "nncf-accuracy-control", "qat")


def climb(ctx: Context, rungs: Sequence[str]) -> Candidate:
    """Run the rungs in order until the best candidate so far is not refused."""
    for name in rungs:
        rung = RUNGS[name]
        why_not = rung.applies(ctx)
        if why_not is not None:
            log(f"skipping {name}: {why_not}")
            continue
        rung.run(ctx)
        if ctx.best is not None and ctx.best.attempt.passed:
            break
    if ctx.best is None:
        raise RuntimeError("no rung of the ladder applied")  # the first rung always applies
    return ctx.best
