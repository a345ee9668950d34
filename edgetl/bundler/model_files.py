"""The model files a bundle ships from a run folder: which ones for a precision and format, the
backends meant to run each, their tensors, and how they are copied (an IR with its .bin)."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgetl.errors import BundleError, EdgetlError
from edgetl.options import ExportFormat, PackagePrecision
from edgetl.runfolder.folder import RunFolder
from edgetl_runtime.backends import BackendName
from edgetl_runtime.manifest import TensorSpec
from edgetl_runtime.modelfile import BY_NAME, ONNX, model_format
from edgetl_runtime.modelinfo import Precision

# The backends meant to run each precision's model, in order of preference, kept to those that read
# the format: "auto" on a device takes the first model whose list holds its backend, so INT8 serves
# CPUs and FP32 serves GPUs.
MODEL_BACKENDS: dict[Precision, tuple[BackendName, ...]] = {
    # TensorRT runs the QDQ model as INT8 kernels (the CUDA provider would dequantize it back to float)
    Precision.INT8: (
        BackendName.ORT_CPU,
        BackendName.ORT_OPENVINO,
        BackendName.OPENVINO_CPU,
        BackendName.ORT_TENSORRT,
        BackendName.LITERT_CPU,
    ),
    Precision.FP32: (
        BackendName.ORT_CPU,
        BackendName.ORT_CUDA,
        BackendName.ORT_OPENVINO,
        BackendName.OPENVINO_CPU,
        BackendName.OPENVINO_GPU,
        BackendName.ORT_TENSORRT,
        BackendName.LITERT_CPU,
    ),
}
WANTED = {
    PackagePrecision.INT8: (Precision.INT8,),
    PackagePrecision.FP32: (Precision.FP32,),
    PackagePrecision.BOTH: (Precision.INT8, Precision.FP32),
}


def choose_models(
    run: Path, precision: PackagePrecision | None, form: ExportFormat
) -> list[tuple[Precision, Path, tuple[str, ...]]]:
    """(precision, run-folder file, backends meant to run it) of each model to ship, preferred first."""
    fmt, folder = BY_NAME[form.value], RunFolder(run)
    if precision is None:
        has_int8 = folder.model_file(Precision.INT8, fmt.suffix).is_file()
        precision = PackagePrecision.BOTH if has_int8 else PackagePrecision.FP32
    chosen = []
    for p in WANTED[precision]:
        path = folder.model_file(p, fmt.suffix)
        if not path.is_file():
            _refuse_missing(folder, path, p, precision, form)
        chosen.append((p, path, tuple(b for b in MODEL_BACKENDS[p] if b in fmt.backends)))
    return chosen


def _refuse_missing(
    folder: RunFolder, path: Path, p: Precision, precision: PackagePrecision, form: ExportFormat
) -> None:
    """The one-line error for a model the precision asks for that the run lacks: an INT8 model that
    quantize decided against is not fixed by running quantize again."""
    record = folder.load_quantization() if p is Precision.INT8 else None
    if record is not None and record.shipped is Precision.FP32:
        raise EdgetlError(
            f"--precision {precision.value}: `edgetl quantize {folder.root}` shipped FP32, no INT8 model "
            f"({record.reason}); package --precision fp32, or quantize with --method METHOD to write one anyway"
        )
    command = BY_NAME[form.value].rebuild[p].format(run=folder.root)
    raise EdgetlError(
        f"{path}: missing for --precision {precision.value} --format {form.value}; run `{command}` first"
    )


def tensor_specs(path: Path) -> tuple[TensorSpec, TensorSpec]:
    inputs, outputs = model_format(path).tensors(path)
    # an image classifier has one input; a text one its token ids first, then the attention mask
    if not (len(inputs) == 1 or inputs[0].name == "input_ids") or len(outputs) != 1:
        raise BundleError(
            f"{path}: a classifier has one input (token ids and mask for text) and one output; "
            f"this model has {len(inputs)} and {len(outputs)}"
        )
    x, y = inputs[0], outputs[0]
    if y.shape and isinstance(y.shape[0], str) and x.shape and isinstance(x.shape[0], str):
        # a dynamic batch: shape inference (quantization's pre-processing) may rename the output's symbol
        y = TensorSpec(y.name, (x.shape[0], *y.shape[1:]), y.dtype)
    return x, y


def _inlined_external_data(src: Path, dst: Path) -> bool:
    import onnx
    from onnx.external_data_helper import uses_external_data

    if model_format(src) is not ONNX:
        return False
    proto = onnx.load(str(src), load_external_data=False)
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return False
    onnx.save(onnx.load(str(src)), str(dst))
    return True


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model with its companion files (an IR's .bin); ONNX weights kept in an external .data
    file are inlined, so the bundle's model is one file."""
    fmt = model_format(src)
    for part, target in zip(fmt.files(src)[1:], fmt.files(dst)[1:], strict=True):
        shutil.copyfile(part, target)
    if not _inlined_external_data(src, dst):
        shutil.copyfile(src, dst)
