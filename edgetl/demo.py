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
    return {
        "int8_model": str(r.int8_model),
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
    held_out = sorted((demo.data / "test").rglob("*.png"))
    predictor = Predictor.from_bundle(bundle.path)
    predictions = predictor.predict(held_out, top_k=1)
    correct = sum(p.ok and p.label == Path(p.source).parent.name for p in predictions)
    return {
        "bundle": str(bundle.path),
        "backend": predictor.backend,
        "held_out_images": len(held_out),
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


def run_demo(
    out: str | Path = Path("edgetl-demo"), *, seed: int = 0, steps: list[tuple[str, Step]] | None = None
) -> dict:
    """Run the demo steps into `out`; returns {step: summary} plus the total wall time."""
    demo = DemoRun(Path(out), seed=seed)
    check_writable(demo.out, "--out", folder=True)
    started = time.perf_counter()
    for name, step in steps or DEMO_STEPS:
        log(f"[bold]demo: {name}[/bold]")
        t0 = time.perf_counter()
        demo.results[name] = {**step(demo), "seconds": time.perf_counter() - t0}
    return {"out": str(demo.out), **demo.results, "total_seconds": time.perf_counter() - started}
