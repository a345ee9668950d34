"""Export: a run's best checkpoint (or a pretrained backbone with its ImageNet head) to ONNX, and
optionally OpenVINO IR, proven equal to the PyTorch model by a parity gate before anything is written.

Conversion lives in edgetl/exporter/convert.py, the gate in edgetl/exporter/parity.py. The ONNX file carries its own labels and preprocessing (``edgetl.*`` metadata_props), so the device
runtime needs nothing else. Every output goes to a temporary name and is renamed only after the gate
passes: a failed export leaves no file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgetl import __version__
from edgetl.backbones.checkpoint import load_checkpoint
from edgetl.backbones.registry import EdgeModel, create_model, get_backbone
from edgetl.console import log, warn
from edgetl.data.images import preprocess_readable
from edgetl.data.modality import source_modality
from edgetl.errors import EdgetlError
from edgetl.exporter import litert
from edgetl.exporter.convert import EXTRA_FORMATS, check_opset, optimize_onnx, save_onnx, to_fp16, to_onnx
from edgetl.exporter.parity import Parity, gate, gate_tolerance, torch_logits
from edgetl.options import (
    CHECK_BATCH,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    EXPORT_PRECISIONS,
    MAX_CHECK_IMAGES,
    ExportFormat,
)
from edgetl.runfolder.folder import TMP_PREFIX, ExportRecord, Kind, RunFolder, Step, find_checkpoint
from edgetl.runfolder.outputs import check_outputs
from edgetl.runfolder.splits import SPLITS, Splits
from edgetl_runtime.backends import BackendName
from edgetl_runtime.fileio import atomic_output, check_writable, sha256_file
from edgetl_runtime.modality import Modality
from edgetl_runtime.modelfile import BY_NAME, ONNX
from edgetl_runtime.modelinfo import ModelInfo, Precision
from edgetl_runtime.preprocess import ImageInput, list_images

SAMPLE_BATCH = 16
SAMPLE_SEED = 0


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
    litert: Path | None = None

    @property
    def artifact(self) -> Path:
        """The exported model (inside its run folder when exported from one)."""
        return self.onnx

    def to_dict(self) -> dict:
        d = asdict(self)
        d["onnx"] = str(self.onnx)
        d["openvino"] = str(self.openvino) if self.openvino else None
        if self.litert is None:  # the summary of an export without LiteRT keeps its keys
            del d["litert"]
        else:
            d["litert"] = str(self.litert)
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


# --- the stage --------------------------------------------------------------------------------------


def _default_out(loaded: LoadedSource) -> Path:
    if loaded.run is not None:
        return RunFolder(loaded.run).model
    if loaded.checkpoint is not None:
        return loaded.checkpoint.with_suffix(ONNX.suffix)
    return Path(f"{loaded.info.backbone}.onnx")


def _check_writable(out: Path) -> None:
    """Fail before the slow export, not after it."""
    if out.is_dir():
        raise EdgetlError(f"--out {out}: is a folder; give a file name such as {RunFolder(out).model}")
    if out.suffix != ONNX.suffix:
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
    formats: Sequence[str | ExportFormat] = (ExportFormat.ONNX,),
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
        extra = [ExportFormat(f) for f in formats if ExportFormat(f) is not ExportFormat.ONNX]
    except ValueError:
        raise EdgetlError(
            f"--format {formats}: choose from {', '.join(f.value for f in ExportFormat)}"
        ) from None
    if not 0 <= tolerance < math.inf:  # NaN fails this too: a NaN tolerance would pass any model
        raise EdgetlError(f"--tolerance {tolerance}: must be a finite number >= 0")
    if batch < 1 or max_images < 1:
        raise EdgetlError("--batch and --max-check-images must be at least 1")
    check_opset(opset)
    request = ExportRequest(
        source, None if out is None else Path(out), backbone, opset, precision, optimize, tuple(extra),
        check_images, tolerance, batch, max_images, start,
    )  # fmt: skip
    return EXPORTERS[source_modality(source)](request)


@dataclass(frozen=True)
class ExportRequest:
    """`export_onnx`'s checked options, handed to the exporter of the model's modality."""

    source: str | Path | None
    out: Path | None
    backbone: str | None
    opset: int
    precision: Precision
    optimize: bool
    extra: tuple[ExportFormat, ...]
    check_images: str | Path | None
    tolerance: float
    batch: int
    max_images: int
    start: float


def _export_images(r: ExportRequest) -> ExportResult:
    if ExportFormat.LITERT in r.extra:
        litert.find_converter()  # before the slow export, not after it
    loaded = load_source(r.source, backbone=r.backbone, check_images=r.check_images, max_images=r.max_images)
    out = r.out if r.out is not None else _default_out(loaded)
    extra = [(f"--format {fmt.value}", BY_NAME[fmt.value]) for fmt in r.extra]
    extra_files = [
        (option, p, Kind.FP32_MODEL) for option, f in extra for p in f.files(out.with_suffix(f.suffix))
    ]
    check_outputs(
        [("--out", out, Kind.FP32_MODEL), *extra_files],
        inputs=[loaded.checkpoint],
        image_folders=[r.check_images],
    )
    args = (loaded, out, r.start, r.opset, r.precision, r.optimize, list(r.extra), r.tolerance, r.batch)
    if loaded.run is None:
        return _export(*args)
    run = RunFolder(loaded.run)
    with run.lock("export"):
        run.check_for(Step.EXPORT)
        return _export(*args)


def _export_text(r: ExportRequest) -> ExportResult:
    from edgetl.exporter.text import export_text

    if ExportFormat.LITERT in r.extra:
        raise EdgetlError(f"--format litert: {litert.TEXT_REFUSAL}")
    if r.extra or r.precision is not Precision.FP32 or r.optimize or r.check_images or r.backbone:
        raise EdgetlError(
            "a text model exports to FP32 ONNX from its run, checked on its own validation texts: "
            "drop --format, --precision, --optimize, --check-images and --backbone"
        )
    return export_text(
        r.source, r.out, opset=r.opset, tolerance=r.tolerance, batch=r.batch, max_images=r.max_images,
        result_type=ExportResult,
    )  # fmt: skip


# one exporter per modality, chosen by the model (edgetl/data/modality.py)
EXPORTERS = {Modality.IMAGE: _export_images, Modality.TEXT: _export_text}


def _export(loaded: LoadedSource, out: Path, start, opset, precision, optimize, extra, tolerance, batch):
    _check_writable(out)
    info = loaded.info.with_(precision=precision)

    log(f"exporting {info.backbone} ({len(info.labels)} classes) to {out} (opset {opset}, {precision.value})")
    example = torch.from_numpy(np.resize(loaded.check, (2, *loaded.check.shape[1:])))
    proto = to_onnx(loaded.model, example, opset, info)
    reference = torch_logits(loaded.model, loaded.check, batch)
    limit = gate_tolerance(tolerance, precision, reference)

    def check(path: Path, runtime: str, layout: str = "NCHW") -> Parity:
        images = loaded.check if layout == "NCHW" else loaded.check.transpose(0, 2, 3, 1)
        return gate(path, runtime, reference, np.ascontiguousarray(images), limit, precision, batch)

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(out))
        if optimize:
            work = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent)
            )
            proto = optimize_onnx(proto, Path(work))
        if precision is Precision.FP16:
            proto = to_fp16(proto)
        ONNX.embed(proto, info.to_metadata())
        nodes = len(proto.graph.node)
        size = save_onnx(proto, tmp, out.name, stack)
        checks = [check(tmp, BackendName.ORT_CPU)]
        written = {}
        for fmt in extra:
            suffix, writer = BY_NAME[fmt.value].suffix, EXTRA_FORMATS[fmt]
            written[fmt] = out.with_suffix(suffix)
            checks.append(writer(tmp, written[fmt], info, stack, check))
    onnx_check = checks[0]
    result = ExportResult(
        onnx=out,
        openvino=written.get(ExportFormat.OPENVINO),
        litert=written.get(ExportFormat.LITERT),
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
        record = ExportRecord.from_dict(
            {**result.to_dict(), "source_sha256": info.source_sha256, "sha256": sha256_file(out)}
        )
        RunFolder(loaded.run).save_export(record)
    return result
