"""edgetl's INT8 against the by-hand baselines, on real photos that no variant calibrated on.

Two cases, side by side in one run:

- imagenet: the pretrained efficientnet_lite0 (`edgetl export --backbone efficientnet_lite0`) on
  ../shared/data/imagenet-dev: a seeded 300 photos calibrate (edgetl, given no labels, holds a third
  of them out for its own gate), the other 450 measure.
- sign-digits: a short fine-tuned run on ../shared/data/sign-digits (--no-hflip, 64 px, 2 frozen +
  1 unfreeze epoch); its train split calibrates, its val split measures.

Variants: edgetl's default `quantize`; a careful by-hand onnxruntime quantize_static (pre-processing,
QDQ, per-channel int8 weights, uint8 activations, MinMax, all calibration images); NNCF's own
nncf.quantize on the ONNX model with its defaults; and, for the run, edgetl's QAT rung (`--qat`).
Each row: top-1 with the 95% interval of its drop against FP32 (exact, on the discordant images),
agreement with FP32, mean KL(FP32 || INT8), size, batch-1 latency (onnxruntime CPU, one thread,
median of interleaved runs) and the number of images.

    uv run --frozen python benchmarks/bench_quantize.py --out benchmarks/results/quantize.json

The latency measurement alone holds /tmp/edgetl-timing.lock (--timing-lock), the lock `flock` takes,
so timings on a shared machine do not overlap; training and quantization do not wait for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_cases import by_hand_nncf, fine_tuned_digits, imagenet_case, onnxruntime_ms, present_cases

LATENCY_RUNS = 50


def by_hand_onnxruntime(fp32: Path, x: np.ndarray, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl.quantizer.ort import _ArrayReader

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(
        str(pre),
        str(out),
        _ArrayReader(name, x, 1),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def rows(
    fp32: Path, variants: dict[str, Path], x: np.ndarray, labels: np.ndarray, extra: dict, lock: Path
) -> list[dict]:
    from filelock import FileLock

    from edgetl.quantizer import compare_logits, paired_drop_ci, run_model

    ref = run_model(fp32, x)
    ok = ref.argmax(1) == labels
    # only the timing waits for the machine-wide timing lock (the one `flock` takes)
    with FileLock(str(lock)):
        lat = onnxruntime_ms({"fp32": fp32, **variants}, x, threads=1, runs=LATENCY_RUNS)
    table = [
        {
            "variant": "fp32",
            "top1": float(ok.mean()),
            "images": len(x),
            "size_mb": fp32.stat().st_size / 1e6,
            "latency_ms": lat["fp32"],
        }
    ]
    for name, path in variants.items():
        logits = run_model(path, x)
        ev = compare_logits(ref, logits, labels, ())
        q_ok = logits.argmax(1) == labels
        b, c = int(np.sum(ok & ~q_ok)), int(np.sum(~ok & q_ok))
        table.append(
            {
                "variant": name,
                "top1": ev.accuracy,
                "drop": 100.0 * (b - c) / len(x),
                "drop_ci95": list(paired_drop_ci(b, c, len(x))),
                "agreement": ev.agreement,
                "kl": ev.kl,
                "size_mb": path.stat().st_size / 1e6,
                "latency_ms": lat[name],
                "images": len(x),
                **extra.get(name, {}),
            }
        )
    return table


def case_imagenet(work: Path, lock: Path) -> list[dict]:
    from edgetl.quantizer import quantize

    case = imagenet_case(work)
    start = time.time()
    r = quantize(case.fp32, work / "edgetl.onnx", calibration=case.calibration)
    extra = {"edgetl": {"gate": r.gate, "rung": r.rung, "method": r.method, "seconds": time.time() - start}}
    variants = {
        "edgetl": r.int8_model,
        "onnxruntime-by-hand": by_hand_onnxruntime(case.fp32, case.x_cal, work / "ort.onnx"),
        "nncf-by-hand": by_hand_nncf(case.fp32, case.x_cal, work / "nncf.onnx"),
    }
    return rows(case.fp32, variants, case.x, case.y, extra, lock)


def case_digits(work: Path, lock: Path) -> list[dict]:
    from edgetl.quantizer import quantize

    run, fp32, x_cal, x, y = fine_tuned_digits(work)
    extra = {}
    start = time.time()
    r = quantize(run, allow_drop=True)
    extra["edgetl"] = {"gate": r.gate, "rung": r.rung, "method": r.method, "seconds": time.time() - start}
    default = Path(str(r.int8_model)).rename(work / "digits-edgetl.onnx")
    start = time.time()
    q = quantize(run, work / "digits-qat.onnx", qat=True, allow_drop=True)
    extra["qat"] = {"gate": q.gate, "parity": q.settings.get("qat"), "seconds": time.time() - start}
    variants = {
        "edgetl": default,
        "onnxruntime-by-hand": by_hand_onnxruntime(fp32, x_cal, work / "digits-ort.onnx"),
        "nncf-by-hand": by_hand_nncf(fp32, x_cal, work / "digits-nncf.onnx"),
        "qat": q.int8_model,
    }
    return rows(fp32, variants, x, y, extra, lock)


def print_table(case: str, table: list[dict]) -> None:
    print(f"\n{case}: {table[0]['images']} images that no variant calibrated on")
    print(f"{'variant':<22}{'top-1':>8}{'drop [95% CI]':>24}{'agree':>8}{'KL':>9}{'MB':>7}{'ms':>7}")
    for r in table:
        ci = f"{r['drop']:+.2f} [{r['drop_ci95'][0]:+.2f},{r['drop_ci95'][1]:+.2f}]" if "drop" in r else ""
        agree = f"{100 * r['agreement']:.2f}" if "agreement" in r else ""
        kl = f"{r['kl']:.5f}" if "kl" in r else ""
        print(
            f"{r['variant']:<22}{100 * r['top1']:>8.2f}{ci:>24}{agree:>8}{kl:>9}{r['size_mb']:>7.2f}{r['latency_ms']:>7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the tables as JSON")
    parser.add_argument("--cases", default="imagenet,digits")
    parser.add_argument("--timing-lock", type=Path, default=Path("/tmp/edgetl-timing.lock"))
    args = parser.parse_args()
    cases = {"imagenet": case_imagenet, "digits": case_digits}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        for name in present_cases(args.cases):
            results[name] = cases[name](Path(tmp), args.timing_lock)
            print_table(name, results[name])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
