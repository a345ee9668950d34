"""INT8 for a text model: onnxruntime dynamic INT8 of the MatMul/Gemm weights; the same with the
most sensitive MatMuls kept float (text_mixed.py); the same after onnxruntime's transformer fusions
(attention, LayerNorm, GELU, bias adds; not applicable to a graph they do not match); static QDQ
limited to MatMul/Gemm (LayerNorm, Softmax, GELU, residual adds and the embedding gathers stay
float); and NNCF's transformer mode where nncf is installed; all calibrated on training texts. The
same paired gate as for images judges each on the validation texts (none of which calibrated), and
the best candidate the gate lets through, by speed class, KL and agreement, is kept. With `--method
auto` FP32 ships instead when none is at least 20% faster than FP32: an INT8 model that is not
faster is not an optimisation."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgetl.console import log, quiet_third_party, warn
from edgetl.data.texts import read_recorded
from edgetl.errors import EdgetlError, GateError
from edgetl.quantizer.gate import Verdict, compare_logits, judge, measure_latencies
from edgetl.quantizer.inputs import write_model
from edgetl.quantizer.text_fusion import NOT_APPLICABLE, NotApplicable, fused_dynamic
from edgetl.quantizer.text_mixed import dynamic_mixed
from edgetl.quantizer.text_ops import QUANTIZED_OPS, text_logits
from edgetl.runfolder.folder import TMP_PREFIX, Kind, QuantizationRecord, RunFolder, Step
from edgetl.runfolder.outputs import check_outputs
from edgetl.runfolder.splits import Splits
from edgetl_runtime.fileio import check_writable, sha256_file
from edgetl_runtime.modelfile import read_model_info
from edgetl_runtime.modelinfo import Precision
from edgetl_runtime.textinput import TextSpec, encode_texts

LATENCY_LENGTH = 128
# the embedding tables stay float by design (a gather's INT8 saves bytes, not time, and costs
# accuracy): all-MiniLM-L6-v2 ends near 0.6x, a tiny test model near 0.8x; only a file that did not
# shrink at all is refused
TEXT_MAX_SIZE_RATIO = 0.95
# An INT8 model ships for its speed: one not clearly faster than FP32 ranks after every one that is,
# and when none is, `--method auto` ships FP32.
# NNCF's transformer graph runs at 0.9-1.1x FP32 on onnxruntime CPU, so a bound at 1.0x let a noisy
# timing on a busy machine pick it; dynamic INT8 runs at about 0.36x, static QDQ at 0.55x.
TEXT_MIN_SPEEDUP_RATIO = 0.8
FP32_KEY = "fp32"  # the FP32 model among the timed candidates (no method takes that name)


@dataclass(frozen=True)
class TextCandidate:
    """One method tried; a method that did not apply has its verdict NOT_APPLICABLE, a reason, no figures."""

    method: str
    agreement: float | None
    kl: float | None
    accuracy: float | None
    drop: float | None
    drop_ci95: tuple[float, float] | None
    size_ratio: float | None
    latency_ms: float | None  # batch 1, LATENCY_LENGTH tokens, one thread
    verdict: str
    reason: str = ""

    @property
    def applied(self) -> bool:
        return self.verdict != NOT_APPLICABLE


def latencies_ms(paths: dict[str, Path], spec: TextSpec, *, length: int = LATENCY_LENGTH) -> dict[str, float]:
    """Median batch-1 latency of each model, one thread, all timed in turn round by round: a model
    timed alone a minute after FP32 meets other load than FP32 did (on BBC News, NNCF's graph timed
    at 0.67x FP32 that way, and at 1.05x interleaved)."""
    from edgetl_runtime.textinput import example_feed

    return measure_latencies(paths, example_feed(spec, 1, min(length, spec.max_length)), "onnxruntime-cpu")


class _Reader:
    """onnxruntime's CalibrationDataReader over tokenized training texts."""

    def __init__(self, texts: list[str], spec: TextSpec) -> None:
        self.feeds = iter(calibration_batches(texts, spec))

    def get_next(self):
        return next(self.feeds, None)


def is_clearly_faster(c: TextCandidate, fp32_ms: float) -> bool:
    """At most TEXT_MIN_SPEEDUP_RATIO of FP32's latency: fast enough to be worth shipping."""
    return c.latency_ms <= TEXT_MIN_SPEEDUP_RATIO * fp32_ms


def rank_candidate(c: TextCandidate, fp32_ms: float) -> tuple:
    """Best first: not failed by the gate, then clearly faster than FP32 (TEXT_MIN_SPEEDUP_RATIO), then
    KL to FP32, then agreement, then latency. Pass and warn rank alike: on a validation split of a
    few dozen texts one flipped text moves a candidate between them, while KL separates methods by
    far more than its noise (on 80 texts: 79/80 agreeing at KL 0.0007 against 80/80 at KL 0.046, and
    the second lost 5 of 400 held-out texts that the first kept)."""
    return (c.verdict == Verdict.FAIL.value, not is_clearly_faster(c, fp32_ms), c.kl, -c.agreement,
            c.latency_ms)  # fmt: skip


def _without_value_info(src: Path, dst: Path) -> Path:
    """The exporter's recorded intermediate shapes conflict with onnx's own inference on a dynamic
    sequence axis (and symbolic inference cannot finish on the attention mask's arithmetic): drop
    them, the quantizer infers what it needs."""
    import onnx

    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    onnx.save(proto, str(dst))
    return dst


def calibration_batches(texts: list[str], spec: TextSpec) -> list[dict[str, np.ndarray]]:
    """The calibration texts as full batches of 8, each padded to max_length: onnxruntime's histogram
    calibrators stack every batch, so all must share one shape (a last partial batch is left out)."""
    batches = []
    for start in range(0, len(texts) - 7, 8):
        feed = encode_texts(texts[start : start + 8], spec).feed(spec)
        pad = spec.max_length - feed["input_ids"].shape[1]
        batches.append({k: np.pad(v, ((0, 0), (0, pad))) for k, v in feed.items()})
    return batches


def _dynamic(src: Path, dst: Path, texts, spec) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), op_types_to_quantize=QUANTIZED_OPS, per_channel=True, weight_type=QuantType.QInt8
    )


def _static_qdq(src: Path, dst: Path, texts, spec) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), _Reader(texts, spec), quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99},
    )  # fmt: skip


@dataclass(frozen=True)
class TextQuantResult:
    """What `edgetl quantize` reports for a text model (`summary`: the keys of RUN/quantize.json).
    With `shipped` FP32 no INT8 model was written: `int8_model` is None and `reason` says why."""

    int8_model: Path | None
    fp32_model: Path
    method: str
    size_ratio: float | None
    fp32_accuracy: float
    int8_accuracy: float | None
    agreement: float | None
    gate: dict
    attempts: tuple[TextCandidate, ...]
    summary: dict
    shipped: Precision = Precision.INT8
    reason: str = ""  # why FP32 ships, or that an INT8 asked for by --method is not faster
    rung: str = "text"
    calibration_manifest: str = "the run's training texts (seeded)"

    @property
    def artifact(self) -> Path:
        """The model this quantization ships (what the next step, package or benchmark, is handed)."""
        return self.int8_model or self.fp32_model

    def to_dict(self) -> dict:
        return self.summary


def _nncf_transformer(src: Path, dst: Path, texts, spec) -> None:
    """NNCF's transformer mode on the ONNX graph: its own choice of what stays float in attention,
    LayerNorm, GELU and the residual adds; SmoothQuant off, as NNCF advises for CPU INT8 ONNX."""
    import onnx

    from edgetl.quantizer.nncf_backend import import_nncf

    nncf = import_nncf()
    feeds = calibration_batches(texts, spec)
    quantized = nncf.quantize(
        onnx.load(str(src)), nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds),  # a feed is one batch: all of them
    )  # fmt: skip
    onnx.save(quantized, str(dst))


# quantize.json's INT8 keys when FP32 ships: there is no INT8 model, so no INT8 figures (each
# candidate's are in "attempts")
_FP32_SUMMARY = {
    "int8_model": "", "method": "", "size_ratio": None, "int8_accuracy": None, "accuracy_drop": None,
    "agreement": None, "kl": None, "int8_latency_ms": None, "latency_ratio": None, "passed": False, "gate": None,
}  # fmt: skip


def _int8_summary(best: TextCandidate, report, out: Path, fp32_ms: float) -> dict:
    """quantize.json's INT8 keys: the kept candidate's figures and its gate report."""
    return {
        "int8_model": str(out), "method": best.method, "size_ratio": best.size_ratio,
        "int8_accuracy": best.accuracy, "accuracy_drop": best.drop, "agreement": best.agreement, "kl": best.kl,
        "int8_latency_ms": best.latency_ms, "latency_ratio": best.latency_ms / fp32_ms,
        "passed": best.verdict != Verdict.FAIL.value, "gate": report.to_dict(),
    }  # fmt: skip


def _fp32_reason(attempts: tuple[TextCandidate, ...], fp32_ms: float) -> str:
    """Why `--method auto` ships FP32: every candidate's latency ratio (or why it did not apply)."""

    def describe(c: TextCandidate) -> str:
        if not c.applied:
            return f"{c.method} {NOT_APPLICABLE}"
        failed = " (failed the gate)" if c.verdict == Verdict.FAIL.value else ""
        return f"{c.method} {c.latency_ms / fp32_ms:.2f}x{failed}"

    return (
        f"no INT8 candidate the gate let through runs at {TEXT_MIN_SPEEDUP_RATIO}x FP32's latency or less "
        f"({fp32_ms:.2f} ms, batch 1, {LATENCY_LENGTH} tokens): {', '.join(map(describe, attempts))}; "
        "an INT8 model that is not faster is not an optimisation"
    )


def _slow_reason(best: TextCandidate, fp32_ms: float) -> str:
    """What the summary says of an INT8 model that --method asked for but that is not clearly faster."""
    return (
        f"--method {best.method}: {best.latency_ms / fp32_ms:.2f}x FP32's latency ({fp32_ms:.2f} ms, batch 1, "
        f"{LATENCY_LENGTH} tokens), not faster than FP32 by the {TEXT_MIN_SPEEDUP_RATIO}x bound (--method auto "
        "would not ship it); written because it was asked for"
    )


def _methods() -> dict:
    """The ladder for transformers, cheapest first; NNCF only where it is installed (edgetl[nncf]).
    Each writes dst from src, may return settings its model records, and raises NotApplicable on a
    graph it cannot apply to."""
    from edgetl.quantizer.nncf_backend import nncf_available

    methods = {
        "dynamic": _dynamic, "dynamic-mixed": dynamic_mixed, "fused-dynamic": fused_dynamic,
        "static-qdq-matmul": _static_qdq,
    }  # fmt: skip
    if nncf_available():
        methods["nncf-transformer"] = _nncf_transformer
    return methods


def quantize_text(
    run: Path,
    out: Path | None,
    *,
    max_drop: float,
    min_agreement: float,
    num_calibration: int,
    seed: int,
    method: str,
    allow_drop: bool,
) -> TextQuantResult:
    """The text half of `edgetl quantize` on a run folder (its summary is RUN/quantize.json)."""
    folder = RunFolder(run)
    fp32 = folder.model
    out = out or folder.int8
    methods = _methods()
    if method not in ("auto", *methods):
        raise EdgetlError(
            f"--method {method}: a text model takes auto, {', '.join(methods)} (nncf-transformer needs edgetl[nncf])"
        )
    info = read_model_info(fp32)
    spec = info.preprocess
    splits = Splits.load(run)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.permutation(len(splits.train))[:num_calibration].tolist())
    calib = read_recorded([splits.train[i][0] for i in picks])
    gate_texts = read_recorded([p for p, _ in splits.val])
    labels = np.array([y for _, y in splits.val])
    check_outputs([("--out", out, Kind.INT8_MODEL)], inputs=[fp32])
    check_writable(out, "--out")
    with folder.lock("quantize"):
        folder.check_for(Step.QUANTIZE)
        reference = text_logits(fp32, gate_texts, spec)
        fp32_bytes = fp32.stat().st_size
        log(
            f"quantizing {fp32} (text): {len(calib)} calibration texts (train), gate on {len(gate_texts)} val texts"
        )
        candidates, files, made = [], {}, {}
        with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}quantize-", dir=run) as work:  # swept if killed
            prepared = _without_value_info(fp32, Path(work) / "prepared.onnx")
            for name in methods if method == "auto" else (method,):
                path = Path(work) / f"{name}.onnx"
                try:
                    with quiet_third_party():
                        made[name] = methods[name](prepared, path, calib, spec) or {}
                except NotApplicable as e:
                    log(f"  {name}: {NOT_APPLICABLE} ({e})")
                    skipped = dict.fromkeys(
                        ("agreement", "kl", "accuracy", "drop", "drop_ci95", "size_ratio", "latency_ms")
                    )
                    candidates.append(
                        (TextCandidate(name, **skipped, verdict=NOT_APPLICABLE, reason=str(e)), None)
                    )
                    continue
                logits = text_logits(path, gate_texts, spec)
                ev = compare_logits(reference, logits, labels, info.labels)
                ratio = path.stat().st_size / fp32_bytes
                report = judge(
                    reference.argmax(1), logits.argmax(1), labels, max_drop=max_drop, min_agreement=min_agreement,
                    size_ratio=ratio, max_size_ratio=TEXT_MAX_SIZE_RATIO, calibration_images=len(calib), held_out=True,
                )  # fmt: skip
                c = TextCandidate(
                    name, ev.agreement, ev.kl, ev.accuracy, report.drop, report.drop_ci95, ratio, None, report.verdict,
                )  # fmt: skip
                log(
                    f"  {name}: agreement {100 * c.agreement:.2f}%, KL {c.kl:.5f}, top-1 {100 * (c.accuracy or 0):.2f}%, size {ratio:.3f}x -> {c.verdict}"
                )
                candidates.append((c, report))
                files[name] = path
            timed = latencies_ms({FP32_KEY: fp32, **files}, spec)
            fp32_ms = timed[FP32_KEY]
            candidates = [
                (replace(c, latency_ms=timed[c.method]) if c.applied else c, r) for c, r in candidates
            ]
            log(
                f"  batch 1, {LATENCY_LENGTH} tokens, interleaved: FP32 {fp32_ms:.2f} ms, "
                + ", ".join(f"{n} {ms:.2f} ms" for n, ms in timed.items() if n != FP32_KEY)
            )
            applied = [(c, r) for c, r in candidates if c.applied]
            if not applied:
                reasons = "; ".join(f"{c.method}: {c.reason}" for c, _ in candidates)
                raise EdgetlError(
                    f"{fp32}: no INT8 method applies to this graph ({reasons}); nothing was written"
                )
            best, report = min(applied, key=lambda cr: rank_candidate(cr[0], fp32_ms))
            if best.verdict == Verdict.FAIL.value and not allow_drop:
                keep = (
                    " (with --method auto it ships only if at least 20% faster than FP32)"
                    if method == "auto"
                    else ""
                )
                raise GateError(
                    f"INT8 gate: every method failed ({report.reason}); nothing was written. Pass --allow-drop to keep the best anyway{keep}"
                )
            attempts = tuple(c for c, _ in candidates)
            shipped = (
                Precision.INT8 if method != "auto" or is_clearly_faster(best, fp32_ms) else Precision.FP32
            )
            if shipped is Precision.FP32:
                reason = _fp32_reason(attempts, fp32_ms)
                # an INT8 model an earlier quantization left (at --out or in the run) is not what this
                # one ships, and package would take the run's for a model to bundle
                for stale in {out, folder.int8}:
                    stale.unlink(missing_ok=True)
            else:
                reason = "" if is_clearly_faster(best, fp32_ms) else _slow_reason(best, fp32_ms)
                settings = {"method": best.method, "op_types": QUANTIZED_OPS, "num_calibration": len(calib), "seed": seed,
                            **made[best.method]}  # fmt: skip
                write_model(files[best.method], out, info, settings, best.method)
        fp32_acc = float(np.mean(reference.argmax(1) == labels))
        summary = {
            "fp32_model": str(fp32), "backend": "onnxruntime", "shipped": shipped.value, "reason": reason,
            "fp32_accuracy": fp32_acc, "eval_images": len(gate_texts), "num_calibration": len(calib),
            "max_drop": max_drop, "fp32_latency_ms": fp32_ms,
            **(_int8_summary(best, report, out, fp32_ms) if shipped is Precision.INT8 else _FP32_SUMMARY),
            "attempts": [{**asdict(c), "passed": c.applied and c.verdict != Verdict.FAIL.value} for c in attempts],
        }  # fmt: skip
        int8_sha = sha256_file(out) if shipped is Precision.INT8 else ""
        folder.save_quantization(
            QuantizationRecord.from_dict({**summary, "source_sha256": sha256_file(fp32), "sha256": int8_sha})
        )
    if shipped is Precision.FP32:
        log(f"FP32 ships, no INT8 model written: {reason}")
    else:
        log(
            f"INT8 ({best.method}): agreement {100 * best.agreement:.2f}%, {best.latency_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms -> {out}"
        )
        if reason:
            warn(reason)
    return TextQuantResult(
        int8_model=Path(summary["int8_model"]) if summary["int8_model"] else None, fp32_model=fp32,
        method=summary["method"], size_ratio=summary["size_ratio"], fp32_accuracy=fp32_acc,
        int8_accuracy=summary["int8_accuracy"], agreement=summary["agreement"], gate=summary["gate"] or {},
        attempts=attempts, summary=summary, shipped=shipped, reason=reason,
    )  # fmt: skip
