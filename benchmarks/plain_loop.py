"""The plainest possible latency loop, to cross-check a row of `edgetl benchmark`.

No edgetl code is used: a session built the way a user would build it, one input, a warm-up, then
``time.perf_counter`` around each call. Run it right after a benchmark, with the same model and
thread count, and compare the medians (they should agree within 10% on a quiet machine).

    uv run python benchmarks/plain_loop.py runs/a/model.int8.onnx --backend onnxruntime-cpu
    uv run python benchmarks/plain_loop.py runs/a/model.onnx --backend openvino-cpu --threads 2 \\
        --against runs/a/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def onnxruntime_run(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_run(path: Path, threads: int | None):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    request = core.compile_model(str(path), "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})


LOOPS = {"onnxruntime-cpu": onnxruntime_run, "openvino-cpu": openvino_run}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--backend", choices=list(LOOPS), default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, help="default: the library's own")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--against", type=Path, help="a benchmark.json whose matching row to compare with")
    args = parser.parse_args()

    run = LOOPS[args.backend](args.model, args.threads)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32)
    for _ in range(args.warmup):
        run(x)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    result = {
        "backend": args.backend,
        "model": str(args.model),
        "threads": args.threads,
        "batch": args.batch,
        "runs": args.runs,
        "p50_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "mean_ms": statistics.fmean(times),
    }
    if args.against:
        rows = json.loads(args.against.read_text())["rows"]
        match = [
            r
            for r in rows
            if r["backend"] == args.backend
            and Path(r["model_path"]).resolve() == args.model.resolve()
            and r["batch"] == args.batch
            and r["status"] == "ok"
        ]
        if match:
            ours = match[0]["p50_ms"]
            result["edgetl_p50_ms"] = ours
            result["edgetl_threads"] = match[0]["threads"]
            result["ratio"] = ours / result["p50_ms"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
