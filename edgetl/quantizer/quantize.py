"""`quantize()`: an FP32 ONNX model (or a run folder's) to INT8 behind a statistically honest gate."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

from edgetl.console import log, warn
from edgetl.data.modality import source_modality
from edgetl.errors import DataError, EdgetlError, GateError
from edgetl.options import (
    DEFAULT_MAX_DROP,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_NUM_CALIBRATION,
    DEFAULT_QUANT_METHOD,
    QuantBackend,
    check_seed,
)
from edgetl.quantizer.calibration import is_manifest
from edgetl.quantizer.evaluation import artifact_bytes, check_model, load_eval_set
from edgetl.quantizer.gate import Attempt, Gate
from edgetl.quantizer.inputs import (
    calibration_labels,
    default_manifest_path,
    get_calibration,
    resolve_inputs,
    write_model,
)
from edgetl.quantizer.ladder import ONNX_LADDER, Context, climb, refit
from edgetl.quantizer.litert import RECIPE as LITERT_RECIPE
from edgetl.quantizer.litert import check_tflite
from edgetl.quantizer.nncf_backend import OPENVINO_VARIANTS
from edgetl.quantizer.ort import AUTO_ORDER, Method
from edgetl.runfolder.folder import Kind, QuantizationRecord, RunFolder, Step
from edgetl.runfolder.outputs import check_outputs
from edgetl_runtime.backends import BackendName
from edgetl_runtime.fileio import check_writable, sha256_file
from edgetl_runtime.modality import Modality
from edgetl_runtime.modelfile import LITERT, ONNX, OPENVINO
from edgetl_runtime.modelinfo import ModelInfo, Precision

MAX_SIZE_RATIO = 0.3  # INT8 weights are a quarter of FP32; more means too much stayed in float
# An OpenVINO IR keeps four float32 range tensors per FakeQuantize, its depthwise weights in float
# ahead of their FakeQuantize, and its graph as XML: 0.34x on efficientnet_lite0, against an FP32 IR.
MAX_SIZE_RATIO_IR = 0.4


@dataclass(frozen=True)
class Quantizer:
    ladder: tuple[str, ...]  # rungs, in the order climbed
    methods: tuple[str, ...]  # what the first rung tries, in order
    suffix: str  # of the file written
    session_backend: str  # runs the candidates for the gate
    max_size_ratio: float
    reads: str = ONNX.suffix  # the FP32 model's format (a run's model.onnx, or model.tflite)
    check: Callable[[Path], ModelInfo] = check_model  # the FP32 model's metadata, or why it is refused


QUANTIZERS: dict[QuantBackend, Quantizer] = {
    QuantBackend.ONNXRUNTIME: Quantizer(
        ONNX_LADDER, tuple(m.value for m in AUTO_ORDER), ONNX.suffix, BackendName.ORT_CPU, MAX_SIZE_RATIO
    ),
    QuantBackend.NNCF: Quantizer(
        ("openvino",), tuple(OPENVINO_VARIANTS), OPENVINO.suffix, BackendName.OPENVINO_CPU, MAX_SIZE_RATIO_IR
    ),
    QuantBackend.LITERT: Quantizer(
        ("litert",),
        (LITERT_RECIPE,),
        LITERT.suffix,
        BackendName.LITERT_CPU,
        MAX_SIZE_RATIO,
        LITERT.suffix,
        check_tflite,
    ),
}
# a recorded method -> the rung that repeats it
REPEAT_RUNG = {
    **{m.value: "calibration" for m in Method if m is not Method.AUTO},
    **{v: "openvino" for v in OPENVINO_VARIANTS},
    LITERT_RECIPE: "litert",
    "nncf-ptq": "nncf-ptq",
    "nncf-accuracy-control": "nncf-accuracy-control",
    "qat": "qat",
}


@dataclass(frozen=True)
class QuantResult:
    int8_model: Path
    fp32_model: Path
    fp32_sha256: str
    backend: str
    rung: str
    method: str
    settings: dict
    fp32_accuracy: float | None
    int8_accuracy: float | None
    accuracy_drop: float | None  # percentage points
    agreement: float
    kl: float
    per_class: dict  # label -> {"fp32": acc, "int8": acc}
    size_ratio: float
    fp32_bytes: int
    int8_bytes: int
    calibration_manifest: Path
    num_calibration: int
    calibration_skipped: int
    eval_images: int  # = gate.images
    eval_skipped: int
    max_drop: float
    passed: bool
    gate: dict
    attempts: tuple[Attempt, ...]
    # the image ladder writes an INT8 model or refuses; only a text model may ship FP32 instead
    shipped: ClassVar[Precision] = Precision.INT8
    reason: ClassVar[str] = ""

    @property
    def artifact(self) -> Path:
        """The INT8 model that passed the gate."""
        return self.int8_model

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("attempts", "gate")}
        for k in ("int8_model", "fp32_model", "calibration_manifest"):
            d[k] = str(d[k])
        d["gate"] = self.gate
        d["attempts"] = [a.to_dict() for a in self.attempts]
        d["shipped"], d["reason"] = self.shipped.value, self.reason  # class constants: asdict leaves them out
        return d


def _methods_to_try(backend: QuantBackend, method: str, order: tuple[str, ...]) -> list[str]:
    """auto: all, best kept. A named method: it first, the others only if it fails the gate."""
    if backend is not QuantBackend.ONNXRUNTIME:
        if method not in ("auto", *order):
            raise EdgetlError(
                f"--method {method!r} does not apply to --backend {backend.value}; choose auto or {', '.join(order)}"
            )
        return list(order) if method == "auto" else [method, *(m for m in order if m != method)]
    try:
        chosen = Method(method)
    except ValueError:
        raise EdgetlError(
            f"--method {method!r}: choose one of {', '.join(m.value for m in Method)}"
        ) from None
    if chosen is Method.AUTO:
        return list(order)
    return [chosen.value, *(m for m in order if m != chosen.value)]


def quantize(
    model_onnx: str | Path,
    out: str | Path | None = None,
    *,
    calibration: str | Path | None = None,
    eval_dir: str | Path | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    method: str = DEFAULT_QUANT_METHOD,
    num_calibration: int = DEFAULT_NUM_CALIBRATION,
    seed: int = 0,
    allow_drop: bool = False,
    backend: str = "onnxruntime",
    manifest: str | Path | None = None,
    qat: bool = False,
) -> QuantResult:
    """Quantize an FP32 ONNX model (or a run folder's model.onnx) to INT8 behind an accuracy gate.

    `calibration` is an image folder (sampled class-stratified, `num_calibration` images, `seed`) or
    a manifest .json from an earlier run, which repeats that quantization exactly. The gate measures
    on images that did not calibrate the model measured: `eval_dir`, a run's val split, or else the
    given images themselves, cross-fitted (agreement only): split in two seeded, class-balanced
    folds, each judged by a model calibrated on the other, the model written calibrated on all of
    them (`gate["cross_fit"]` records how it relates to the fold models). It refuses when the 95% interval of the top-1 drop lies
    above `max_drop` or that of the agreement with FP32 below `min_agreement`, warns when the images
    cannot tell, and climbs the ladder (see `ladder`) until a rung is not refused; then GateError
    and nothing is written, unless `allow_drop`. `qat` runs the quantization-aware rung directly.
    """
    try:
        qbackend = QuantBackend(backend)
    except ValueError:
        raise EdgetlError(
            f"--backend {backend!r}: choose one of {', '.join(b.value for b in QuantBackend)}"
        ) from None
    if not 0 <= min_agreement <= 1:  # NaN fails both comparisons
        raise EdgetlError(f"--min-agreement {min_agreement}: a share between 0 and 1")
    if not 0 <= max_drop < math.inf:  # a NaN --max-drop would switch the gate off
        raise EdgetlError(f"--max-drop {max_drop}: a finite number of top-1 points >= 0")
    check_seed(seed)
    if num_calibration < 1:
        raise EdgetlError(f"--num-calibration {num_calibration}: must be at least 1")
    options = dict(
        calibration=calibration, eval_dir=eval_dir, max_drop=max_drop, min_agreement=min_agreement,
        method=method, num_calibration=num_calibration, seed=seed, allow_drop=allow_drop, backend=qbackend,
        manifest=manifest, qat=qat,
    )  # fmt: skip
    return QUANTIZERS_BY_MODALITY[source_modality(model_onnx)](model_onnx, out, **options)


def _quantize_text(model_onnx, out, *, calibration, eval_dir, backend, manifest, qat, **options):
    from edgetl.quantizer.text import quantize_text

    if calibration or eval_dir or manifest or qat or backend is not QuantBackend.ONNXRUNTIME:
        raise EdgetlError(
            "a text model calibrates on its run's training texts and is gated on its validation texts with "
            "onnxruntime: drop --calibration, --eval, --manifest, --qat and --backend"
        )
    run = Path(model_onnx)
    if not run.is_dir():
        raise EdgetlError(
            f"{run}: a text model is quantized from its run folder (its texts calibrate it); give RUN"
        )
    return quantize_text(run, Path(out) if out else None, **options)


def _quantize_images(
    model_onnx, out, *, calibration, eval_dir, max_drop, min_agreement, method, num_calibration, seed,
    allow_drop, backend, manifest, qat,
) -> QuantResult:  # fmt: skip
    qbackend = backend
    quantizer = QUANTIZERS[qbackend]
    inputs = resolve_inputs(model_onnx, out, calibration, eval_dir, quantizer.suffix, reads=quantizer.reads)
    if inputs.out.suffix != quantizer.suffix:
        raise EdgetlError(f"--out {inputs.out}: backend {qbackend.value} writes a {quantizer.suffix} file")
    if qat and (inputs.run is None or qbackend is not QuantBackend.ONNXRUNTIME):
        raise EdgetlError("--qat fine-tunes a run's model: pass a RUN folder (and the onnxruntime backend)")
    reused = inputs.calibration is not None and is_manifest(inputs.calibration)
    manifest_path = Path(inputs.calibration) if reused else Path(manifest or default_manifest_path(inputs))
    check_outputs(
        [
            ("--out", inputs.out, Kind.INT8_MODEL),
            ("--manifest", None if reused else manifest_path, Kind.CALIBRATION),
        ],
        inputs=[inputs.model, inputs.calibration],
        image_folders=[inputs.calibration, eval_dir if isinstance(eval_dir, (str, Path)) else None],
    )
    folder = RunFolder(inputs.run) if inputs.run is not None else None
    with folder.lock("quantize") if folder else contextlib.nullcontext():
        if folder is not None:
            folder.check_for(Step.QUANTIZE)
        info = quantizer.check(inputs.model)
        model_sha = sha256_file(inputs.model)
        methods = _methods_to_try(qbackend, method, quantizer.methods)
        check_writable(inputs.out, "--out")
        if not reused:
            # checked now so that a bad --manifest cannot leave the INT8 model written without its record
            check_writable(manifest_path, "--manifest")
        cross_fit = inputs.eval_source is None and not reused
        calib = get_calibration(inputs, info.preprocess, model_sha, num_calibration, seed, cross_fit)
        ladder, exclude, search_all = quantizer.ladder, (), method == "auto"
        if qat:
            ladder = ("qat",)
        if reused and calib.manifest.method and method == "auto":
            # repeat the recorded quantization instead of searching again
            ladder = (REPEAT_RUNG.get(calib.manifest.method, "calibration"),)
            methods, search_all = [calib.manifest.method], False
            exclude = tuple(
                calib.manifest.settings.get("nodes_to_exclude")
                or calib.manifest.settings.get("ignored_scope")
                or ()
            )
        if inputs.eval_source is not None:
            calibrated = frozenset(p.resolve() for p in calib.manifest.paths())
            evalset = load_eval_set(inputs.eval_source, info, inputs.labels, exclude=calibrated)
            gate_inputs, gate_labels, eval_skipped = evalset.inputs, evalset.labels, evalset.skipped
        elif calib.folds is not None:
            gate_inputs, gate_labels, eval_skipped = calib.inputs, None, 0
        elif calib.holdout is not None:  # a manifest from before cross-fitting
            gate_inputs, gate_labels, eval_skipped = calib.holdout, None, 0
        else:
            raise DataError(
                f"{inputs.calibration}: this manifest holds no gate images and no --eval was given; "
                "pass images that did not calibrate the model with --eval"
            )
        gate = Gate(
            fp32_model=inputs.model,
            inputs=gate_inputs,
            labels=gate_labels,
            names=info.labels,
            max_drop=max_drop,
            min_agreement=min_agreement,
            backend=quantizer.session_backend,
            suffix=quantizer.suffix,
            max_size_ratio=quantizer.max_size_ratio,
            calibration_images=len(calib),
            held_out=inputs.eval_source is None,
            folds=calib.folds if inputs.eval_source is None else None,
        )
        with tempfile.TemporaryDirectory(prefix="edgetl-quant-") as tmp:
            ctx = Context(
                model=inputs.model,
                info=info,
                calib=calib,
                calib_labels=calibration_labels(calib, info.labels),
                gate=gate,
                work=Path(tmp),
                methods=methods,
                search_all=search_all,
                exclude=exclude,
                run=inputs.run,
                seed=seed,
            )
            best = climb(ctx, ladder)
            att, report = best.attempt, best.report
            if not att.passed and not allow_drop:
                raise GateError(
                    f"{inputs.model}: the gate refuses INT8 after {len(gate.attempts)} attempts on "
                    f"{len(ladder)} rungs; the best ({att.rung}/{att.method}): {report.reason}; nothing "
                    "written. Use --allow-drop to keep the best anyway"
                )
            if not att.passed:
                warn(f"the gate refuses the best INT8 model ({report.reason}); written anyway (--allow-drop)")
            elif report.verdict == "warn":
                warn(f"gate: {report.reason}")
            else:
                log(f"gate passes: {report.reason}")
            shipped, cross_fit_record = refit(ctx, best)
            if cross_fit_record is not None:
                report = replace(report, cross_fit=cross_fit_record)
            settings = {**best.settings, "rung": att.rung, "fp32_sha256": model_sha}
            write_model(shipped, inputs.out, info, settings, att.method)
        if not reused:
            calib.manifest.with_(method=att.method, settings=settings).save(manifest_path)
        ev = best.evaluation
        per_class = {
            name: {"fp32": gate.fp32.per_class.get(name), "int8": ev.per_class.get(name)}
            for name in gate.fp32.per_class
        }
        result = QuantResult(
            int8_model=inputs.out,
            fp32_model=inputs.model,
            fp32_sha256=model_sha,
            backend=qbackend.value,
            rung=att.rung,
            method=att.method,
            settings=settings,
            fp32_accuracy=gate.fp32.accuracy,
            int8_accuracy=ev.accuracy,
            accuracy_drop=att.drop,
            agreement=ev.agreement,
            kl=ev.kl,
            per_class=per_class,
            size_ratio=att.size_ratio,
            fp32_bytes=gate.fp32_bytes,
            int8_bytes=artifact_bytes(inputs.out),
            calibration_manifest=manifest_path,
            num_calibration=len(calib),
            calibration_skipped=calib.manifest.skipped,
            eval_images=len(gate_inputs),
            eval_skipped=eval_skipped,
            max_drop=max_drop,
            passed=att.passed,
            gate=report.to_dict(),
            attempts=tuple(gate.attempts),
        )
        if folder is not None:
            # the run's lineage goes through model.onnx: a model.tflite is converted from it
            source = sha256_file(folder.model) if quantizer.reads != ONNX.suffix else model_sha
            folder.save_quantization(
                QuantizationRecord.from_dict(
                    {**result.to_dict(), "source_sha256": source, "sha256": sha256_file(inputs.out)}
                )
            )
    return result


# one quantizer per modality, chosen by the model (edgetl/data/modality.py)
QUANTIZERS_BY_MODALITY = {Modality.IMAGE: _quantize_images, Modality.TEXT: _quantize_text}
