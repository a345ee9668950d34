"""What the gate runs on: the FP32 model checked, evaluation images loaded, models run, sizes measured."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.console import track, warn
from edgetl.data.images import preprocess_readable
from edgetl.errors import BundleError, DataError
from edgetl.quantizer.calibration import list_labelled_images
from edgetl_runtime.backends import BackendName
from edgetl_runtime.modelfile import ONNX, OPENVINO, model_format, quantized_ops, read_model_info
from edgetl_runtime.modelinfo import ModelInfo, Precision


@dataclass(frozen=True)
class EvalSet:
    inputs: np.ndarray
    labels: np.ndarray | None  # class indices into the model's labels
    skipped: int = 0
    paths: tuple[Path, ...] = ()


def check_model(model_path: Path) -> ModelInfo:
    """The FP32 model's metadata, refusing already-quantized models and inconsistent input sizes."""
    import onnx

    info = read_model_info(model_path)
    proto = onnx.load(str(model_path), load_external_data=False)
    quantized = quantized_ops(n.op_type for n in proto.graph.node)
    if quantized or info.precision is not Precision.FP32:
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


def batch_size(model_path: Path) -> int:
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
    source: str | Path | Sequence[tuple[str, int]],
    info: ModelInfo,
    labels: Sequence[str] | None = None,
    *,
    exclude: frozenset[Path] = frozenset(),
) -> EvalSet:
    """An ImageFolder of the model's classes, a flat folder (no labels), or (path, index) pairs from a run.

    Without labels only agreement with the FP32 model is measured, so the gate cannot bound a top-1 drop.
    Images in `exclude` (those that calibrated the model) are left out: a gate on them would flatter it.
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
    kept_pairs = [(p, i) for p, i in pairs if p.resolve() not in exclude]
    if len(kept_pairs) < len(pairs):
        warn(
            f"{len(pairs) - len(kept_pairs)} evaluation images also calibrated the model; left out of the gate"
        )
    if not kept_pairs:
        raise DataError("every evaluation image also calibrated the model; pass other images with --eval")
    pairs = kept_pairs
    arrays, indices, skipped = preprocess_readable([p for p, _ in pairs], info.preprocess, "evaluation")
    kept = [pairs[i][1] for i in indices]
    if not arrays:
        raise DataError(
            f"{source if isinstance(source, (str, Path)) else 'evaluation split'}: no readable image"
        )
    targets = None if kept[0] is None else np.asarray(kept)
    return EvalSet(np.stack(arrays), targets, skipped, tuple(pairs[i][0].resolve() for i in indices))


def run_model(path: Path, inputs: np.ndarray, backend: str = BackendName.ORT_CPU) -> np.ndarray:
    from edgetl_runtime.backends import load_session

    session = load_session(path, backend)
    batch = batch_size(path) if model_format(path) is ONNX else 1
    starts = track(range(0, len(inputs), batch), f"evaluating {path.name} on {len(inputs)} images")
    return np.concatenate([session.run(inputs[i : i + batch]) for i in starts])


def artifact_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in artifact_files(path))


def reference_bytes(fp32: Path, suffix: str) -> int:
    """The FP32 model's size in the format the INT8 one is written in: an IR is compared with an IR,
    whose .xml is much larger than an ONNX graph (it matters for small models)."""
    if suffix != OPENVINO.suffix:
        return fp32.stat().st_size
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="edgetl-ir-") as tmp:
        xml = Path(tmp) / f"fp32{OPENVINO.suffix}"
        ov.save_model(ov.Core().read_model(str(fp32)), str(xml), compress_to_fp16=False)
        return artifact_bytes(xml)


def artifact_files(path: Path) -> list[Path]:
    """The model and its companions (an OpenVINO IR is two files, the .xml and its .bin)."""
    return list(model_format(path).files(path))
