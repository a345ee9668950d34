"""Describe a model edgetl did not export: write its labels and preprocessing into a copy's metadata.

An ONNX file from elsewhere (ONNX Model Zoo, a plain `torch.onnx.export`, a colleague) carries no
labels or preprocessing, so quantize, benchmark, package and the runtime refuse it. `describe_model`
writes the same `edgetl.*` metadata `edgetl export` writes into a copy (never the given file); from
then on the copy goes through every later step like edgetl's own export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from edgetl import __version__
from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import Kind
from edgetl.runfolder.outputs import check_outputs
from edgetl_runtime.fileio import atomic_output, sha256_file
from edgetl_runtime.modelfile import ONNX, graph_precision
from edgetl_runtime.modelinfo import ModelInfo
from edgetl_runtime.preprocess import Interpolation, PreprocessSpec

# Named presets: normalisation and resampling; the crop comes from the model's input when fixed.
PRESETS: dict[str, PreprocessSpec] = {
    # torchvision / most PyTorch ImageNet models: bilinear, ImageNet mean/std, 87.5% centre crop
    "imagenet": PreprocessSpec(crop=224, resize=256, interpolation=Interpolation.BILINEAR),
    # TF-slim / Inception / TF EfficientNet(-Lite) ports: bicubic, scaled to [-1, 1]
    "inception": PreprocessSpec(
        crop=299, resize=342, interpolation=Interpolation.BICUBIC, mean=(0.5,) * 3, std=(0.5,) * 3
    ),
}


@dataclass(frozen=True)
class DescribeResult:
    path: Path
    source: Path
    info: ModelInfo
    input_shape: tuple
    output_shape: tuple

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "labels": len(self.info.labels),
            "preprocess": self.info.preprocess.to_dict(),
            "backbone": self.info.backbone,
            "input": {"name": self.info.input_name, "shape": list(self.input_shape)},
            "output": {"name": self.info.output_name, "shape": list(self.output_shape)},
            "precision": self.info.precision,
        }


def read_labels(path: str | Path) -> tuple[str, ...]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EdgetlError(
            f"--labels {path}: cannot read ({type(e).__name__}); give a UTF-8 text file"
        ) from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise EdgetlError(f"--labels {path}: no labels; give one class name per line, in output order")
    return labels


def resolve_preprocess(choice: str | Path, layout: str, size: int | None) -> PreprocessSpec:
    """A preset name (its crop replaced by the model's fixed input size) or a JSON file of spec keys."""
    name = str(choice)
    if name in PRESETS:
        spec = replace(PRESETS[name], layout=layout)
        return spec.with_size(size) if size else spec
    path = Path(choice)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgetlError(
            f"--preprocess {choice}: neither a preset ({', '.join(PRESETS)}) nor an existing JSON file"
        ) from None
    except (OSError, ValueError) as e:
        raise EdgetlError(f"--preprocess {path}: not readable JSON ({e})") from None
    if not isinstance(data, dict) or set(data) - set(PreprocessSpec.__dataclass_fields__):
        keys = ", ".join(PreprocessSpec.__dataclass_fields__)
        raise EdgetlError(f"--preprocess {path}: must be a JSON object with keys among {keys}")
    # layout comes from the model's input; channel order is RGB unless the file says otherwise
    try:
        spec = PreprocessSpec.from_dict({"layout": layout, "channels": "RGB", **data})
    except (ValueError, TypeError) as e:
        raise EdgetlError(f"--preprocess {path}: {e}") from None
    if size and spec.crop != size:
        raise EdgetlError(f"--preprocess {path}: crop {spec.crop} but the model's input is {size}x{size}")
    if spec.layout != layout:
        raise EdgetlError(f"--preprocess {path}: layout {spec.layout} but the model's input is {layout}")
    return spec


def _dims(value) -> tuple:
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
        for d in value.type.tensor_type.shape.dim
    )


def _input_layout(model_path: Path, shape: tuple) -> tuple[str, int | None]:
    """(layout, fixed square size or None) of a 4-D image input with 3 channels."""
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise EdgetlError(
            f"{model_path}: input shape {list(shape)} is not a batch of 3-channel images (NCHW or NHWC)"
        )
    layout = "NCHW" if shape[1] == 3 else "NHWC"
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    fixed = [d for d in (h, w) if isinstance(d, int) and d > 0]
    if len(fixed) == 2 and h != w:
        raise EdgetlError(f"{model_path}: input is {h}x{w}; edgetl's preprocessing gives square crops")
    return layout, (fixed[0] if fixed else None)


def describe_model(
    model: str | Path,
    out: str | Path,
    *,
    labels: str | Path,
    preprocess: str | Path,
    name: str | None = None,
) -> DescribeResult:
    """Copy ONNX `model` to `out` with edgetl metadata: labels (a file, one per line, in output
    order), preprocessing (a preset or a JSON spec) and a name (default: the file's stem).

    The copy is checked with onnxruntime (it loads, and one input of the described shape gives one
    score per label) before it appears at `out`; `model` itself is never written.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    src, out = Path(model), Path(out)
    if not src.is_file():
        raise EdgetlError(f"{src}: no such model file")
    preset = str(preprocess) in PRESETS
    # an FP32 or an INT8 model: which one is known once the file is read
    models = (Kind.FP32_MODEL, Kind.INT8_MODEL)
    check_outputs([("--out", out, models)], inputs=[src, labels, None if preset else preprocess])
    names = read_labels(labels)
    try:
        proto = onnx.load(str(src))
    except Exception as e:  # protobuf and onnx raise assorted types for a bad file
        raise EdgetlError(f"{src}: not a readable ONNX model ({type(e).__name__})") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(proto.graph.output) < 1:
        raise EdgetlError(f"{src}: has {len(inputs)} inputs; edgetl runs models with one image input")
    in_shape, out_shape = _dims(inputs[0]), _dims(proto.graph.output[0])
    layout, size = _input_layout(src, in_shape)
    spec = resolve_preprocess(preprocess, layout, size)
    if len(out_shape) != 2:
        raise EdgetlError(
            f"{src}: output {proto.graph.output[0].name!r} has shape {list(out_shape)}; edgetl runs "
            "classifiers, whose output is [N, classes] (one score per label)"
        )
    classes = out_shape[-1]
    if isinstance(classes, int) and classes != len(names):
        raise EdgetlError(
            f"--labels {labels}: {len(names)} labels but the model outputs {classes} scores per image"
        )
    float16 = inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    precision = graph_precision((n.op_type for n in proto.graph.node), float16=float16)
    info = ModelInfo(
        labels=names,
        preprocess=spec,
        backbone=name or src.stem,
        input_name=inputs[0].name,
        output_name=proto.graph.output[0].name,
        precision=precision,
        edgetl_version=__version__,
        source_sha256=sha256_file(src),
    )
    ONNX.embed(proto, info.to_metadata())
    with atomic_output(out, "--out") as tmp:
        onnx.save(proto, str(tmp))
        try:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            dtype = np.float16 if float16 else np.float32
            scores = session.run(None, {info.input_name: np.zeros(spec.input_shape(1), dtype)})[0]
        except Exception as e:  # onnxruntime raises several unrelated types
            raise EdgetlError(
                f"{src}: onnxruntime cannot run it with input {list(spec.input_shape(1))} ({e})"
            ) from None
        if scores.ndim != 2 or scores.shape[-1] != len(names):
            raise EdgetlError(
                f"--labels {labels}: {len(names)} labels but the model outputs {scores.shape[-1]} scores per image"
            )
    return DescribeResult(out, src, info, in_shape, out_shape)
