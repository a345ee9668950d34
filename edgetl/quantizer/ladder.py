"""One search loop over a ladder of rungs, each different in kind and dearer than the one before,
stopping at the first whose best candidate the gate does not refuse:

1. calibration: onnxruntime QDQ with each calibration method (auto measures all, keeps the best),
   the first convolution in float, biases corrected;
2. float-nodes: the most quantization-sensitive tensors kept in float, one group at a time;
3. nncf-ptq: NNCF's post-training quantization of the ONNX model, bias correction included;
4. nncf-accuracy-control: NNCF reverting the quantizers that cost most accuracy (labels needed);
5. qat: quantization-aware fine-tuning of a run's model on its train split (a run needed).

A candidate is made by a `Maker` from a `Part` of the calibration images: all of them, or, when the
gate is cross-fitted, each fold model from all images but its fold's. `refit` then makes the
candidate that won again from all the images: the model shipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.console import log
from edgetl.quantizer import bias_correction, nncf_backend, ort
from edgetl.quantizer.calibration import CalibrationSet
from edgetl.quantizer.evaluation import run_model
from edgetl.quantizer.gate import Attempt, Evaluation, Gate, GateReport, score
from edgetl_runtime.modelfile import LITERT, ONNX, OPENVINO
from edgetl_runtime.modelinfo import ModelInfo

RECOVERY_ATTEMPTS = 6  # most sensitive tensor groups tried in float, one at a time
SENSITIVITY_IMAGES = 16


@dataclass(frozen=True)
class Part:
    """The images one model is calibrated on: all given ones, or all but one cross-fit fold's."""

    name: str  # "all" or "without-fold-K"
    inputs: np.ndarray
    labels: np.ndarray | None


Maker = Callable[[Part, Path], Path]  # calibrates a model on a part, written to the path


@dataclass(frozen=True)
class Candidate:
    attempt: Attempt
    evaluation: Evaluation
    report: GateReport
    paths: tuple[Path, ...]  # the model, or its fold models (fold k's judged fold k)
    settings: dict
    predictions: np.ndarray
    make: Maker

    @property
    def path(self) -> Path:
        return self.paths[0]


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

    def whole(self) -> Part:
        return Part("all", self.calib.inputs, self.calib_labels)

    def parts(self) -> list[Part]:
        """What each model of a candidate calibrates on: all images, or all but fold k's."""
        folds = self.gate.folds
        if folds is None:
            return [self.whole()]
        labels = self.calib_labels
        return [
            Part(
                f"without-fold-{k}",
                self.calib.inputs[folds != k],
                None if labels is None else labels[folds != k],
            )
            for k in range(int(folds.max()) + 1)
        ]

    def fit(
        self,
        rung: str,
        method: str,
        exclude: Sequence[str],
        settings: dict,
        make: Maker,
        suffix: str = ONNX.suffix,
    ) -> Candidate:
        """Make the candidate's model(s) and measure them on the gate."""
        attempt = len(self.gate.attempts)
        paths = tuple(make(part, self.work / f"cand-{attempt}-{part.name}{suffix}") for part in self.parts())
        att, ev, report = self.gate.measure(rung, method, exclude, paths)
        cand = Candidate(att, ev, report, paths, settings, self.gate.predictions[-1], make)
        self.candidates.append(cand)
        if self.best is None or score(att) < score(self.best.attempt):
            self.best = cand
        return cand

    def sensitivity_images(self) -> np.ndarray:
        """Gate images the first model of a candidate did not calibrate on."""
        folds = self.gate.folds
        judged = self.gate.inputs if folds is None else self.gate.inputs[folds == 0]
        return judged[:SENSITIVITY_IMAGES]


def _ort_candidate(ctx: Context, method: ort.Method, exclude: tuple[str, ...], rung: str) -> Candidate:
    def make(part: Part, out: Path) -> Path:
        if (method, part.name) not in ctx.ranges:
            log(f"calibrating ({method.value}) on {len(part.inputs)} images ({part.name})")
            ctx.ranges[method, part.name] = ort.calibrate_ranges(ctx.pre, part.inputs, method)
        ort.quantize_with_ranges(ctx.pre, method, ctx.ranges[method, part.name], out, exclude)
        return bias_correction.correct_biases(ctx.pre, out, part.inputs, out)

    settings = {
        "backend": "onnxruntime",
        **ort.ORT_SETTINGS,
        "calibrator": ort.CALIBRATORS[method][1],
        "nodes_to_exclude": list(exclude),
        "bias_correction": {"max_images": bias_correction.MAX_IMAGES},
    }
    return ctx.fit(rung, method.value, exclude, settings, make)


def rung_calibration(ctx: Context) -> None:
    exclude = tuple(dict.fromkeys((*ctx.exclude, *ort.input_layers(ctx.pre))))
    for name in ctx.methods:
        _ort_candidate(ctx, ort.Method(name), exclude, "calibration")
        if ctx.best.attempt.passed and not ctx.search_all:
            return


def rung_float_nodes(ctx: Context) -> None:
    """Greedy: a group stays in float only if the gate improves (fewer flipped predictions); a lower
    KL alone is not worth it, as float nodes break the integer kernels' chain (latency is measured
    per attempt). Stops as soon as a group changes no gate prediction: the outcome cannot change."""
    base = min((c for c in ctx.candidates if c.attempt.rung == "calibration"), key=lambda c: score(c.attempt))
    log("the gate refuses: measuring per-tensor sensitivity to keep the worst tensors in float")
    groups = ort.rank_sensitive_nodes(ctx.pre, base.path, ctx.sensitivity_images())
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
    def make(part: Part, out: Path) -> Path:
        return nncf_backend.quantize_onnx(ctx.model, part.inputs, out, exclude=ctx.exclude)

    settings = {
        "backend": "nncf-onnx",
        "preset": "mixed",
        "fast_bias_correction": True,
        "ignored_scope": list(ctx.exclude),
    }
    ctx.fit("nncf-ptq", "nncf-ptq", ctx.exclude, settings, make)


def rung_nncf_accuracy_control(ctx: Context) -> None:
    def make(part: Part, out: Path) -> Path:
        log(f"NNCF accuracy control, validated on {len(part.inputs)} labelled calibration images")
        return nncf_backend.quantize_onnx_with_accuracy_control(
            ctx.model, part.inputs, part.labels, out, max_drop=ctx.gate.max_drop
        )

    settings = {
        "backend": "nncf-onnx",
        "preset": "mixed",
        "accuracy_control": {
            "max_drop": ctx.gate.max_drop,
            "iterations": nncf_backend.ACCURACY_CONTROL_ITERATIONS,
        },
    }
    ctx.fit("nncf-accuracy-control", "nncf-accuracy-control", (), settings, make)


def rung_qat(ctx: Context) -> None:
    from edgetl.quantizer.qat import finetune_qat

    # applies only without cross-fit: the one model, fine-tuned once, is the candidate
    out, settings = finetune_qat(ctx.run, ctx.model, ctx.info, ctx.work, seed=ctx.seed)
    ctx.fit("qat", "qat", (), settings, lambda part, _: out)


def rung_openvino(ctx: Context) -> None:
    for variant in ctx.methods:

        def make(part: Part, out: Path, variant: str = variant) -> Path:
            log(f"quantizing with NNCF ({variant}) on {len(part.inputs)} images ({part.name})")
            return nncf_backend.quantize_openvino(
                ctx.model,
                part.inputs,
                out,
                fast_bias_correction=nncf_backend.OPENVINO_VARIANTS[variant],
                exclude=ctx.exclude,
            )

        settings = {
            "backend": "nncf",
            "fast_bias_correction": nncf_backend.OPENVINO_VARIANTS[variant],
            "ignored_scope": list(ctx.exclude),
        }
        ctx.fit("openvino", variant, ctx.exclude, settings, make, OPENVINO.suffix)
        if ctx.best.attempt.passed and not ctx.search_all:
            return


def rung_litert(ctx: Context) -> None:
    from edgetl.quantizer import litert

    def make(part: Part, out: Path) -> Path:
        return litert.quantize_tflite(ctx.model, part.inputs, out)

    settings = {"backend": "ai-edge-quantizer", "recipe": litert.RECIPE, "scheme": litert.SCHEME}
    ctx.fit("litert", litert.RECIPE, (), settings, make, LITERT.suffix)


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
    if ctx.run is None:
        return "needs a run folder (its checkpoint and train split)"
    if ctx.gate.folds is not None:
        return "it trains on the train split that holds the cross-fitted gate images; pass --eval"
    return None


def _needs_litert_quantizer(ctx: Context) -> str | None:
    from edgetl.quantizer.litert import litert_quantizer_reason

    return litert_quantizer_reason()


RUNGS: dict[str, Rung] = {
    r.name: r
    for r in (
        Rung("calibration", rung_calibration, _always),
        Rung("float-nodes", rung_float_nodes, _needs_calibration_rung),
        Rung("nncf-ptq", rung_nncf_ptq, _needs_nncf),
        Rung("nncf-accuracy-control", rung_nncf_accuracy_control, _needs_labels),
        Rung("qat", rung_qat, _needs_run),
        Rung("openvino", rung_openvino, _needs_nncf),
        Rung("litert", rung_litert, _needs_litert_quantizer),
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


def refit(ctx: Context, best: Candidate) -> tuple[Path, dict | None]:
    """The model to ship, and with a cross-fitted gate the record of how it relates to the fold
    models the gate measured: it is `best` made again from all the images, so the gate could not
    judge it on any of them; their agreement with it is recorded, marked as in-sample."""
    folds = ctx.gate.folds
    if folds is None:
        return best.path, None
    whole = ctx.whole()
    log(f"refitting {best.attempt.rung}/{best.attempt.method} on all {len(whole.inputs)} images")
    shipped = best.make(whole, ctx.work / f"shipped{best.path.suffix}")
    pred = run_model(shipped, ctx.gate.inputs, ctx.gate.backend).argmax(1)
    sizes = [int(np.sum(folds == k)) for k in range(len(best.paths))]
    record = {
        "folds": len(best.paths),
        "measured": [
            {"model": f"fold {k}", "calibrated_on": len(whole.inputs) - n, "judged_on": n}
            for k, n in enumerate(sizes)
        ],
        "shipped": {
            "calibrated_on": len(whole.inputs),
            "differs": (
                f"the same method and settings calibrated on all {len(whole.inputs)} images instead "
                "of the other folds' share; the gate measured the fold models, not it"
            ),
        },
        "shipped_vs_fold_models_agreement": float(np.mean(pred == best.predictions)),
        "shipped_vs_fp32_agreement_in_sample": float(np.mean(pred == ctx.gate.fp32_logits.argmax(1))),
    }
    log(
        f"the refit model agrees with the fold models on {100 * record['shipped_vs_fold_models_agreement']:.2f}% "
        f"of the gate images"
    )
    return shipped, record
