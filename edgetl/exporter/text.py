"""Export of a text run: the classifier to ONNX with Hugging Face's input names (input_ids,
attention_mask), dynamic batch and sequence length, its tokenizer, max_length, labels and pooling in
the metadata, proven equal to PyTorch on the run's validation texts at several sequence lengths."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edgetl import __version__
from edgetl.backbones.checkpoint import load_checkpoint
from edgetl.console import log
from edgetl.data.texts import read_recorded
from edgetl.errors import EdgetlError, GateError
from edgetl.exporter.convert import save_onnx
from edgetl.exporter.parity import Parity
from edgetl.runfolder.folder import ExportRecord, Kind, RunFolder, Step, find_checkpoint
from edgetl.runfolder.outputs import check_outputs
from edgetl.runfolder.splits import Splits
from edgetl_runtime.fileio import atomic_output, check_writable, sha256_file
from edgetl_runtime.modality import Modality
from edgetl_runtime.modelfile import ONNX
from edgetl_runtime.modelinfo import ModelInfo
from edgetl_runtime.textinput import TextSpec, encode_texts

# the sequence lengths parity is checked at (each capped at the model's max_length)
CHECK_LENGTHS = (16, 64, 128, 256)
EXAMPLE_TEXTS = ("a short example text", "a slightly longer example text for the exporter to trace with")


class _Logits(torch.nn.Module):
    """The classifier with the two named inputs the runtime feeds."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


def text_to_onnx(model, spec: TextSpec, opset: int, info: ModelInfo):
    """PyTorch -> ONNX ModelProto (dynamo exporter), batch and sequence length dynamic."""
    feed = encode_texts(list(EXAMPLE_TEXTS), spec).feed(spec)
    example = tuple(torch.from_numpy(feed[n]) for n in spec.inputs)
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2, max=4096)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names are not the user's business
            program = torch.onnx.export(
                _Logits(model).eval(),
                example,
                dynamo=True,
                dynamic_shapes=tuple({0: batch, 1: seq} for _ in spec.inputs),
                opset_version=opset,
                input_names=list(spec.inputs),
                output_names=[info.output_name],
                verbose=False,
            )
    except Exception as e:
        raise EdgetlError(
            f"ONNX export of {info.backbone} failed ({type(e).__name__}: {str(e).strip().splitlines()[0]})"
        ) from None
    return program.model_proto


def check_texts(run: Path | None, limit: int) -> tuple[list[str], str]:
    if run is not None and (run / "splits.json").is_file():
        val = Splits.load(run).val
        if val:
            picks = [val[i] for i in np.linspace(0, len(val) - 1, min(limit, len(val))).round().astype(int)]
            return read_recorded([p for p, _ in picks]), f"validation split of {run}"
    return list(EXAMPLE_TEXTS) * 4, "built-in example texts"


def text_parity(
    path: Path, model, texts: list[str], spec: TextSpec, tolerance: float, batch: int
) -> list[Parity]:
    """onnxruntime against PyTorch at each check length: max |logit diff| and top-1 flips."""
    from edgetl_runtime.backends import load_session

    session = load_session(path, "onnxruntime-cpu", exact=True)
    checks = []
    for length in sorted({min(n, spec.max_length) for n in CHECK_LENGTHS}):
        at = TextSpec(spec.tokenizer, length, spec.pooling, spec.inputs)
        diffs, flips = [], 0
        for start in range(0, len(texts), batch):
            feed = encode_texts(texts[start : start + batch], at).feed(at)
            with torch.inference_mode():
                ref = model(*(torch.from_numpy(feed[n]) for n in spec.inputs)).float().numpy()
            got = session.run(feed)
            diffs.append(float(np.abs(ref - got).max()))
            flips += int((ref.argmax(1) != got.argmax(1)).sum())
        diff = max(diffs)
        checks.append(
            Parity(f"onnxruntime-cpu@{length}", len(texts), diff, 1 - flips / len(texts), tolerance, flips, 0)
        )
    return checks


def export_text(source, out, *, opset: int, tolerance: float, batch: int, max_images: int, result_type):
    """The text half of `edgetl export` (a run folder or checkpoint of a text model); `result_type` is
    export's ExportResult, handed in so this module does not import the one that dispatches to it."""
    start = time.perf_counter()
    checkpoint = find_checkpoint(source)
    run = Path(source) if Path(source).is_dir() else None
    model, ckpt = load_checkpoint(checkpoint)
    out = (
        Path(out)
        if out is not None
        else (RunFolder(run).model if run else checkpoint.with_suffix(ONNX.suffix))
    )
    if out.suffix != ONNX.suffix or out.is_dir():
        raise EdgetlError(f"--out {out}: give a file name ending in {ONNX.suffix}")
    check_writable(out, "--out")
    spec = ckpt.preprocess
    info = ModelInfo(
        labels=ckpt.labels, preprocess=spec, backbone=ckpt.backbone, input_name="input_ids",
        edgetl_version=__version__, source_sha256=sha256_file(checkpoint), modality=Modality.TEXT,
    )  # fmt: skip
    texts, origin = check_texts(run or checkpoint.parent, max_images)
    lock = RunFolder(run).lock("export") if run else contextlib.nullcontext()
    with lock:
        if run:
            RunFolder(run).check_for(Step.EXPORT)
        check_outputs([("--out", out, Kind.FP32_MODEL)], inputs=[checkpoint])
        log(f"exporting {info.backbone} ({len(info.labels)} classes, text) to {out} (opset {opset})")
        proto = text_to_onnx(model, spec, opset, info)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_output(out))
            ONNX.embed(proto, info.to_metadata())
            nodes = len(proto.graph.node)
            size = save_onnx(proto, tmp, out.name, stack)
            checks = text_parity(tmp, model, texts, spec, tolerance, batch)
            for c in checks:
                log(
                    f"  parity {c.runtime}: max |diff| {c.max_abs_diff:.2e}, top-1 agreement {c.top1_agreement:.4f}"
                )
            failed = [c for c in checks if not c.passed]
            if failed:
                raise GateError(
                    f"--tolerance {tolerance}: onnxruntime differs from PyTorch at {failed[0].runtime} "
                    f"(max |diff| {failed[0].max_abs_diff:.2e}, {failed[0].top1_flips} top-1 flips); nothing was written"
                )
    worst = max(checks, key=lambda c: c.max_abs_diff)
    result = result_type(
        onnx=out, openvino=None, backbone=info.backbone, source=str(checkpoint), opset=opset, precision="fp32",
        optimized=False, max_abs_diff=worst.max_abs_diff, top1_agreement=min(c.top1_agreement for c in checks),
        n_images=len(texts), check_images=origin, skipped_images=0, tolerance=tolerance, size_bytes=size,
        nodes=nodes, seconds=round(time.perf_counter() - start, 2), checks=tuple(checks),
    )  # fmt: skip
    if run is not None:
        record = ExportRecord.from_dict(
            {**result.to_dict(), "source_sha256": info.source_sha256, "sha256": sha256_file(out)}
        )
        RunFolder(run).save_export(record)
    return result
