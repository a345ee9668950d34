"""INT8 post-training quantization with an accuracy gate.

onnxruntime static quantization in QDQ form (per-channel int8 weights, uint8 activations, the model
pre-processed first), or NNCF for OpenVINO. The calibration method is chosen by measurement: each
candidate is quantized and compared with the FP32 model on held-out images (agreement of top-1
predictions, then KL divergence of the softmax), and the best one is kept. When the accuracy drop
still exceeds the bound, the tensors whose quantization hurts most (measured per tensor) are tried in
float one at a time, each kept only if the gate measures an improvement, until the drop fits or a
bounded number of attempts runs out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from edgetl_runtime.fileio import atomic_output, check_writable, sha256_file, write_text_atomic
from edgetl_runtime.modelinfo import ModelInfo, read_model_info
from edgetl_runtime.predictor import softmax
from edgetl_runtime.preprocess import PreprocessSpec

from .calibration import (
    DEFAULT_NUM_CALIBRATION,
    CalibrationSet,
    is_manifest,
    list_labelled_images,
    load_calibration,
    select_calibration,
)
from .console import log, warn
from .errors import BundleError, DataError, EdgetlError, GateError
from .images import preprocess_readable

MAX_SIZE_RATIO = 0.3  # INT8 weights are a quarter of FP32; more means too much stayed in float
# An OpenVINO IR keeps four float32 range tensors per FakeQuantize, its depthwise weights in float
# ahead of their FakeQuantize, and its graph as XML: 0.34x on efficientnet_lite0, against an FP32 IR.
MAX_SIZE_RATIO_IR = 0.4
QUANT_SUMMARY = "quantize.json"
MANIFEST_NAME = "calibration.json"
RECOVERY_ATTEMPTS = 6  # most sensitive tensors tried in float, one at a time, when the gate fails
SENSITIVITY_IMAGES = 16
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
QUANTIZED_OP_PREFIXES = ("QLinear", "ConvInteger", "MatMulInteger", "QGemm")


class Method(str, Enum):
    AUTO = "auto"
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QuantBackend(str, Enum):
    ONNXRUNTIME = "onnxruntime"
    NNCF = "nncf"


# calibration method -> (onnxruntime CalibrationMethod name, calibrator options).
# Ranges are asymmetric: activations are uint8, and most of them follow ReLU6 (never negative).
CALIBRATORS: dict[Method, tuple[str, dict]] = {
    Method.MINMAX: ("MinMax", {"symmetric": False}),
    Method.PERCENTILE: ("Percentile", {"symmetric": False, "percentile": 99.999, "num_bins": 2048}),
    # onnxruntime's entropy search is quadratic in the bins; more than its 128 takes minutes per model
    Method.ENTROPY: ("Entropy", {"symmetric": False}),
}
# What "auto" tries, in the order measured best on the ImageNet proxy (benchmarks/bench_quantize.py).
AUTO_ORDER = (Method.PERCENTILE, Method.MINMAX, Method.ENTROPY)

# The fixed part of the onnxruntime recipe. uint8 activations with int8 weights are what the x86
# U8S8 (VNNI) kernels run; reduce_range only helps CPUs without VNNI and costs a bit of precision.
ORT_SETTINGS = {
    "format": "QDQ",
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "reduce_range": False,
    "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False},
}


@dataclass(frozen=True)
class Evaluation:
    """How a model's predictions compare with labels and with the FP32 model's."""

    accuracy: float | None  # top-1 on labelled images, None without labels
    agreement: float  # share of images whose top-1 equals the FP32 model's
    kl: float  # mean KL(FP32 || INT8) of the softmax
    per_class: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    method: str
    exclude: tuple[str, ...]
    agreement: float
    kl: float
    accuracy: float | None
    drop: float | None  # percentage points lost against FP32
    size_ratio: float
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        return d


@dataclass(frozen=True)
class QuantResult:
    int8_model: Path
    fp32_model: Path
    backend: str
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
    eval_images: int
    eval_skipped: int
    max_drop: float
    passed: bool
    attempts: tuple[Attempt, ...]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "attempts"}
        for k in ("int8_model", "fp32_model", "calibration_manifest"):
            d[k] = str(d[k])
        d["attempts"] = [a.to_dict() for a in self.attempts]
        return d


@dataclass(frozen=True)
class EvalSet:
    inputs: np.ndarray
    labels: np.ndarray | None  # class indices into the model's labels
    skipped: int = 0


# ---------------------------------------------------------------------------------------------- inputs


def check_model(model_path: Path) -> ModelInfo:
    """The FP32 model's metadata, refusing already-quantized models and inconsistent input sizes."""
    import onnx

    info = read_model_info(model_path)
    proto = onnx.load(str(model_path), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    quantized = sorted(o for o in ops if o in QUANTIZED_OPS or o.startswith(QUANTIZED_OP_PREFIXES))
    if quantized or info.precision != "fp32":
        reason = f"has {', '.join(quantized)} nodes" if quantized else f"metadata says {info.precision}"
        raise BundleError(
            f"{model_path}: already quantized ({reason}); pass the FP32 model.onnx from `edgetl export`"
        )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    want = info.preprocess.input_shape("N")
    fixed = [(d.dim_value if d.HasField("dim_value") else None) for d in dims]
    if len(fixed) != 4 or any(f is not None and f != w for f, w in zip(fixed[1:], want[1:], strict=False)):
        raise BundleError(
            f"{model_path}: model input is {fixed} but its preprocessing gives {list(want)}; "
            "re-export the model so its input size matches its metadata"
        )
    return info


def _batch_size(model_path: Path) -> int:
    """16 per run when the batch dimension is dynamic, else what the model fixes."""
    import onnx

    dim = onnx.load(str(model_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 16


def _imagenet_synsets() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


def map_eval_classes(classes: Sequence[str], labels: Sequence[str]) -> list[int]:
    """The model's class index for each evaluation folder name.

    A folder is named after a label, or is an ImageNet synset id (n01440764) when the model has the
    1000 ImageNet classes (`edgetl export` labels those with their descriptions, in synset order), or
    is a class index ("0".."999").
    """
    labels = tuple(labels)
    index = {name: i for i, name in reversed(list(enumerate(labels)))}
    if all(c in index for c in classes):
        return [index[c] for c in classes]
    if len(labels) == 1000 and all(len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in classes):
        synsets = {s: i for i, s in enumerate(_imagenet_synsets())}
        if all(c in synsets for c in classes):
            return [synsets[c] for c in classes]
    if all(c.isdigit() and int(c) < len(labels) for c in classes):
        return [int(c) for c in classes]
    unknown = [c for c in classes if c not in index]
    raise DataError(
        f"classes {', '.join(unknown[:5])} are neither the model's labels nor class indices"
        + (" nor ImageNet synset ids" if len(labels) == 1000 else "")
        + "; --eval needs one subfolder per class of the model"
    )


def load_eval_set(
    source: str | Path | Sequence[tuple[str, int]], info: ModelInfo, labels: Sequence[str] | None = None
) -> EvalSet:
    """An ImageFolder of the model's classes, a flat folder (no labels), or (path, index) pairs from a run.

    Without labels only agreement with the FP32 model is measured, so the gate cannot bound a top-1 drop.
    """
    if isinstance(source, (str, Path)):
        items, classes = list_labelled_images(source)
        if classes == ("",):
            warn(
                f"{source}: images without class subfolders; measuring agreement with FP32 only, "
                "the accuracy gate cannot measure a top-1 drop"
            )
            pairs = [(p, None) for p, _ in items]
        else:
            try:
                mapped = map_eval_classes(classes, info.labels)
            except DataError as e:
                raise DataError(f"{source}: {e}") from None
            pairs = [(p, mapped[i]) for p, i in items]
    else:
        if labels is not None and tuple(labels) != tuple(info.labels):
            raise DataError("the run's labels differ from the model's metadata labels; re-export the model")
        pairs = [(Path(p), i) for p, i in source]
    arrays, indices, skipped = preprocess_readable([p for p, _ in pairs], info.preprocess, "evaluation")
    kept = [pairs[i][1] for i in indices]
    if not arrays:
        raise DataError(
            f"{source if isinstance(source, (str, Path)) else 'evaluation split'}: no readable image"
        )
    targets = None if kept[0] is None else np.asarray(kept)
    return EvalSet(np.stack(arrays), targets, skipped)


# ------------------------------------------------------------------------------------------ evaluation


def run_model(path: Path, inputs: np.ndarray, backend: str = "onnxruntime-cpu") -> np.ndarray:
    from edgetl_runtime.backends import load_session

    session = load_session(path, backend)
    batch = _batch_size(path) if path.suffix == ".onnx" else 1
    return np.concatenate([session.run(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


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


# ------------------------------------------------------------------------------------ onnxruntime path


class _ArrayReader:
    """onnxruntime CalibrationDataReader over an array, `batch` images per run."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int) -> None:
        self._feeds = iter([{input_name: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.get_next, None)


@contextlib.contextmanager
def _quiet_library() -> Iterator[None]:
    """onnxruntime's quantizer prints progress to stdout, which belongs to the --json summary."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logger.setLevel(level)


def preprocess_for_quantization(model_path: Path, out: Path) -> Path:
    """onnxruntime's quantization pre-processing: shape inference and graph fusion (BN into Conv)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_library():
        quant_pre_process(str(model_path), str(out))
    return out


def calibrate_ranges(model_path: Path, inputs: np.ndarray, method: Method):
    """Activation ranges with one calibration method, as onnxruntime's TensorsData (kept in memory:
    every attempt of the gate reuses them, on any onnxruntime version)."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    name, options = CALIBRATORS[method]
    input_name = (
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    )
    batch = _batch_size(model_path)
    with tempfile.TemporaryDirectory(prefix="edgetl-calib-") as tmp, _quiet_library():
        calibrator = create_calibrator(
            model_path,
            sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod[name],
            extra_options=options,
        )
        # one batch per call: histogram calibrators keep every intermediate output of a call in
        # memory, and stack them, which fails on a shorter last batch
        for start in range(0, len(inputs), batch):
            calibrator.collect_data(_ArrayReader(input_name, inputs[start : start + batch], batch))
        return calibrator.compute_data()


def quantize_with_ranges(
    model_path: Path, method: Method, ranges, out: Path, exclude: Sequence[str] = ()
) -> Path:
    """QDQ model from ranges of calibrate_ranges (same ranges, same model on every onnxruntime)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    from .ort_compat import quantize_static_with_ranges

    with _quiet_library():
        return quantize_static_with_ranges(
            model_path,
            out,
            ranges,
            calibrate_method=CalibrationMethod[CALIBRATORS[method][0]],
            quant_format=QuantFormat[ORT_SETTINGS["format"]],
            per_channel=ORT_SETTINGS["per_channel"],
            reduce_range=ORT_SETTINGS["reduce_range"],
            activation_type=QuantType[ORT_SETTINGS["activation_type"]],
            weight_type=QuantType[ORT_SETTINGS["weight_type"]],
            nodes_to_exclude=exclude,
            extra_options=dict(ORT_SETTINGS["extra_options"]),
        )


def rank_sensitive_nodes(float_path: Path, qdq_path: Path, inputs: np.ndarray) -> list[tuple[str, ...]]:
    """Groups of nodes to keep in float, worst quantized tensor first.

    A tensor's local quantization error (SQNR of its values before and after QDQ inside the INT8
    model) ranks it; keeping it in float means excluding its producer and every consumer.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    input_name = (
        ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    )
    with tempfile.TemporaryDirectory(prefix="edgetl-sens-") as tmp, _quiet_library():
        aug_float, aug_qdq = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(aug_float))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
        float_acts = collect_activations(str(aug_float), _ArrayReader(input_name, inputs, 1))
        qdq_acts = collect_activations(str(aug_qdq), _ArrayReader(input_name, inputs, 1))
        errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    graph = onnx.load(str(float_path)).graph
    producers = {o: n.name for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    ranked = sorted((e["qdq_err"], t) for t, e in errors.items() if np.isfinite(e.get("qdq_err", np.inf)))
    groups = []
    for _, tensor in ranked:
        nodes = tuple(x for x in (producers.get(tensor), *consumers.get(tensor, ())) if x)
        if nodes:
            groups.append(nodes)
    return groups


# --------------------------------------------------------------------------------------------- the gate


def _artifact_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in _artifact_files(path))


def _reference_bytes(fp32: Path, suffix: str) -> int:
    """The FP32 model's size in the format the INT8 one is written in: an IR is compared with an IR,
    whose .xml is much larger than an ONNX graph (it matters for small models)."""
    if suffix != ".xml":
        return fp32.stat().st_size
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="edgetl-ir-") as tmp:
        xml = Path(tmp) / "fp32.xml"
        ov.save_model(ov.Core().read_model(str(fp32)), str(xml), compress_to_fp16=False)
        return _artifact_bytes(xml)


def _artifact_files(path: Path) -> list[Path]:
    """An OpenVINO IR is two files, the .xml and its .bin."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


@dataclass
class _Gate:
    """Measures candidates against the FP32 model and remembers every attempt."""

    fp32_model: Path
    inputs: np.ndarray
    labels: np.ndarray | None
    names: tuple[str, ...]
    max_drop: float
    backend: str
    suffix: str
    max_size_ratio: float
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fp32_logits = run_model(self.fp32_model, self.inputs)
        self.fp32 = compare_logits(self.fp32_logits, self.fp32_logits, self.labels, self.names)
        self.fp32_bytes = _reference_bytes(self.fp32_model, self.suffix)

    def measure(self, method: str, exclude: Sequence[str], candidate: Path) -> tuple[Attempt, Evaluation]:
        ev = compare_logits(
            self.fp32_logits, run_model(candidate, self.inputs, self.backend), self.labels, self.names
        )
        drop = None if ev.accuracy is None else 100.0 * (self.fp32.accuracy - ev.accuracy)
        ratio = _artifact_bytes(candidate) / self.fp32_bytes
        passed = (drop is None or drop <= self.max_drop) and ratio <= self.max_size_ratio
        attempt = Attempt(method, tuple(exclude), ev.agreement, ev.kl, ev.accuracy, drop, ratio, passed)
        self.attempts.append(attempt)
        acc = "" if drop is None else f", top-1 {100 * ev.accuracy:.2f}% (drop {drop:+.2f} points)"
        log(
            f"  {method:<10} excluded {len(exclude):>2}: agreement {100 * ev.agreement:.2f}%, KL {ev.kl:.5f}{acc}, size {ratio:.3f}x"
        )
        return attempt, ev


def _score(attempt: Attempt) -> tuple:
    """Best first: passes the gate, then agrees most with FP32, lowest KL, fewest float nodes.

    Agreement and KL rather than top-1: on a few hundred images, top-1 moves by chance in both
    directions, while closeness to the FP32 model is what calibration controls.
    """
    return (not attempt.passed, -attempt.agreement, attempt.kl, len(attempt.exclude))


# ----------------------------------------------------------------------------------------- backends


def _quantize_onnxruntime(
    model_path: Path,
    calib: CalibrationSet,
    gate: _Gate,
    methods: Sequence[Method],
    exclude: tuple[str, ...],
    work: Path,
    search_all: bool,
) -> tuple[Path, Attempt, Evaluation, dict]:
    """Try each method (then float exclusions on the best), return the best candidate file."""
    pre = preprocess_for_quantization(model_path, work / "pre.onnx")
    best: tuple[Attempt, Evaluation, Path] | None = None
    ranges: dict[Method, object] = {}  # onnxruntime TensorsData per method

    def attempt(method: Method, excluded: tuple[str, ...]) -> tuple[Attempt, Evaluation, Path]:
        if method not in ranges:
            log(f"calibrating ({method.value}) on {len(calib)} images")
            ranges[method] = calibrate_ranges(pre, calib.inputs, method)
        out = work / f"cand-{len(gate.attempts)}.onnx"
        quantize_with_ranges(pre, method, ranges[method], out, excluded)
        att, ev = gate.measure(method.value, excluded, out)
        return att, ev, out

    for method in methods:
        cand = attempt(method, exclude)
        if best is None or _score(cand[0]) < _score(best[0]):
            best = cand
        if best[0].passed and not search_all:
            break
    assert best is not None
    if not best[0].passed and best[0].drop is not None:
        method = Method(best[0].method)
        log("accuracy drop above the bound: measuring per-tensor sensitivity")
        groups = rank_sensitive_nodes(pre, best[2], gate.inputs[:SENSITIVITY_IMAGES])
        # Greedy: a group stays in float only if it makes the gate pass or flips fewer predictions,
        # so the local error ranking can suggest but never make the result worse; a lower KL alone
        # is not worth it, as float nodes break the integer kernels' chain (measured 0.4x -> 0.9x
        # FP32 latency with 6 float nodes on efficientnet_lite0). Bounded to a few attempts.
        for group in groups[:RECOVERY_ATTEMPTS]:
            cand = attempt(method, tuple(dict.fromkeys((*best[0].exclude, *group))))
            if (cand[0].passed, cand[0].agreement) > (best[0].passed, best[0].agreement):
                best = cand
            if best[0].passed:
                break
    att, ev, path = best
    settings = {
        **ORT_SETTINGS,
        "calibrator": CALIBRATORS[Method(att.method)][1],
        "nodes_to_exclude": list(att.exclude),
    }
    return path, att, ev, settings


NNCF_VARIANTS = {"nncf-fast-bias-correction": True, "nncf-bias-correction": False}


def _quantize_nncf(
    model_path: Path,
    calib: CalibrationSet,
    gate: _Gate,
    methods: Sequence[str],
    exclude: tuple[str, ...],
    work: Path,
    search_all: bool,
) -> tuple[Path, Attempt, Evaluation, dict]:
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise EdgetlError(
            f"--backend nncf needs nncf and openvino ({e}); install with: pip install 'edgetl[nncf]'"
        ) from None
    best = None
    for variant in methods:
        fast = NNCF_VARIANTS[variant]
        log(f"quantizing with NNCF ({variant}) on {len(calib)} images")
        with _quiet_library():
            ov_model = ov.Core().read_model(str(model_path))
            dataset = nncf.Dataset(list(calib.inputs), lambda x: x[None])
            quantized = nncf.quantize(
                ov_model,
                dataset,
                subset_size=len(calib),
                fast_bias_correction=fast,
                ignored_scope=nncf.IgnoredScope(names=list(exclude)) if exclude else None,
            )
        out = work / f"cand-{len(gate.attempts)}.xml"
        ov.save_model(quantized, str(out), compress_to_fp16=False)
        att, ev = gate.measure(variant, exclude, out)
        if best is None or _score(att) < _score(best[0]):
            best = (att, ev, out)
        if best[0].passed and not search_all:
            break
    att, ev, path = best
    return (
        path,
        att,
        ev,
        {
            "backend": "nncf",
            "fast_bias_correction": NNCF_VARIANTS[att.method],
            "ignored_scope": list(exclude),
        },
    )


@dataclass(frozen=True)
class Quantizer:
    run: Callable
    methods: tuple[str, ...]  # in the order tried
    suffix: str  # of the file written
    session_backend: str  # runs the candidates for the gate
    max_size_ratio: float


QUANTIZERS: dict[QuantBackend, Quantizer] = {
    QuantBackend.ONNXRUNTIME: Quantizer(
        _quantize_onnxruntime, tuple(m.value for m in AUTO_ORDER), ".onnx", "onnxruntime-cpu", MAX_SIZE_RATIO
    ),
    QuantBackend.NNCF: Quantizer(
        _quantize_nncf, tuple(NNCF_VARIANTS), ".xml", "openvino-cpu", MAX_SIZE_RATIO_IR
    ),
}


def _methods_to_try(backend: QuantBackend, method: str, order: tuple[str, ...]) -> list:
    """auto: all, best kept. A named method: it first, the others only if it fails the gate."""
    if backend is QuantBackend.NNCF:
        if method not in ("auto", *order):
            raise EdgetlError(
                f"--method {method!r} does not apply to --backend nncf; choose auto or {', '.join(order)}"
            )
        return list(order) if method == "auto" else [method, *(m for m in order if m != method)]
    try:
        chosen = Method(method)
    except ValueError:
        raise EdgetlError(
            f"--method {method!r}: choose one of {', '.join(m.value for m in Method)}"
        ) from None
    if chosen is Method.AUTO:
        return list(AUTO_ORDER)
    return [chosen, *(m for m in AUTO_ORDER if m is not chosen)]


# ----------------------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class _Inputs:
    model: Path
    out: Path
    calibration: str | Path | None
    eval_source: str | Path | Sequence | None
    run: Path | None
    calib_items: tuple | None = None
    calib_classes: tuple = ()
    labels: tuple | None = None


def _resolve_inputs(model, out, calibration, eval_dir, suffix: str) -> _Inputs:
    model = Path(model)
    if not model.is_dir():
        if out is None:
            raise EdgetlError(
                "--out is required when quantizing a model file (only a run folder has a default)"
            )
        if calibration is None:
            raise EdgetlError("--calibration DIR|MANIFEST.json is required when quantizing a model file")
        return _Inputs(model, Path(out), calibration, eval_dir, None)
    from .splits import Splits

    run = model
    if not (run / "model.onnx").is_file():
        raise EdgetlError(f"{run}: no model.onnx in this run folder; run `edgetl export {run}` first")
    splits = Splits.load(run)
    out = Path(out) if out is not None else run / f"model.int8{suffix}"
    calib_items = None
    if calibration is None:
        if not splits.train:
            raise DataError(
                f"{run}/splits.json: no training images to calibrate with; pass --calibration DIR"
            )
        calib_items = splits.train
    eval_source = eval_dir if eval_dir is not None else (splits.val or None)
    return _Inputs(
        run / "model.onnx", out, calibration, eval_source, run, calib_items, splits.labels, splits.labels
    )


def _default_manifest_path(inputs: _Inputs) -> Path:
    if inputs.run is not None:
        return inputs.run / MANIFEST_NAME
    return inputs.out.parent / "calibration" / f"{inputs.out.stem}.json"


def _get_calibration(
    inputs: _Inputs, spec: PreprocessSpec, model_sha: str, num: int, seed: int
) -> CalibrationSet:
    if inputs.calib_items is not None:
        return select_calibration(
            inputs.calib_items,
            inputs.calib_classes,
            spec,
            model_sha256=model_sha,
            num=num,
            seed=seed,
            source=f"{inputs.run} training split",
        )
    if is_manifest(inputs.calibration):
        return load_calibration(inputs.calibration, spec, model_sha)
    items, classes = list_labelled_images(inputs.calibration)
    return select_calibration(
        items, classes, spec, model_sha256=model_sha, num=num, seed=seed, source=str(inputs.calibration)
    )


def _write_model(candidate: Path, out: Path, info: ModelInfo, settings: dict, method: str) -> None:
    """Copy the chosen candidate to `out` atomically, carrying the FP32 metadata plus the settings."""
    meta = info.with_(precision="int8", quantization={**settings, "method": method}).to_metadata()
    if out.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(candidate))
        for key, value in meta.items():
            model.set_rt_info(value, ["edgetl", key.removeprefix("edgetl.")])
        with tempfile.TemporaryDirectory(prefix="edgetl-ir-") as tmp:
            xml = Path(tmp) / "model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(out.with_suffix(".bin")) as tmp_bin:
                shutil.copyfile(xml.with_suffix(".bin"), tmp_bin)
            with atomic_output(out) as tmp_xml:
                # the .xml names its weights file by the .xml's own name, so it must end as out
                shutil.copyfile(xml, tmp_xml)
        return
    import onnx

    proto = onnx.load(str(candidate))
    kept = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("edgetl.")}
    del proto.metadata_props[:]
    for key, value in {**kept, **meta}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))


def quantize(
    model_onnx: str | Path,
    out: str | Path | None = None,
    *,
    calibration: str | Path | None = None,
    eval_dir: str | Path | None = None,
    max_drop: float = 0.5,
    method: str = "auto",
    num_calibration: int = DEFAULT_NUM_CALIBRATION,
    seed: int = 0,
    allow_drop: bool = False,
    backend: str = "onnxruntime",
    manifest: str | Path | None = None,
) -> QuantResult:
    """Quantize an FP32 ONNX model (or a run folder's model.onnx) to INT8 behind an accuracy gate.

    `calibration` is an image folder (sampled class-stratified, `num_calibration` images, `seed`) or
    a manifest .json from an earlier run, which repeats that quantization exactly. With evaluation
    images (`eval_dir`, or a run's val split) the INT8 model must lose at most `max_drop` top-1
    points; otherwise GateError and nothing is written, unless `allow_drop`.
    """
    try:
        qbackend = QuantBackend(backend)
    except ValueError:
        raise EdgetlError(
            f"--backend {backend!r}: choose one of {', '.join(b.value for b in QuantBackend)}"
        ) from None
    quantizer = QUANTIZERS[qbackend]
    order, suffix = quantizer.methods, quantizer.suffix
    inputs = _resolve_inputs(model_onnx, out, calibration, eval_dir, suffix)
    if inputs.out.suffix != suffix:
        raise EdgetlError(f"--out {inputs.out}: backend {qbackend.value} writes a {suffix} file")
    info = check_model(inputs.model)
    model_sha = sha256_file(inputs.model)
    methods = _methods_to_try(qbackend, method, order)
    reused = inputs.calibration is not None and is_manifest(inputs.calibration)
    manifest_path = Path(inputs.calibration) if reused else Path(manifest or _default_manifest_path(inputs))
    check_writable(inputs.out, "--out")
    if not reused:
        # checked now so that a bad --manifest cannot leave the INT8 model written without its record
        check_writable(manifest_path, "--manifest")
    calib = _get_calibration(inputs, info.preprocess, model_sha, num_calibration, seed)
    exclude: tuple[str, ...] = ()
    search_all = method == "auto"
    if reused and calib.manifest.method and method == "auto":
        # repeat the recorded quantization instead of searching again
        methods = [calib.manifest.method if qbackend is QuantBackend.NNCF else Method(calib.manifest.method)]
        search_all = False
        exclude = tuple(
            calib.manifest.settings.get("nodes_to_exclude")
            or calib.manifest.settings.get("ignored_scope")
            or ()
        )
    evalset = (
        load_eval_set(inputs.eval_source, info, inputs.labels) if inputs.eval_source is not None else None
    )
    if evalset is None:
        warn("no evaluation images: the accuracy gate is off; methods are compared on the calibration images")
    gate = _Gate(
        inputs.model,
        evalset.inputs if evalset else calib.inputs,
        evalset.labels if evalset else None,
        info.labels,
        max_drop,
        quantizer.session_backend,
        suffix,
        quantizer.max_size_ratio,
    )
    with tempfile.TemporaryDirectory(prefix="edgetl-quant-") as tmp:
        path, best, ev, settings = quantizer.run(
            inputs.model, calib, gate, methods, exclude, Path(tmp), search_all
        )
        if not best.passed and not allow_drop:
            tried = "; ".join(
                f"{a.method}+{len(a.exclude)} float nodes: drop {a.drop:.2f}, size {a.size_ratio:.2f}x"
                if a.drop is not None
                else f"{a.method}: size {a.size_ratio:.2f}x"
                for a in gate.attempts
            )
            raise GateError(
                f"{inputs.model}: INT8 loses more than {max_drop} top-1 points (or is larger than {quantizer.max_size_ratio}x) "
                f"after {len(gate.attempts)} attempts ({tried}); nothing written. Use --allow-drop to keep the best anyway"
            )
        if not best.passed:
            warn(
                f"accuracy gate failed (drop {best.drop:.2f} points > {max_drop}); written anyway (--allow-drop)"
            )
        _write_model(path, inputs.out, info, settings, best.method)
    if not reused:
        calib.manifest.with_(method=best.method, settings=settings).save(manifest_path)
    per_class = {
        name: {"fp32": gate.fp32.per_class.get(name), "int8": ev.per_class.get(name)}
        for name in gate.fp32.per_class
    }
    result = QuantResult(
        int8_model=inputs.out,
        fp32_model=inputs.model,
        backend=qbackend.value,
        method=best.method,
        settings=settings,
        fp32_accuracy=gate.fp32.accuracy,
        int8_accuracy=ev.accuracy,
        accuracy_drop=best.drop,
        agreement=ev.agreement,
        kl=ev.kl,
        per_class=per_class,
        size_ratio=best.size_ratio,
        fp32_bytes=gate.fp32_bytes,
        int8_bytes=_artifact_bytes(inputs.out),
        calibration_manifest=manifest_path,
        num_calibration=len(calib),
        calibration_skipped=calib.manifest.skipped,
        eval_images=len(evalset.inputs) if evalset else 0,
        eval_skipped=evalset.skipped if evalset else 0,
        max_drop=max_drop,
        passed=best.passed,
        attempts=tuple(gate.attempts),
    )
    if inputs.run is not None:
        write_text_atomic(inputs.run / QUANT_SUMMARY, json.dumps(result.to_dict(), indent=1) + "\n")
    return result
