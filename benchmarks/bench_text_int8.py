"""Every text INT8 candidate against FP32 on a hard, low-margin task, and what `edgetl quantize` ships.

    nice -n 10 uv run --frozen python benchmarks/bench_text_int8.py --out /tmp/text_int8

The hard set (from ../shared/data/bbc-news; skips with a message when absent): the three topics that
overlap most (business, politics, tech) with few training articles (--train-per-class, 24 by
default), so the fine-tuned model is unsure of many test articles; --test-per-class others of each
topic (disjoint) judge. The JSON records how unsure: the FP32 model's top-1 margin (p1 - p2) on the
test articles, by quantile.

Then, on one trained and exported run:
- each candidate of edgetl's text ladder (edgetl/quantizer/text.py), calibrated as `edgetl quantize`
  calibrates it (the run's training texts), against FP32 on the test articles: top-1 agreement with its
  Wilson interval, mean KL(FP32 || INT8), accuracy;
- the same files on OpenVINO's CPU runtime (it reads ONNX; FP32 may run in bf16 there, the row says);
- batch-1 latency at 128 tokens, 1 and 2 threads, every model interleaved round by round with FP32,
  p50 and the ratio to FP32 on the same runtime;
- `edgetl quantize RUN` (auto): which candidate its gate chose on the run's own validation texts, or
  that it shipped FP32, and why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_text import DATA, data_missing, wilson
from bench_text_heldout import draw, edgetl_cli, folder_texts

TOPICS = ("business", "politics", "tech")
LENGTH = 128


def compare(reference: np.ndarray, logits: np.ndarray, y: np.ndarray) -> dict:
    """The gate's figures (edgetl.quantizer.gate.compare_logits) with a Wilson interval on agreement."""
    from edgetl.quantizer.gate import compare_logits

    ev = compare_logits(reference, logits, y, ())
    same = int((reference.argmax(1) == logits.argmax(1)).sum())
    return {
        "agreement": ev.agreement, "agreement_ci95": wilson(same, len(y)), "disagreeing": len(y) - same,
        "kl": ev.kl, "accuracy": ev.accuracy,
    }  # fmt: skip


def make_candidates(run: Path, work: Path, calib: list[str], spec) -> dict[str, Path | str]:
    """Each ladder method's INT8 file, made as `edgetl quantize` makes it; a failure is kept as its text."""
    from edgetl.console import quiet_third_party
    from edgetl.quantizer import text as text_int8

    prepared = text_int8._without_value_info(run / "model.onnx", work / "prepared.onnx")
    files: dict[str, Path | str] = {}
    for name, method in text_int8._methods().items():
        path = work / f"{name}.onnx"
        start = time.perf_counter()
        try:
            with quiet_third_party():
                method(prepared, path, calib, spec)
            files[name] = path
        except Exception as e:  # a benchmark records a method that cannot run, and goes on
            files[name] = f"{type(e).__name__}: {e}"
        print(f"  {name}: {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_text_int8"))
    ap.add_argument("--train-per-class", type=int, default=24)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rounds", type=int, default=15, help="latency rounds (each model per_round runs a round)"
    )
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--json-out", type=Path, help="also write the result here")
    args = ap.parse_args()
    if data_missing(args.data):
        return 0
    if args.out.exists():
        raise SystemExit(f"--out: {args.out} exists; give a new folder")
    from edgetl.data.texts import read_recorded
    from edgetl.quantizer.gate import time_in_turns
    from edgetl.quantizer.text_ops import session_logits
    from edgetl.runfolder.splits import Splits
    from edgetl_runtime.backends import load_session
    from edgetl_runtime.modelfile import read_model_info
    from edgetl_runtime.predictor import softmax
    from edgetl_runtime.textinput import example_feed

    counts = dict.fromkeys(TOPICS, args.train_per_class)
    train_dir, test_dir = draw(
        args.data, args.out / "data", counts, args.test_per_class / args.train_per_class, args.seed
    )
    test_texts, test_y, *_ = folder_texts(test_dir)
    result: dict = {
        "protocol": __doc__.split("\n\n")[0], "data": "bbc-news", "topics": TOPICS, "train_per_class": args.train_per_class,
        "n_test": len(test_y), "seed": args.seed, "load_before": os.getloadavg(), "cpus": os.cpu_count(),
    }  # fmt: skip
    run = args.out / "run"
    trained = edgetl_cli("train", "--data", str(train_dir), "--backbone", "all-minilm-l6-v2", "--out", str(run),
                         "--seed", str(args.seed))  # fmt: skip
    edgetl_cli("export", str(run))
    result["train"] = {
        "n_train": trained["num_train"],
        "n_val": trained["num_val"],
        "val_accuracy": trained["best_val_accuracy"],
    }
    spec = read_model_info(run / "model.onnx").preprocess
    calib = read_recorded([p for p, _ in Splits.load(run).train])
    reference = session_logits(load_session(run / "model.onnx", "onnxruntime-cpu"), test_texts, spec)
    probs = np.sort(softmax(reference), axis=1)
    margin = probs[:, -1] - probs[:, -2]
    result["fp32"] = {
        "accuracy": float((reference.argmax(1) == test_y).mean()),
        "accuracy_ci95": wilson(int((reference.argmax(1) == test_y).sum()), len(test_y)),
        "margin_quantiles": {q: round(float(np.quantile(margin, q)), 4) for q in (0.05, 0.1, 0.25, 0.5)},
        "below_0.2_margin": int((margin < 0.2).sum()),
    }
    print(json.dumps(result["fp32"]), file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="edgetl-text-int8-") as tmp:
        files = make_candidates(run, Path(tmp), calib, spec)
        candidates: dict = {name: {"error": path} for name, path in files.items() if isinstance(path, str)}
        models = {"fp32": run / "model.onnx"} | {n: p for n, p in files.items() if not isinstance(p, str)}
        runtimes = {"onnxruntime": "onnxruntime-cpu"}
        for name, path in models.items():
            row = candidates.setdefault(
                name, {"size_ratio": path.stat().st_size / models["fp32"].stat().st_size}
            )
            for runtime, backend in (("onnxruntime", "onnxruntime-cpu"), ("openvino", "openvino-cpu")):
                try:
                    session = load_session(path, backend)
                except Exception as e:  # OpenVINO does not read every graph onnxruntime's quantizer makes
                    row[runtime] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                    continue
                row[runtime] = compare(reference, session_logits(session, test_texts, spec), test_y)
                row[runtime]["execution_precision"] = getattr(session, "execution_precision", None) or "model"
                runtimes[runtime] = backend
        feed = example_feed(spec, 1, min(LENGTH, spec.max_length))
        for threads in (1, 2):
            sessions = {
                (runtime, name): load_session(path, backend, threads=threads)
                for name, path in models.items() for runtime, backend in runtimes.items()
                if "error" not in candidates[name][runtime]
            }  # fmt: skip
            p50 = {key: round(ms, 3) for key, ms in time_in_turns(sessions, feed, rounds=args.rounds,
                                                                     per_round=args.per_round, warmup=5).items()}  # fmt: skip
            for (runtime, name), ms in p50.items():
                row = candidates[name]
                row.setdefault("p50_ms", {})[f"{runtime}_{threads}t"] = ms
                row.setdefault("p50_ratio_to_fp32", {})[f"{runtime}_{threads}t"] = round(
                    ms / p50[runtime, "fp32"], 3
                )
            print(json.dumps({f"{r}:{n}": ms for (r, n), ms in p50.items()}), file=sys.stderr)
    result["fp32"] |= candidates.pop("fp32")
    result["candidates"] = candidates
    quant = edgetl_cli("quantize", str(run))
    result["default"] = {
        k: quant.get(k)
        for k in ("method", "shipped", "reason", "agreement", "kl", "latency_ratio", "eval_images")
    }
    result["default"]["attempts_on_validation"] = quant.get("attempts")
    result["load_after"] = os.getloadavg()
    result["command"] = "benchmarks/bench_text_int8.py " + " ".join(sys.argv[1:])
    text = json.dumps(result, indent=1, default=float)
    (args.out / "result.json").write_text(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
