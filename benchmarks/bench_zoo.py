"""Measure the backbone zoo once and store what `edgetl backbones` shows: MACs, relative latency.

    uv run --frozen python benchmarks/bench_zoo.py --table edgetl/zoo_measured.json
    uv run --frozen python benchmarks/bench_zoo.py --top1 ../shared/data/imagenet-dev

--table: every registered backbone is built with random weights (the graph, not the weights, sets
MACs and latency), exported to ONNX at its own input size, counted with edgetl.bench.macs and timed with
edgetl.bench.benchmark (onnxruntime-cpu, batch 1, interleaved rounds); latency is stored relative to
efficientnet_lite0 with the machine and date. --top1: FP32 top-1 of the embedded backbones (real
weights) on an ImageNet folder named by synset (imagenet-dev: 750 photos, 150 classes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def count_macs_torch(name: str) -> int:
    """Conv2d and Linear multiply-accumulates for one image at the backbone's input size (the layers
    edgetl.bench.macs counts in ONNX), from forward hooks on the randomly initialised model."""
    from torch import nn

    from edgetl.backbones.registry import create_model, get_backbone

    size = get_backbone(name).preprocess.crop
    model = create_model(name, weights="none").eval()
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * k
        else:
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def export_edgetl(name: str, folder: Path) -> Path:
    """The backbone with random weights through edgetl's own exporter (dynamo, dynamic batch)."""
    import onnx

    from edgetl.backbones.registry import create_model, get_backbone
    from edgetl.exporter.export import to_onnx
    from edgetl_runtime.modelinfo import ModelInfo

    spec = get_backbone(name).preprocess
    info = ModelInfo(labels=tuple(str(i) for i in range(1000)), preprocess=spec, backbone=name)
    proto = to_onnx(
        create_model(name, weights="none").eval(), torch.zeros(1, *spec.input_shape(1)[1:]), 18, info
    )
    path = folder / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


def write_table(out: Path, min_s: float) -> dict:
    from edgetl.backbones.registry import DEFAULT_BACKBONE, EMBEDDED_NAMES, list_backbones
    from edgetl.bench.benchmark import benchmark

    macs = {s.name: count_macs_torch(s.name) for s in list_backbones()}
    with tempfile.TemporaryDirectory() as tmp:
        # latency of the embedded zoo only: the offline choices a user picks between
        paths = [export_edgetl(name, Path(tmp)) for name in EMBEDDED_NAMES]
        report = benchmark(paths, backends=["onnxruntime-cpu"], min_s=min_s, rounds=5)
    rows = report.to_dict()
    p50 = {Path(r["model"]).stem: r["p50_ms"] for r in rows["rows"] if r.get("p50_ms")}
    env = rows.get("environment", {})
    table = {
        "macs": macs,
        "macs_method": "benchmarks/bench_zoo.py: Conv2d + Linear MACs from forward hooks, batch 1, own input size",
        "latency": {
            "relative_to": DEFAULT_BACKBONE,
            "p50_ms": p50,
            "relative": {n: p50[n] / p50[DEFAULT_BACKBONE] for n in p50},
            "backend": "onnxruntime-cpu",
            "batch": 1,
            "machine": f"{env.get('cpu') or platform.processor() or platform.machine()}, shared 2-core dev machine",
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "method": "benchmarks/bench_zoo.py --table (edgetl.bench.benchmark, FP32 ONNX from edgetl's exporter)",
        },
    }
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def top1(folder: Path, names: list[str]) -> dict:
    from edgetl.backbones.registry import create_model, get_backbone
    from edgetl.quantizer import map_eval_classes
    from edgetl_runtime.preprocess import list_images, preprocess_image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    index = dict(zip(classes, map_eval_classes(classes, _labels()), strict=True))
    images = [(p, index[p.parent.name]) for c in classes for p in list_images(folder / c)]
    results = {}
    for name in names:
        spec, model = get_backbone(name).preprocess, create_model(name).eval()
        hits, t0 = 0, time.perf_counter()
        for i in range(0, len(images), 32):
            chunk = images[i : i + 32]
            x = torch.from_numpy(np.stack([preprocess_image(p, spec) for p, _ in chunk]))
            with torch.no_grad():
                pred = model(x).argmax(1)
            hits += sum(int(p) == t for p, (_, t) in zip(pred, chunk, strict=True))
        results[name] = {
            "top1": hits / len(images),
            "images": len(images),
            "seconds": time.perf_counter() - t0,
        }
        print(name, results[name], file=sys.stderr)
    return results


def _labels() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_descriptions())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", type=Path, help="write MACs and relative latency to this JSON file")
    parser.add_argument(
        "--top1", type=Path, help="ImageNet folder by synset (e.g. ../shared/data/imagenet-dev)"
    )
    parser.add_argument("--min-s", type=float, default=3.0, help="timed seconds per backbone")
    args = parser.parse_args()
    result = {}
    if args.top1:
        if not args.top1.is_dir():
            sys.exit(f"{args.top1}: not found (the shared photo set is absent); nothing measured")
        result["top1"] = top1(args.top1, ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    if args.table:
        result["table"] = write_table(args.table, args.min_s)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
