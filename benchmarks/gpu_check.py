"""Every GPU path of edgetl in one command, for the day a GPU is lent: one JSON with a row per check.

    uv run --frozen python benchmarks/gpu_check.py --json --out benchmarks/results/gpu_check.json

Checks, in order (each says `ok` with its figures, `unavailable` with the reason it cannot run on
this machine, or `failed` with the error):

- train-cuda-amp: `edgetl train --device cuda` (mixed precision) on a seeded sign-digits subset
  (SUBSET_PER_CLASS photos per class, 64 px, 2 frozen + 1 unfreeze epoch), time and val accuracy,
  against the same run with --device cpu; the val split is small, so accuracies within a few images
  are the same result;
- pytorch-cuda: the benchmark row of the trained checkpoint on PyTorch CUDA;
- onnxruntime-cuda: FP32 and FP16 (export --precision fp16) rows on onnxruntime's CUDA provider;
- onnxruntime-tensorrt: FP16 (model.onnx) and INT8 (model.int8.onnx) rows on TensorRT, with the first
  session start (engine build) and the cached start timed separately;
- bundle-predict-cuda: the run packaged and predicted with `edgetl-run` on onnxruntime-cuda, its
  top-1 compared with the same bundle on the CPU;
- torchrun-nccl: `edgetl train --devices 2 --device cuda` (NCCL), where more than one GPU exists.

Sized to finish within 8 minutes on one GPU. Without a GPU it exits 0 and lists every check with the
reason it cannot run; it exits 1 only when a check that could run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sign-digits"
SUBSET_PER_CLASS = 40
TRAIN = {"frozen_epochs": 2, "epochs": 1, "unfreeze": 2, "image_size": 64, "hflip": False, "seed": 0}
BENCH = {"warmup_s": 0.5, "min_s": 2.0, "min_runs": 50, "rounds": 2, "repeats": 0, "batches": (1, 8)}


def torch_cuda_reason() -> str | None:
    import torch

    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU build (no CUDA)"
    if not torch.cuda.is_available():
        return "no CUDA device visible to PyTorch (torch.cuda.is_available() is False)"
    return None


def ort_reason(backend: str) -> str | None:
    from edgetl_runtime.backends import BACKENDS

    return BACKENDS[backend].check()


def data_reason() -> str | None:
    return (
        None if DATA.is_dir() else f"{DATA}: sign-digits is not on this machine (see shared/data/README.md)"
    )


def gpus_reason() -> str | None:
    import torch

    n = torch.cuda.device_count() if torch_cuda_reason() is None else 0
    return None if n > 1 else f"{n} GPU(s) here: torchrun with NCCL needs more than one"


@dataclass
class Context:
    work: Path
    run: Path | None = None  # the CUDA-trained run folder, once train-cuda-amp has made it


def _subset(work: Path) -> Path:
    """A seeded subset of sign-digits as symlinks (the photos are not copied)."""
    import random

    out = work / "sign-digits-subset"
    rng = random.Random(0)
    for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.is_file())
        (out / folder.name).mkdir(parents=True)
        for photo in rng.sample(photos, min(SUBSET_PER_CLASS, len(photos))):
            (out / folder.name / photo.name).symlink_to(photo.resolve())
    return out


def check_train(ctx: Context) -> dict:
    from edgetl.api import export, quantize, train

    data = _subset(ctx.work)
    figures = {}
    for device in ("cuda", "cpu"):
        start = time.perf_counter()
        result = train(data, ctx.work / f"run-{device}", device=device, **TRAIN)
        figures[device] = {
            "seconds": round(time.perf_counter() - start, 2),
            "best_val_accuracy": result.best_val_accuracy,
            "num_train": result.num_train,
            "num_val": result.num_val,
        }
    ctx.run = ctx.work / "run-cuda"
    export(ctx.run)
    quantize(ctx.run, allow_drop=True)  # the INT8 model is a benchmark input here, not a deliverable
    figures["speedup"] = round(figures["cpu"]["seconds"] / figures["cuda"]["seconds"], 2)
    one_image = 100.0 / figures["cuda"]["num_val"]
    figures["note"] = f"one val image is {one_image:.1f} points of accuracy"
    return figures


def _rows(models: list[Path], backends: list[str], **extra) -> list[dict]:
    from edgetl.api import benchmark

    report = benchmark(models, backends=backends, **BENCH, **extra)
    keep = ("backend", "model", "precision", "batch", "status", "reason", "p50_ms", "p90_ms", "throughput")
    rows = [{k: r.to_dict().get(k) for k in keep} for r in report.rows]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"{bad[0]['backend']} {bad[0]['model']}: {bad[0]['status']}: {bad[0]['reason']}")
    return rows


def check_pytorch_cuda(ctx: Context) -> dict:
    return {
        "rows": _rows([ctx.run / "model.onnx"], ["pytorch-cuda"], checkpoint=ctx.run / "best.safetensors")
    }


def check_ort_cuda(ctx: Context) -> dict:
    from edgetl.api import export

    fp16 = ctx.work / "model.fp16.onnx"
    export(ctx.run, fp16, precision="fp16")
    return {"rows": _rows([ctx.run / "model.onnx", fp16], ["onnxruntime-cuda"])}


def check_tensorrt(ctx: Context) -> dict:
    import numpy as np

    from edgetl_runtime.backends import load_session

    starts = {}
    os.environ["EDGETL_TRT_CACHE"] = str(ctx.work / "trt-engines")  # empty: the first start builds
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    for name in ("model.onnx", "model.int8.onnx"):
        timed = []
        for _ in ("build", "cached"):
            start = time.perf_counter()
            load_session(ctx.run / name, "onnxruntime-tensorrt").run(x)
            timed.append(round(time.perf_counter() - start, 2))
        starts[name] = {"first_start_s": timed[0], "cached_start_s": timed[1]}
    rows = _rows([ctx.run / "model.onnx", ctx.run / "model.int8.onnx"], ["onnxruntime-tensorrt"])
    return {"starts": starts, "rows": rows}


def check_bundle(ctx: Context) -> dict:
    from edgetl.api import package
    from edgetl.runfolder.splits import Splits
    from edgetl_runtime import Predictor

    bundle = package(ctx.run, ctx.work / "bundle.tar.gz").path
    images = [p for p, _ in Splits.load(ctx.run).val]
    cuda = Predictor.from_bundle(bundle, backend="onnxruntime-cuda", precision="fp32")
    cpu = Predictor.from_bundle(bundle, backend="onnxruntime-cpu", precision="fp32")
    on_gpu, on_cpu = cuda.predict(images), cpu.predict(images)
    same = sum(a.label == b.label for a, b in zip(on_gpu, on_cpu, strict=True))
    return {"backend": cuda.backend, "images": len(images), "same_top1_as_cpu": same}


def check_nccl(ctx: Context) -> dict:
    data = (
        _subset(ctx.work / "nccl")
        if not (ctx.work / "sign-digits-subset").is_dir()
        else ctx.work / "sign-digits-subset"
    )
    args = [sys.executable, "-m", "edgetl", "train", "--data", str(data), "--out", str(ctx.work / "run-nccl")]
    args += [
        "--devices",
        "2",
        "--device",
        "cuda",
        "--frozen-epochs",
        "1",
        "--epochs",
        "1",
        "--image-size",
        "64",
    ]
    start = time.perf_counter()
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        )
    summary = json.loads(done.stdout)
    return {"seconds": round(time.perf_counter() - start, 2), "world_size": summary["world_size"],
            "backend": summary["backend"], "best_val_accuracy": summary["best_val_accuracy"]}  # fmt: skip


@dataclass(frozen=True)
class Check:
    name: str
    needs: tuple[Callable[[], str | None], ...]  # each returns why the check cannot run here, or None
    run: Callable[[Context], dict]
    needs_run: bool = True  # uses the run folder train-cuda-amp made


CHECKS = (
    Check("train-cuda-amp", (torch_cuda_reason, data_reason), check_train, needs_run=False),
    Check("pytorch-cuda", (torch_cuda_reason,), check_pytorch_cuda),
    Check("onnxruntime-cuda", (lambda: ort_reason("onnxruntime-cuda"),), check_ort_cuda),
    Check("onnxruntime-tensorrt", (lambda: ort_reason("onnxruntime-tensorrt"),), check_tensorrt),
    Check("bundle-predict-cuda", (lambda: ort_reason("onnxruntime-cuda"),), check_bundle),
    Check("torchrun-nccl", (torch_cuda_reason, gpus_reason, data_reason), check_nccl, needs_run=False),
)


def run_checks(work: Path) -> list[dict]:
    ctx, rows = Context(work), []
    for check in CHECKS:
        reasons = [r for r in (need() for need in check.needs) if r]
        if not reasons and check.needs_run and ctx.run is None:
            reasons = ["needs the run folder train-cuda-amp makes, and that check did not run"]
        row = {"check": check.name, "status": "unavailable", "reason": "; ".join(reasons) or None}
        if not reasons:
            start = time.perf_counter()
            try:
                row.update(status="ok", **check.run(ctx))
            except Exception as e:  # one failed check must not hide the others' figures
                row.update(status="failed", reason=f"{type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stderr)
            row["check_seconds"] = round(time.perf_counter() - start, 2)
        print(f"gpu_check: {check.name}: {row['status']}{': ' + row['reason'] if row['reason'] else ''}",
              file=sys.stderr)  # fmt: skip
        rows.append(row)
    return rows


def environment() -> dict:
    import onnxruntime
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers(), "gpus": gpus}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-gpu-check-") as tmp:
        checks = run_checks(Path(tmp))
    result = {
        "environment": environment(),
        "checks": checks,
        "seconds": round(time.perf_counter() - start, 2),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for row in checks:
            print(f"{row['check']:<22} {row['status']:<12} {row['reason'] or ''}")
    return 1 if any(row["status"] == "failed" for row in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
