"""The INT8 accuracy gate: paired outcomes of FP32 and INT8 on images that did not calibrate the model.

On a few hundred images one image is a large share, so the gate reports an interval, not a point.
The top-1 drop is (b - c) / n, b the images only FP32 gets right, c those only INT8 gets right. Its
95% interval is the exact conditional one behind McNemar's test: Clopper-Pearson on b out of the
b + c discordant images, mapped to the drop. It is exact for any number of discordant images (a
bootstrap of 1 or 2 discordant images is degenerate), and conditioning on b + c states what these
images show; with no discordant image at all the interval is [0, 0]. Agreement with FP32 gets a
Clopper-Pearson interval over all gate images.

Without labelled gate images the given calibration images are cross-fitted: split in folds, each
image is judged by a model calibrated on the other folds only, and the paired outcomes of all the
images are pooled for the verdict; the model shipped is then calibrated on all of them (see
`quantize`, which records how it differs from the fold models it was judged by).

Policy: fail when the interval lies entirely above --max-drop (or the agreement interval entirely
below --min-agreement), pass when it lies entirely within the bound, warn when the images cannot tell.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from edgetl.console import log
from edgetl.quantizer.evaluation import artifact_bytes, reference_bytes, run_model
from edgetl_runtime.modelfile import model_format
from edgetl_runtime.predictor import softmax

CONFIDENCE = 0.95
LATENCY_RUNS = 20


class Verdict(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


def proportion_ci(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a proportion k/n."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(int(k), int(n)).proportion_ci(CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)


def paired_drop_ci(fp32_only: int, int8_only: int, n: int) -> tuple[float, float]:
    """95% interval of the top-1 drop in points, from the discordant pairs of n paired outcomes."""
    m = fp32_only + int8_only
    if m == 0:
        return (0.0, 0.0)
    lo, hi = proportion_ci(fp32_only, m)
    return (100.0 * m * (2 * lo - 1) / n, 100.0 * m * (2 * hi - 1) / n)


def resolvable_drop(n: int, max_drop: float) -> float | None:
    """The smallest drop (points) n images can show to exceed max_drop: k images lost, none gained,
    with the interval's low end above the bound. None when no drop on n images can."""
    for k in range(1, n + 1):
        if paired_drop_ci(k, 0, n)[0] > max_drop:
            return 100.0 * k / n
    return None


@dataclass(frozen=True)
class Evaluation:
    """How a model's predictions compare with labels and with the FP32 model's."""

    accuracy: float | None  # top-1 on labelled images, None without labels
    agreement: float  # share of images whose top-1 equals the FP32 model's
    kl: float  # mean KL(FP32 || INT8) of the softmax
    per_class: dict[str, float] = field(default_factory=dict)


def compare_logits(
    fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None, names: Sequence[str]
) -> Evaluation:
    p, q = softmax(fp32), softmax(int8)
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
    pred = int8.argmax(1)
    agreement = float(np.mean(pred == fp32.argmax(1)))
    if labels is None:
        return Evaluation(None, agreement, kl)
    per_class = {
        names[c]: float(np.mean(pred[labels == c] == c)) for c in np.unique(labels) if c < len(names)
    }
    return Evaluation(float(np.mean(pred == labels)), agreement, kl, per_class)


@dataclass(frozen=True)
class GateReport:
    """The `gate` object of the JSON summary; scripts rely on these keys."""

    metric: str  # "top1" with labels, else "agreement"
    images: int  # gate images, none of which calibrated the model
    calibration_images: int
    fp32: float  # FP32 top-1, or 1.0 (FP32 agrees with itself) for the agreement metric
    int8: float
    drop: float | None  # top-1 points lost
    drop_ci95: tuple[float, float] | None
    max_drop: float
    agreement: float
    agreement_ci95: tuple[float, float]
    min_agreement: float
    resolvable_drop: float | None  # smallest drop these images can show to exceed max_drop
    fp32_only: int  # images only FP32 gets right
    int8_only: int
    held_out: bool  # the gate images came from the given calibration images (held out or cross-fitted)
    passed: bool
    verdict: str
    reason: str
    # with a cross-fitted gate: the fold models measured, the model shipped, how they agree
    cross_fit: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("drop_ci95", "agreement_ci95"):
            d[k] = None if d[k] is None else list(d[k])
        return d


def judge(
    fp32_pred: np.ndarray,
    int8_pred: np.ndarray,
    labels: np.ndarray | None,
    *,
    max_drop: float,
    min_agreement: float,
    size_ratio: float,
    max_size_ratio: float,
    calibration_images: int,
    held_out: bool,
    folds: int = 0,
) -> GateReport:
    """Verdict on one candidate from its paired predictions (class indices) on the gate images;
    `folds` > 0 when they come from that many cross-fitted fold models."""
    n = len(fp32_pred)
    agree = int(np.sum(fp32_pred == int8_pred))
    agreement = agree / n
    a_ci = proportion_ci(agree, n)
    verdicts, reasons = [], []
    if labels is not None:
        fp32_ok, int8_ok = fp32_pred == labels, int8_pred == labels
        b, c = int(np.sum(fp32_ok & ~int8_ok)), int(np.sum(~fp32_ok & int8_ok))
        drop = 100.0 * (b - c) / n
        ci = paired_drop_ci(b, c, n)
        fp32, int8 = float(fp32_ok.mean()), float(int8_ok.mean())
        where = f"drop {drop:+.2f} points, 95% interval [{ci[0]:+.2f}, {ci[1]:+.2f}] on {n} images ({b} lost, {c} gained)"
        if ci[0] > max_drop:
            verdicts.append(Verdict.FAIL)
            reasons.append(f"{where}: lies above --max-drop {max_drop}")
        elif ci[1] > max_drop:
            verdicts.append(Verdict.WARN)
            reasons.append(f"{where}: these images cannot tell whether it exceeds --max-drop {max_drop}")
        else:
            verdicts.append(Verdict.PASS)
            reasons.append(f"{where}: within --max-drop {max_drop}")
    else:
        b = c = 0
        drop, ci, fp32, int8 = None, None, 1.0, agreement
    where = f"agreement {100 * agreement:.2f}% [{100 * a_ci[0]:.2f}, {100 * a_ci[1]:.2f}]"
    if a_ci[1] < min_agreement:
        verdicts.append(Verdict.FAIL)
        reasons.append(f"{where} lies below --min-agreement {100 * min_agreement:g}%")
    elif a_ci[0] < min_agreement:
        verdicts.append(Verdict.WARN)
        reasons.append(f"{where}: {n} images cannot show it reaches --min-agreement {100 * min_agreement:g}%")
    else:
        verdicts.append(Verdict.PASS)
        reasons.append(f"{where} above --min-agreement {100 * min_agreement:g}%")
    if size_ratio > max_size_ratio:
        verdicts.append(Verdict.FAIL)
        reasons.append(f"size {size_ratio:.2f}x the FP32 model, more than {max_size_ratio}x")
    if labels is None:
        reasons.append(
            f"no labels: agreement only, {folds}-fold cross-fitted: each image judged by a model "
            "calibrated without it"
            if folds
            else "no labels: agreement only, on images held out of the calibration images"
            if held_out
            else "no labels: agreement only"
        )
    verdict = (
        Verdict.FAIL
        if Verdict.FAIL in verdicts
        else Verdict.WARN
        if Verdict.WARN in verdicts
        else Verdict.PASS
    )
    return GateReport(
        metric="top1" if labels is not None else "agreement",
        images=n,
        calibration_images=calibration_images,
        fp32=fp32,
        int8=int8,
        drop=drop,
        drop_ci95=ci,
        max_drop=max_drop,
        agreement=agreement,
        agreement_ci95=a_ci,
        min_agreement=min_agreement,
        resolvable_drop=resolvable_drop(n, max_drop) if labels is not None else None,
        fp32_only=b,
        int8_only=c,
        held_out=held_out,
        passed=verdict is not Verdict.FAIL,
        verdict=verdict.value,
        reason="; ".join(reasons),
    )


@dataclass(frozen=True)
class Attempt:
    rung: str
    method: str
    exclude: tuple[str, ...]
    agreement: float
    kl: float
    accuracy: float | None
    drop: float | None  # percentage points lost against FP32
    drop_ci95: tuple[float, float] | None
    size_ratio: float
    latency_ms: float  # median single-image latency on this CPU, one thread
    verdict: str
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        d["drop_ci95"] = None if self.drop_ci95 is None else list(self.drop_ci95)
        return d


def measure_latency(path: Path, sample: np.ndarray | dict[str, np.ndarray], backend: str) -> float:
    """Median single-input latency in ms, one thread: enough to compare candidates of one model."""
    return measure_latencies({"model": path}, sample, backend, rounds=1)["model"]


def measure_latencies(
    paths: dict[str, Path], sample: np.ndarray | dict[str, np.ndarray], backend: str, *, rounds: int = 5
) -> dict[str, float]:
    """Median single-input latency in ms of each model, one thread, the models taking turns for
    `rounds` rounds of LATENCY_RUNS / rounds calls each, so a change of machine load falls on all."""
    from edgetl_runtime.backends import load_session
    from edgetl_runtime.inputs import slice_feed

    sessions = {name: load_session(path, backend, threads=1) for name, path in paths.items()}
    return time_in_turns(
        sessions, slice_feed(sample, 0, 1), rounds=rounds, per_round=max(1, LATENCY_RUNS // rounds)
    )


def time_in_turns(sessions: dict, x, *, rounds: int, per_round: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of `session.run(x)` for each loaded session, the sessions taking turns: `rounds`
    rounds of `per_round` calls each, after `warmup` untimed calls each."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(x)
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(x)
                times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * float(np.median(t)) for name, t in times.items()}


@dataclass(kw_only=True)
class Gate:
    """Measures candidates against the FP32 model on the gate images and remembers every attempt."""

    fp32_model: Path
    inputs: np.ndarray
    labels: np.ndarray | None
    names: tuple[str, ...]
    max_drop: float
    min_agreement: float
    backend: str
    suffix: str
    max_size_ratio: float
    calibration_images: int
    held_out: bool
    # cross-fit: each gate image's fold; fold model k, calibrated without fold k, judges fold k
    folds: np.ndarray | None = None
    attempts: list[Attempt] = field(default_factory=list)
    reports: list[GateReport] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        # on the first backend that reads the FP32 model's format (onnxruntime for ONNX)
        self.fp32_logits = run_model(self.fp32_model, self.inputs, model_format(self.fp32_model).backends[0])
        self.fp32 = compare_logits(self.fp32_logits, self.fp32_logits, self.labels, self.names)
        self.fp32_bytes = reference_bytes(self.fp32_model, self.suffix)

    def run(self, candidates: Sequence[Path]) -> np.ndarray:
        """Logits on the gate images: of the one candidate, or of each fold model on its own fold
        (never on an image that calibrated it)."""
        if self.folds is None:
            if len(candidates) != 1:
                raise ValueError(f"{len(candidates)} models for a gate without folds")
            return run_model(candidates[0], self.inputs, self.backend)
        if len(candidates) != int(self.folds.max()) + 1:
            raise ValueError(f"{len(candidates)} fold models for {int(self.folds.max()) + 1} folds")
        logits = np.empty_like(self.fp32_logits)
        for k, path in enumerate(candidates):
            judged = np.flatnonzero(self.folds == k)
            logits[judged] = run_model(path, self.inputs[judged], self.backend)
        return logits

    def measure(
        self, rung: str, method: str, exclude: Sequence[str], candidates: Sequence[Path]
    ) -> tuple[Attempt, Evaluation, GateReport]:
        """One candidate: a model, or (cross-fit) its fold models, which share its size and speed."""
        candidate = candidates[0]
        logits = self.run(candidates)
        ev = compare_logits(self.fp32_logits, logits, self.labels, self.names)
        ratio = artifact_bytes(candidate) / self.fp32_bytes
        report = judge(
            self.fp32_logits.argmax(1),
            logits.argmax(1),
            self.labels,
            max_drop=self.max_drop,
            min_agreement=self.min_agreement,
            size_ratio=ratio,
            max_size_ratio=self.max_size_ratio,
            calibration_images=self.calibration_images,
            held_out=self.held_out,
            folds=0 if self.folds is None else int(self.folds.max()) + 1,
        )
        latency = measure_latency(candidate, self.inputs, self.backend)
        attempt = Attempt(
            rung,
            method,
            tuple(exclude),
            ev.agreement,
            ev.kl,
            ev.accuracy,
            report.drop,
            report.drop_ci95,
            ratio,
            latency,
            report.verdict,
            report.passed,
        )
        self.attempts.append(attempt)
        self.reports.append(report)
        self.predictions.append(logits.argmax(1))
        acc = ""
        if report.drop is not None:
            lo, hi = report.drop_ci95
            acc = f", top-1 {100 * ev.accuracy:.2f}% (drop {report.drop:+.2f} [{lo:+.2f}, {hi:+.2f}])"
        log(
            f"  {rung}/{method} {len(exclude)} float nodes: agreement {100 * ev.agreement:.2f}%, "
            f"KL {ev.kl:.5f}{acc}, size {ratio:.3f}x, {latency:.2f} ms -> {report.verdict}"
        )
        return attempt, ev, report


def score(attempt: Attempt) -> tuple:
    """Best first: the gate's verdict, then lowest KL, agrees most with FP32, fewest float nodes.

    Closeness to FP32 rather than top-1: on a few hundred images, top-1 moves by chance in both
    directions, while closeness to the FP32 model is what quantization controls. KL before
    agreement: candidates that pass differ in agreement by an image or two, which is chance, while
    the mean KL over the same images tells recipes apart (imagenet-dev, 450 photos: percentile's KL
    below MinMax's beyond its interval, their agreement within it; benchmarks/results/int8_matrix.md).
    """
    rank = {Verdict.PASS.value: 0, Verdict.WARN.value: 1, Verdict.FAIL.value: 2}[attempt.verdict]
    return (rank, attempt.kl, -attempt.agreement, len(attempt.exclude))
