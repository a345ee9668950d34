"""The README a bundle carries: what the model is, how to install the runtime and run it."""

from __future__ import annotations

from edgetl.options import ExportFormat
from edgetl_runtime.manifest import FileEntry
from edgetl_runtime.modelfile import BY_NAME
from edgetl_runtime.modelinfo import ModelInfo


def render_readme(
    manifest_name: str, labels: tuple[str, ...], info: ModelInfo, models: list[FileEntry], form: ExportFormat
) -> str:
    files = "\n".join(f"- `{m.path}`: {m.precision.value}, for {', '.join(m.backends)}" for m in models)
    return f"""# {manifest_name}: an edgetl deploy bundle

{info.modality.value.capitalize()} classifier ({info.backbone}), {len(labels)} classes: {", ".join(labels)}.

{files}

Input ({info.modality.value}): {info.preprocess.describe()}.
The runtime does this for you from `manifest.json`.

## Install on the device (Linux x86_64/aarch64, macOS, Windows; Python >= 3.10)

    {BY_NAME[form.value].install}

## Run

    edgetl-run info BUNDLE
    edgetl-run predict BUNDLE photo.jpg photos/ --top-k 3 [--json]
    edgetl-run bench BUNDLE

    from edgetl_runtime import Predictor
    predictor = Predictor.from_bundle("BUNDLE")     # this folder or its .tar.gz
    for r in predictor.predict(["photo.jpg"]):
        print(r.source, r.label, r.score)

Every file is checked against the sha256 in `manifest.json` on load: a modified bundle is refused.

## NVIDIA GPUs

x86_64 server: `pip install edgetl-runtime onnxruntime-gpu` (needs the CUDA 12 and cuDNN 9 libraries
onnxruntime-gpu is built for), then `edgetl-run predict BUNDLE photos/ --backend onnxruntime-cuda`.
For TensorRT add `pip install tensorrt-cu12-libs` (or a system TensorRT) and use
`--backend onnxruntime-tensorrt`.

Jetson: install the onnxruntime-gpu wheel built for your JetPack (Jetson Zoo / NVIDIA's Jetson wheel
index), then `pip install --no-deps edgetl-runtime`; JetPack itself ships CUDA, cuDNN and TensorRT.

`onnxruntime-tensorrt` builds a TensorRT engine on the first run (FP16 kernels; INT8 where the INT8
model has its QDQ nodes) and keeps it in `~/.cache/edgetl-runtime/tensorrt` (`EDGETL_TRT_CACHE`
moves it); later runs load it instead of building. The first-run build time is not measured by
edgetl (it depends on the model, the GPU and TensorRT's tactic search): build it once before
serving, e.g. `edgetl-run bench BUNDLE --backend onnxruntime-tensorrt`.
"""
