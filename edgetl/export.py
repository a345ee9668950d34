"""Export: a run's best checkpoint (or a pretrained backbone with its ImageNet head) to ONNX, and
optionally OpenVINO IR, proven equal to the PyTorch model by a parity gate before anything is written.

The ONNX file carries its own labels and preprocessing (``edgetl.*`` metadata_props), so the device
runtime needs nothing else. Every output goes to a temporary name and is renamed only after the gate
passes: a failed export leaves no file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgetl_runtime.backends import load_session
from edgetl_runtime.fileio import atomic_output, check_writable, sha256_file
from edgetl_runtime.modelinfo import PREFIX, ModelInfo, Precision
from edgetl_runtime.preprocess import ImageInput, list_images

from . import __version__
from .backbones import EdgeModel, create_model, get_backbone
from .checkpoint import find_checkpoint, load_checkpoint
from .console import log, warn
from .errors import EdgetlError, GateError
from .images import preprocess_readable
from .options import (
    CHECK_BATCH,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    EXPORT_PRECISIONS,
    MAX_CHECK_IMAGES,
    ExportFormat,
)
from .run import TMP_PREFIX, ExportRecord, Kind, RunFolder, Stage, check_output
from .splits import SPLITS, Splits

DEFAULT_ONNX = "model.onnx"
# The dynamo exporter has no operator implementations below opset 18: asking for 17 silently yields 18
# or a failed down-conversion, so the floor is stated rather than pretended.
MIN_OPSET = DEFAULT_OPSET
# FP16 keeps ~11 significant bits (eps 9.8e-4); rounding compounds over a network's layers, so the FP16
# gate allows 1% of the largest |logit| (measured on efficientnet_lite0 / ImageNet photos: ~0.3%).
FP16_RELATIVE_TOLERANCE = 1e-2
# ONNX protobuf cannot hold more than 2 GB inline; only then do the weights go to a side file.
PROTOBUF_LIMIT = 2**31 - 1
SAMPLE_BATCH = 16
SAMPLE_SEED = 0


Format = ExportFormat


@dataclass(frozen=True)
class LoadedSource:
    """A model ready to export, what its file will say about itself, and the images that check it."""

    model: EdgeModel
    info: ModelInfo
    check: np.ndarray  # preprocessed check images, (N, 3, H, W) float32
    check_origin: str  # where the check images came from, for the summary
    skipped_images: int  # unreadable check images, skipped and counted
    run: Path | None  # the run folder, when a run folder was given
    checkpoint: Path | None  # None for a pretrained backbone


@dataclass(frozen=True)
class Parity:
    """One runtime's agreement with PyTorch on the check images."""

    runtime: str
    n_images: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    top1_flips: int  # images whose top-1 class differs from PyTorch's
    ties_excused: int  # flips allowed because PyTorch's top-2 margin was within the tolerance (FP16 only)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_flips == self.ties_excused


@dataclass(frozen=True)
class ExportResult:
    onnx: Path
    openvino: Path | None
    backbone: str
    source: str
    opset: int
    precision: str
    optimized: bool
    max_abs_diff: float  # onnxruntime CPU vs PyTorch
    top1_agreement: float
    n_images: int
    check_images: str
    skipped_images: int
    tolerance: float
    size_bytes: int
    nodes: int
    seconds: float
    checks: tuple[Parity, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["onnx"] = str(self.onnx)
        d["openvino"] = str(self.openvino) if self.openvino else None
        d["checks"] = [{**asdict(c), "passed": c.passed} for c in self.checks]
        return d


# --- what to export ---------------------------------------------------------------------------------


def _imagenet_labels(num_classes: int) -> tuple[str, ...]:
    """timm ships the ImageNet-1k class descriptions, so a pretrained head gets real names offline."""
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return tuple(info.index_to_description(i) for i in range(1000))
    return tuple(f"class_{i}" for i in range(num_classes))


def _state_sha256(model: torch.nn.Module) -> str:
    """Identity of weights that have no checkpoint file: a hash over the state_dict, name by name."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _sample_photos(n: int = SAMPLE_BATCH, seed: int = SAMPLE_SEED) -> list[np.ndarray]:
    """A fixed batch of real photographs (scikit-learn's two sample images and seeded crops of them)."""
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    rng = np.random.default_rng(seed)
    out = list(photos)
    while len(out) < n:
        photo = photos[len(out) % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top : top + side, left : left + side]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out[:n]


def _spread(items: Sequence, limit: int) -> list:
    """At most `limit` items evenly spaced over the sequence (the classes of a sorted split stay mixed)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _check_sources(
    run: Path | None, check_images: Path | None, max_images: int
) -> tuple[list[ImageInput], str]:
    if check_images is not None:
        if not Path(check_images).is_dir():
            raise EdgetlError(f"--check-images {check_images}: no such folder of images")
        found = list_images(check_images)
        if not found:
            raise EdgetlError(f"--check-images {check_images}: no image files found")
        return _spread(found, max_images), f"--check-images {check_images}"
    if run is not None and (run / SPLITS).is_file():
        val = Splits.load(run).val
        if val:
            return _spread([p for p, _ in val], max_images), f"validation split of {run}"
    if run is not None:
        warn(f"{run}: no validation images recorded ({SPLITS}); checking parity on sample photos instead")
    return _sample_photos(), "seeded sample photos (scikit-learn)"


def _preprocess_check(sources: list[ImageInput], info: ModelInfo, origin: str) -> tuple[np.ndarray, int]:
    arrays, _, skipped = preprocess_readable(sources, info.preprocess, "check")
    if not arrays:
        raise EdgetlError(f"{origin}: none of the {len(sources)} check images is readable")
    return np.stack(arrays), skipped


def load_source(
    source: str | Path | None = None,
    *,
    backbone: str | None = None,
    check_images: str | Path | None = None,
    max_images: int = 256,
) -> LoadedSource:
    """The model of a run folder or checkpoint, or a pretrained backbone with its ImageNet head.

    Also gathers the images that check a converted model against it: `check_images` when given, else
    the run's validation split, else a fixed batch of sample photographs.
    """
    if source is None and backbone is None:
        raise EdgetlError(
            "give a run folder or checkpoint to export, or --backbone NAME for a pretrained model"
        )
    run = checkpoint = None
    if source is not None:
        checkpoint = find_checkpoint(source)
        run = Path(source) if Path(source).is_dir() else None
        model, ckpt = load_checkpoint(checkpoint)
        if backbone is not None and get_backbone(backbone).name != ckpt.backbone:
            raise EdgetlError(
                f"--backbone {backbone}: {checkpoint} was trained from {ckpt.backbone}; "
                "drop --backbone to export the run as trained"
            )
        info = ModelInfo(
            labels=ckpt.labels,
            preprocess=ckpt.preprocess,
            backbone=ckpt.backbone,
            edgetl_version=__version__,
            source_sha256=sha256_file(checkpoint),
        )
    else:
        spec = get_backbone(backbone)
        model = create_model(spec.name)
        head = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        info = ModelInfo(
            labels=_imagenet_labels(head.out_features),
            preprocess=spec.preprocess,
            backbone=spec.name,
            edgetl_version=__version__,
            source_sha256=_state_sha256(model),
        )
    sources, origin = _check_sources(
        run or (checkpoint.parent if checkpoint else None), check_images and Path(check_images), max_images
    )
    check, skipped = _preprocess_check(sources, info, origin)
    return LoadedSource(model.eval(), info, check, origin, skipped, run, checkpoint)


# --- conversion -------------------------------------------------------------------------------------


def _runtime_runs_opset(opset: int) -> bool:
    """onnxruntime lags behind onnx: ask it directly with a one-node model stamped with `opset`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except ort.capi.onnxruntime_pybind11_state.Fail:  # an opset or IR version it does not know
        return False
    return True


def opset_range() -> tuple[int, int]:
    """The opsets an export can use here: the exporter's floor up to what both onnx and onnxruntime take."""
    import onnx

    high = onnx.defs.onnx_opset_version()
    while high > MIN_OPSET and not _runtime_runs_opset(high):
        high -= 1
    return MIN_OPSET, high


def _check_opset(opset: int) -> None:
    import onnx
    import onnxruntime

    low, high = opset_range()
    if not low <= opset <= high:
        raise EdgetlError(
            f"--opset {opset}: choose {low} to {high} (the dynamo exporter starts at {low}; installed onnx "
            f"{onnx.__version__} writes up to {onnx.defs.onnx_opset_version()}, onnxruntime "
            f"{onnxruntime.__version__} runs up to {high})"
        )


def to_onnx(model: EdgeModel, example: torch.Tensor, opset: int, info: ModelInfo):
    """PyTorch -> ONNX ModelProto with the dynamo exporter and a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            input_names=[info.input_name],
            output_names=[info.output_name],
            verbose=False,
        )
    except Exception as e:  # the exporter raises many types; the first line says what failed
        raise EdgetlError(
            f"ONNX export of {info.backbone} failed ({type(e).__name__}: {str(e).strip().splitlines()[0]})"
        ) from None
    return program.model_proto


def _drop_unused_opsets(proto) -> None:
    used = {n.domain for n in proto.graph.node} | {""}
    keep = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def optimize_onnx(proto, work: Path):
    """onnxruntime's offline basic optimisations: constant folding and redundant-node removal, standard
    ONNX ops only (extended levels emit onnxruntime-specific fused ops and would tie the file to it)."""
    import onnx
    import onnxruntime as ort

    raw, optimized = work / "raw.onnx", work / "optimized.onnx"
    onnx.save(proto, raw)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    result = onnx.load(optimized)
    _drop_unused_opsets(result)
    return result


def _to_fp16(proto):
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Float inputs and outputs stay FP32, so the same preprocessing and callers work unchanged.
    converted = onnx_ir.from_proto(convert_float_to_float16(proto, keep_io_types=True))
    # The converter appends its input casts at the end of the node list; ONNX requires topological order.
    converted.graph.sort()
    return onnx_ir.to_proto(converted)


def _set_metadata(proto, info: ModelInfo) -> None:
    import onnx

    keep = [p for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in keep}, **info.to_metadata()})


def _save_onnx(proto, path: Path, final_name: str, stack: contextlib.ExitStack) -> int:
    """Write the model (inline below 2 GB) and return its size in bytes, side file included."""
    import onnx

    data = None
    if proto.ByteSize() < PROTOBUF_LIMIT:
        onnx.save(proto, path)
    else:
        data = path.parent / f"{final_name}.data"  # the name the file refers to, so written in place
        stack.push(lambda failed, *_: failed and data.unlink(missing_ok=True))
        onnx.save(proto, path, save_as_external_data=True, location=data.name)
    onnx.checker.check_model(str(path))  # by path: the checker cannot take a >2 GB proto in memory
    return path.stat().st_size + (data.stat().st_size if data else 0)


# --- parity gate ------------------------------------------------------------------------------------


def torch_logits(model: EdgeModel, batch: np.ndarray, chunk: int) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [
                model(torch.from_numpy(batch[i : i + chunk])).float().numpy()
                for i in range(0, len(batch), chunk)
            ]
        )


def compare_logits(
    runtime: str, reference: np.ndarray, got: np.ndarray, tolerance: float, excuse_ties: bool
) -> Parity:
    """Max |difference| and top-1 agreement; with `excuse_ties`, a top-1 flip counts as agreement when
    the reference's top-2 margin is within the tolerance (a numerical tie, not a conversion error)."""
    diff = float(np.abs(reference.astype(np.float64) - got.astype(np.float64)).max())
    agree = reference.argmax(1) == got.argmax(1)
    excused = 0
    if excuse_ties:
        top2 = np.sort(reference, axis=1)[:, -2:]
        excused = int(np.sum(~agree & (top2[:, 1] - top2[:, 0] <= tolerance)))
    return Parity(runtime, len(reference), diff, float(agree.mean()), tolerance, int(np.sum(~agree)), excused)


def _run_runtime(path: Path, runtime: str, batch: np.ndarray, chunk: int) -> np.ndarray:
    try:
        session = load_session(path, runtime, exact=True)  # the file's own precision, not bf16
    except EdgetlError:
        raise
    except Exception as e:  # onnxruntime/openvino load errors (e.g. an opset newer than they support)
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise EdgetlError(
            f"{runtime} cannot load the exported model ({last}); try --opset {DEFAULT_OPSET}"
        ) from None
    return np.concatenate([session.run(batch[i : i + chunk]) for i in range(0, len(batch), chunk)])


def gate(
    path: Path,
    runtime: str,
    reference: np.ndarray,
    batch: np.ndarray,
    tolerance: float,
    precision: Precision,
    chunk: int,
) -> Parity:
    parity = compare_logits(
        runtime, reference, _run_runtime(path, runtime, batch, chunk), tolerance, precision is Precision.FP16
    )
    log(
        f"parity {runtime}: max |logit diff| {parity.max_abs_diff:.2e} (tolerance {tolerance:.1e}), "
        f"top-1 agreement {parity.top1_agreement:.1%} on {parity.n_images} images"
    )
    if not parity.passed:
        raise GateError(
            f"export parity gate failed on {runtime}: max |logit diff| {parity.max_abs_diff:.3e} vs tolerance "
            f"{tolerance:.1e}, top-1 agreement {parity.top1_agreement:.1%} on {parity.n_images} images; "
            "nothing was written (try another --opset, drop --optimize, or raise --tolerance if expected)"
        )
    return parity


def _gate_tolerance(tolerance: float, precision: Precision, reference: np.ndarray) -> float:
    if precision is Precision.FP16:
        return max(tolerance, FP16_RELATIVE_TOLERANCE * float(np.abs(reference).max()))
    return tolerance


# --- extra formats ----------------------------------------------------------------------------------


def write_openvino(
    onnx_path: Path, xml: Path, info: ModelInfo, stack: contextlib.ExitStack, check: Callable
) -> Parity:
    """ONNX -> OpenVINO IR (.xml + .bin) with the metadata in rt_info, gated, renamed as a pair."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for key, value in info.to_metadata().items():
        model.set_rt_info(value, ["edgetl", key.removeprefix(PREFIX)])
    xml_tmp = stack.enter_context(atomic_output(xml))
    bin_of_tmp = xml_tmp.with_suffix(".bin")  # OpenVINO pairs the files by name
    stack.callback(bin_of_tmp.unlink, missing_ok=True)
    # save_model would otherwise halve the weights to FP16 and break FP32 parity.
    ov.save_model(model, str(xml_tmp), compress_to_fp16=False)
    parity = check(xml_tmp, "openvino-cpu")
    os.replace(bin_of_tmp, stack.enter_context(atomic_output(xml.with_suffix(".bin"))))
    return parity


def read_openvino_info(xml: str | Path) -> ModelInfo:
    """The edgetl metadata of an OpenVINO IR written by `edgetl export --format openvino`."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info(["edgetl"]):
        return ModelInfo.from_metadata({}, source=str(xml))
    values = model.get_rt_info(["edgetl"]).astype(dict)
    return ModelInfo.from_metadata({PREFIX + k: v.astype(str) for k, v in values.items()}, source=str(xml))


# one entry per format beyond ONNX: name -> (output suffix, writer)
EXTRA_FORMATS: dict[Format, tuple[str, Callable[..., Parity]]] = {Format.OPENVINO: (".xml", write_openvino)}


# --- the stage --------------------------------------------------------------------------------------


def _default_out(loaded: LoadedSource) -> Path:
    if loaded.run is not None:
        return loaded.run / DEFAULT_ONNX
    if loaded.checkpoint is not None:
        return loaded.checkpoint.with_suffix(".onnx")
    return Path(f"{loaded.info.backbone}.onnx")


def _check_writable(out: Path) -> None:
    """Fail before the slow export, not after it."""
    if out.is_dir():
        raise EdgetlError(f"--out {out}: is a folder; give a file name such as {out / DEFAULT_ONNX}")
    if out.suffix != ".onnx":
        raise EdgetlError(f"--out {out}: the file name must end in .onnx")
    check_writable(out, "--out")


def export_onnx(
    source: str | Path | None = None,
    out: str | Path | None = None,
    *,
    backbone: str | None = None,
    opset: int = DEFAULT_OPSET,
    precision: str | Precision = Precision.FP32,
    optimize: bool = False,
    formats: Sequence[str | Format] = (Format.ONNX,),
    check_images: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int = CHECK_BATCH,
    max_images: int = MAX_CHECK_IMAGES,
) -> ExportResult:
    """Export a run folder / checkpoint (or `backbone=NAME`, pretrained with its ImageNet head) to ONNX.

    The file is written only if onnxruntime (and OpenVINO, for formats=("onnx", "openvino")) reproduce
    PyTorch's logits within `tolerance` and its top-1 on every check image; else GateError. From a run
    folder, `out` defaults to RUN/model.onnx and the summary is also written to RUN/export.json.
    """
    start = time.perf_counter()
    precision = Precision(precision)
    if precision not in EXPORT_PRECISIONS:
        raise EdgetlError(
            f"--precision {precision.value}: export writes fp32 or fp16; INT8 comes from `edgetl quantize`"
        )
    try:
        extra = [Format(f) for f in formats if Format(f) is not Format.ONNX]
    except ValueError:
        raise EdgetlError(f"--format {formats}: choose from {', '.join(f.value for f in Format)}") from None
    if tolerance < 0:
        raise EdgetlError(f"--tolerance {tolerance}: must be >= 0")
    if batch < 1 or max_images < 1:
        raise EdgetlError("--batch and --max-check-images must be at least 1")
    _check_opset(opset)
    loaded = load_source(source, backbone=backbone, check_images=check_images, max_images=max_images)
    out = Path(out) if out is not None else _default_out(loaded)
    if loaded.run is None:
        return _export(loaded, out, start, opset, precision, optimize, extra, tolerance, batch)
    run = RunFolder(loaded.run)
    with run.lock("export"):
        run.check_for(Stage.EXPORT)
        return _export(loaded, out, start, opset, precision, optimize, extra, tolerance, batch)


def _export(loaded: LoadedSource, out: Path, start, opset, precision, optimize, extra, tolerance, batch):
    _check_writable(out)
    check_output(out, Kind.FP32_MODEL, inputs=[loaded.checkpoint] if loaded.checkpoint else [])
    info = loaded.info.with_(precision=precision.value)

    log(f"exporting {info.backbone} ({len(info.labels)} classes) to {out} (opset {opset}, {precision.value})")
    example = torch.from_numpy(np.resize(loaded.check, (2, *loaded.check.shape[1:])))
    proto = to_onnx(loaded.model, example, opset, info)
    reference = torch_logits(loaded.model, loaded.check, batch)
    limit = _gate_tolerance(tolerance, precision, reference)

    def check(path: Path, runtime: str) -> Parity:
        return gate(path, runtime, reference, loaded.check, limit, precision, batch)

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(out))
        if optimize:
            work = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent)
            )
            proto = optimize_onnx(proto, Path(work))
        if precision is Precision.FP16:
            proto = _to_fp16(proto)
        _set_metadata(proto, info)
        nodes = len(proto.graph.node)
        size = _save_onnx(proto, tmp, out.name, stack)
        checks = [check(tmp, "onnxruntime-cpu")]
        written = {}
        for fmt in extra:
            suffix, writer = EXTRA_FORMATS[fmt]
            written[fmt] = out.with_suffix(suffix)
            checks.append(writer(tmp, written[fmt], info, stack, check))
    onnx_check = checks[0]
    result = ExportResult(
        onnx=out,
        openvino=written.get(Format.OPENVINO),
        backbone=info.backbone,
        source=str(loaded.checkpoint) if loaded.checkpoint else f"pretrained:{info.backbone}",
        opset=opset,
        precision=precision.value,
        optimized=optimize,
        max_abs_diff=onnx_check.max_abs_diff,
        top1_agreement=onnx_check.top1_agreement,
        n_images=onnx_check.n_images,
        check_images=loaded.check_origin,
        skipped_images=loaded.skipped_images,
        tolerance=limit,
        size_bytes=size,
        nodes=nodes,
        seconds=round(time.perf_counter() - start, 2),
        checks=tuple(checks),
    )
    if loaded.run is not None:
        record = ExportRecord(str(out), result.source, info.source_sha256, sha256_file(out), result.to_dict())
        RunFolder(loaded.run).save_export(record)
    return result
