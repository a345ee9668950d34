"""The INT8 experiment matrix: every post-training recipe measured in one run, on photos none calibrated on.

Cases (each skipped with a message when its data is absent):

- imagenet: the pretrained efficientnet_lite0 (`edgetl export --backbone efficientnet_lite0`) on
  ../shared/data/imagenet-dev: a seeded 300 photos calibrate every arm, the other 450 measure.
- digits: a short fine-tuned run on ../shared/data/sign-digits (64 px, 2 frozen + 1 unfreeze epoch);
  a seeded 300 of its train split calibrate, its val split measures; plus edgetl's QAT rung.

Arms: edgetl's default (`--with-default`: `edgetl quantize` on the 300, cross-fitted); onnxruntime's
QDQ model with edgetl's empirical bias correction, and with the first convolution kept in float too
(edgetl's recipe, built directly); a careful by-hand
onnxruntime quantize_static (MinMax, per-channel, all 300); NNCF's own nncf.quantize (its defaults);
NNCF with full bias correction (fast_bias_correction=False), SmoothQuant off and on; NNCF's channel
alignment (its cross-layer equalisation, OpenVINO backend only) against the same NNCF IR without it;
onnxruntime QDQ with calibration percentiles swept (one histogram, several cut-offs), entropy with two
histogram sizes, MinMax; symmetric against asymmetric activation ranges; mixed precision: the k tensors
onnxruntime's qdq_loss_debug ranks worst by SQNR (on 16 calibration images) kept in float or at 16 bits.

Every arm: agreement with FP32 and mean KL(FP32 || INT8) on the measured photos, each with a paired
bootstrap 95% interval (images resampled, the same resamples for every arm), the paired difference to
the reference arm (`--reference`) with its interval, top-1, and batch-1 latency on onnxruntime CPU with
2 threads (median of interleaved runs; `uptime` is recorded next to it: on a shared machine only the
ratios measured in one run mean anything). The JSON is rewritten after every arm.

    nice -n 10 uv run --frozen python benchmarks/bench_int8_matrix.py \
        --out benchmarks/results/int8_matrix.json > /tmp/int8_matrix.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgetl_runtime.modelfile import ONNX, OPENVINO, model_files, model_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_arms import collect, int16_overrides, nncf_onnx, nncf_openvino, qdq, with_biases_of, worst_tensors
from int8_cases import (
    CALIBRATE,
    SEED,
    by_hand_nncf,
    fine_tuned_digits,
    imagenet_case,
    interleaved_ms,
    onnxruntime_ms,
    present_cases,
)
from int8_matrix_render import render

BOOTSTRAP = 2000
PERCENTILES = (99.9, 99.99, 99.999, 99.9999)
MIXED_K = (1, 2, 4, 8)
SENSITIVITY_IMAGES = 16
LATENCY_RUNS = 60
THREADS = 2
FP32_MODEL: Path | None = None  # --fp32: an exported efficientnet_lite0 to reuse
WITH_DEFAULT = False  # --with-default: also edgetl's default quantize (slow: it searches)
OUTCOMES = Path("int8_matrix_outcomes")  # per-image outcomes, next to --out
ARMS: tuple[str, ...] = ()  # --arms: run only arms whose names start with one of these


def wanted(name: str) -> bool:
    return not ARMS or name.startswith(ARMS)


def needs(group: str) -> bool:
    """Whether an arm of the group (names starting with it) may be wanted: its shared inputs are."""
    return not ARMS or any(a.startswith(group) or group.startswith(a) for a in ARMS)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- measuring --------------------------------------------------------------------------------


def run_logits(path: Path, x: np.ndarray) -> np.ndarray:
    from edgetl.quantizer import run_model

    return run_model(path, x, model_format(path).backends[0])


def per_image(ref: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edgetl_runtime.predictor import softmax

    p, q = softmax(ref), softmax(logits)
    kl = np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)
    return (logits.argmax(1) == ref.argmax(1)).astype(float), kl


def interval(values: np.ndarray, idx: np.ndarray) -> list[float]:
    means = values[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def latencies(paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    """Median batch-1 latency, onnxruntime CPU, THREADS threads, runs interleaved across models."""
    return onnxruntime_ms(paths, x, threads=THREADS, runs=LATENCY_RUNS)


def openvino_latencies(paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
    calls = {k: ov.Core().compile_model(str(p), "CPU", config) for k, p in paths.items()}
    return interleaved_ms(calls, x, LATENCY_RUNS)


def vs_reference(
    reference: str, ref: tuple[np.ndarray, np.ndarray], arm: tuple[np.ndarray, np.ndarray], idx
) -> dict:
    """The paired difference of an arm's per-image (agreement, KL) to the reference arm's, bootstrapped."""
    da, dk = arm[0] - ref[0], arm[1] - ref[1]
    return {
        "reference": reference,
        "agreement_diff": float(da.mean()),
        "agreement_diff_ci95": interval(da, idx),
        "kl_diff": float(dk.mean()),
        "kl_diff_ci95": interval(dk, idx),
    }


class Matrix:
    """Arms of one case: built one at a time, measured against FP32, written out after each."""

    def __init__(self, case: str, fp32: Path, x: np.ndarray, y: np.ndarray, reference: str, save) -> None:
        self.case, self.fp32, self.x, self.y, self.reference, self.save = case, fp32, x, y, reference, save
        self.outcomes_file = OUTCOMES.with_name(f"{OUTCOMES.stem}-{case}.npz")
        self.ref = run_logits(fp32, x)
        self.idx = np.random.default_rng(SEED).integers(0, len(x), size=(BOOTSTRAP, len(x)))
        self.paths: dict[str, Path] = {}
        self.outcomes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.rows: dict[str, dict] = {
            "fp32": {"arm": "fp32", "top1": float(np.mean(self.ref.argmax(1) == y)), "images": len(x)}
        }

    def arm(self, name: str, build: Callable[[], Path], **extra) -> Path | None:
        if not wanted(name):
            return None
        start = time.time()
        print(f"[{self.case}] {name} ...", file=sys.stderr, flush=True)
        try:
            path = build()
        except Exception as e:  # an arm that cannot be built is a result too
            traceback.print_exc()
            self.rows[name] = {"arm": name, "error": f"{type(e).__name__}: {e}"[:500], **extra}
            self.save()
            return None
        seconds = time.time() - start
        logits = run_logits(path, self.x)
        agree, kl = per_image(self.ref, logits)
        self.paths[name], self.outcomes[name] = path, (agree, kl)
        if model_format(path) is ONNX:  # against FP32 in the same minute; finish() times all together
            lat = latencies({"fp32": self.fp32, name: path}, self.x)
            extra = {**extra, "latency_pair_ms": lat, "latency_pair_vs_fp32": lat[name] / lat["fp32"]}
        self.rows[name] = {
            "arm": name,
            "agreement": float(agree.mean()),
            "agreement_ci95": interval(agree, self.idx),
            "kl": float(kl.mean()),
            "kl_ci95": interval(kl, self.idx),
            "top1": float(np.mean(logits.argmax(1) == self.y)),
            "images": len(self.x),
            "size_mb": sum(p.stat().st_size for p in model_files(path)) / 1e6,
            "build_seconds": round(seconds, 1),
            **extra,
        }
        for other in self.outcomes if name == self.reference else [name]:
            self.compare(other)
        np.savez(
            self.outcomes_file,
            **{
                f"{k}.{kind}": v
                for k, (a, kl) in self.outcomes.items()
                for kind, v in (("agree", a), ("kl", kl))
            },
        )
        print(
            f"[{self.case}] {name}: agreement {100 * agree.mean():.2f}% KL {kl.mean():.5f} ({seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        self.save()
        return path

    def compare(self, name: str) -> None:
        """The paired difference of an arm to the reference arm, per image, bootstrapped."""
        if self.reference not in self.outcomes:
            return
        ref, arm = self.outcomes[self.reference], self.outcomes[name]
        self.rows[name]["vs_reference"] = vs_reference(self.reference, ref, arm, self.idx)

    def finish(self) -> None:
        """Latency for every arm in one interleaved run."""
        load_before = uptime()
        onnx_paths = {k: p for k, p in self.paths.items() if model_format(p) is ONNX}
        lat = latencies({"fp32": self.fp32, **onnx_paths}, self.x)
        for k, ms in lat.items():
            self.rows[k]["latency_ms"] = ms
            self.rows[k]["latency_vs_fp32"] = ms / lat["fp32"]
        ir = {k: p for k, p in self.paths.items() if model_format(p) is OPENVINO}
        if ir:
            import openvino as ov

            fp32_ir = self.fp32.with_suffix(".fp32" + OPENVINO.suffix)
            ov.save_model(ov.Core().read_model(str(self.fp32)), str(fp32_ir), compress_to_fp16=False)
            olat = openvino_latencies({"fp32": fp32_ir, **ir}, self.x)
            self.rows["fp32"]["openvino_latency_ms"] = olat["fp32"]
            for k in ir:
                self.rows[k]["openvino_latency_ms"] = olat[k]
                self.rows[k]["openvino_latency_vs_fp32"] = olat[k] / olat["fp32"]
        self.rows["fp32"]["uptime"] = [load_before, uptime()]
        self.save()


# ---- the matrix -------------------------------------------------------------------------------


def run_matrix(
    m: Matrix, fp32: Path, x_cal: np.ndarray, work: Path, main_default: Callable[[], Path] | None
) -> None:
    """The arms, most decisive first (the JSON is rewritten after each, so a cut-short run still tells)."""
    from edgetl.quantizer.bias_correction import correct_biases
    from edgetl.quantizer.ort import input_layers, preprocess_for_quantization

    pre = preprocess_for_quantization(fp32, work / "pre.onnx")
    # one histogram (2048 bins, as edgetl's percentile), every cut-off from it
    if needs("ort-percentile") or needs("mixed"):
        hist = collect(pre, x_cal, "Percentile", {"symmetric": False, "percentile": 99.999, "num_bins": 2048})
    ranges_by_p = {}
    for p in PERCENTILES if needs("ort-percentile") or needs("mixed") else ():
        hist.collector.percentile = p
        ranges_by_p[p] = hist.compute_data()
        m.arm(
            f"ort-percentile-{p}",
            lambda p=p: qdq(pre, ranges_by_p[p], work / f"pct-{p}.onnx", method="Percentile"),
        )
    # onnxruntime's QDQ model, biases corrected (edgetl's recipe), at two cut-offs
    for p in (99.99, 99.999) if needs("ort-percentile") else ():
        m.arm(
            f"ort-percentile-{p}-bias-corrected",
            lambda p=p: correct_biases(pre, m.paths[f"ort-percentile-{p}"], x_cal, work / f"pct-bc-{p}.onnx"),
        )
    # ... and with the first convolution kept in float (edgetl's default)
    edges = input_layers(pre)
    for p in (99.999,) if needs("ort-percentile") else ():
        m.arm(
            f"ort-percentile-{p}-bias-corrected-float-stem",
            lambda p=p: correct_biases(
                pre,
                qdq(pre, ranges_by_p[p], work / f"pct-stem-{p}.onnx", method="Percentile", exclude=edges),
                x_cal,
                work / f"pct-bc-stem-{p}.onnx",
            ),
            float_nodes=list(edges),
        )
    # MinMax on all 300, per-channel, QDQ, pre-processed: the careful by-hand quantize_static (MinMax
    # ranges do not depend on batching, so the same ranges and the same model)
    if needs("ort-minmax"):
        minmax = collect(pre, x_cal, "MinMax", {"symmetric": False}).compute_data()
    m.arm("ort-minmax-by-hand", lambda: qdq(pre, minmax, work / "minmax.onnx"))
    m.arm("nncf-by-hand-defaults", lambda: by_hand_nncf(fp32, x_cal, work / "nncf-defaults.onnx"))
    m.arm(
        "ort-percentile-99.999-symmetric",
        lambda: qdq(pre, ranges_by_p[99.999], work / "pct-sym.onnx", method="Percentile", symmetric=True),
    )
    m.arm("ort-minmax-symmetric", lambda: qdq(pre, minmax, work / "minmax-sym.onnx", symmetric=True))
    # mixed precision on the current recipe (percentile 99.999): worst tensors ranked on calibration images
    base = m.paths.get("ort-percentile-99.999")
    if base is not None:
        ranked = worst_tensors(pre, base, x_cal[:SENSITIVITY_IMAGES])
        for k in MIXED_K:
            worst = ranked[:k]
            nodes = tuple(dict.fromkeys(n for _, _, group in worst for n in group))
            tensors = [t for t, _, _ in worst]
            info = {"tensors": tensors, "sqnr_db": [s for _, s, _ in worst]}
            m.arm(
                f"mixed-float-k{k}",
                lambda nodes=nodes, k=k: qdq(
                    pre, ranges_by_p[99.999], work / f"float-{k}.onnx", method="Percentile", exclude=nodes
                ),
                **info,
            )
            m.arm(
                f"mixed-int16-k{k}",
                lambda tensors=tensors, k=k: qdq(
                    pre,
                    ranges_by_p[99.999],
                    work / f"int16-{k}.onnx",
                    method="Percentile",
                    overrides=int16_overrides(tensors),
                ),
                **info,
            )
    m.arm(
        "nncf-onnx-fast-bias-correction",
        lambda: nncf_onnx(
            fp32, x_cal, work / "nncf-fast.onnx", fast_bias_correction=True, smooth_quant=False
        ),
    )
    m.arm(
        "nncf-onnx-full-bias-correction",
        lambda: nncf_onnx(
            fp32, x_cal, work / "nncf-fbc.onnx", fast_bias_correction=False, smooth_quant=False
        ),
    )
    donor, base = m.paths.get("nncf-onnx-full-bias-correction"), m.paths.get("ort-percentile-99.999")
    if donor is not None and base is not None:
        m.arm(
            "ort-percentile-99.999-nncf-biases",
            lambda: with_biases_of(base, donor, work / "pct-nncf-biases.onnx"),
            note="onnxruntime's model, NNCF's bias-corrected biases",
        )
    m.arm(
        "nncf-onnx-full-bias-correction-smoothquant",
        lambda: nncf_onnx(
            fp32, x_cal, work / "nncf-fbc-sq.onnx", fast_bias_correction=False, smooth_quant=True
        ),
    )
    if needs("ort-entropy-128"):
        entropy = collect(pre, x_cal, "Entropy", {"symmetric": False})
    m.arm(
        "ort-entropy-128-bins",
        lambda: qdq(pre, entropy.compute_data(), work / "ent-128.onnx", method="Entropy"),
    )
    m.arm("nncf-openvino", lambda: nncf_openvino(fp32, x_cal, work / "ov.xml", channel_alignment=False))
    m.arm(
        "nncf-openvino-channel-alignment",
        lambda: nncf_openvino(fp32, x_cal, work / "ov-cle.xml", channel_alignment=True),
    )
    if needs("ort-entropy-512"):
        entropy = collect(
            pre, x_cal, "Entropy", {"symmetric": False, "num_bins": 512, "num_quantized_bins": 256}
        )
    m.arm(
        "ort-entropy-512-bins",
        lambda: qdq(pre, entropy.compute_data(), work / "ent-512.onnx", method="Entropy"),
    )
    if main_default is not None:
        m.arm(
            "edgetl-default",
            main_default,
            note="edgetl quantize with its defaults: all 300 images cross-fitted, the shipped model refit on all",
        )


def case_imagenet(work: Path, save, results: dict, reference: str) -> None:
    from edgetl.quantizer import quantize

    case = imagenet_case(work, FP32_MODEL)
    fp32, x_cal = case.fp32, case.x_cal
    m = Matrix("imagenet", fp32, case.x, case.y, reference, save)
    results["imagenet"] = m.rows

    def main_default() -> Path:
        r = quantize(fp32, work / "edgetl.onnx", calibration=case.calibration)
        m.rows.setdefault("_edgetl", {})["gate"] = r.gate
        return r.int8_model

    run_matrix(m, fp32, x_cal, work, main_default if WITH_DEFAULT else None)
    m.finish()


def case_digits(work: Path, save, results: dict, reference: str) -> None:
    from edgetl.quantizer import quantize

    run, fp32, x_cal, x, y = fine_tuned_digits(work)
    m = Matrix("digits", fp32, x, y, reference, save)
    results["digits"] = m.rows
    dwork = work / "digits-arms"
    dwork.mkdir()

    def main_default() -> Path:
        r = quantize(run, work / "digits-edgetl.onnx", allow_drop=True)
        return r.int8_model

    run_matrix(m, fp32, x_cal, dwork, main_default if WITH_DEFAULT else None)
    m.arm("qat", lambda: quantize(run, work / "digits-qat.onnx", qat=True, allow_drop=True).int8_model)
    m.finish()


def merge(out: Path, others: list[Path], reference: str) -> None:
    """Fold the arms of runs made side by side (`--arms`, same split and seed) into --out, and the
    paired differences to the reference arm from their per-image outcomes."""
    results = json.loads(out.read_text())
    outcomes = dict(np.load(out.with_name(f"{out.stem}-outcomes-imagenet.npz")))
    for other in others:
        more = json.loads(other.read_text())
        for case, rows in more.items():
            if isinstance(rows, dict) and "fp32" in rows:
                results.setdefault(case, {}).update({k: v for k, v in rows.items() if k != "fp32"})
        results.setdefault("merged", []).append(more["command"])
        outcomes.update(np.load(other.with_name(f"{other.stem}-outcomes-imagenet.npz")))
    rows = results["imagenet"]
    n = rows["fp32"]["images"]
    idx = np.random.default_rng(SEED).integers(0, n, size=(BOOTSTRAP, n))
    ref = outcomes[f"{reference}.agree"], outcomes[f"{reference}.kl"]
    for name, row in rows.items():
        if f"{name}.agree" in outcomes:
            arm = outcomes[f"{name}.agree"], outcomes[f"{name}.kl"]
            row["vs_reference"] = vs_reference(reference, ref, arm, idx)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON, rewritten after every arm")
    parser.add_argument("--render", action="store_true", help="only print --out's JSON as markdown")
    parser.add_argument("--merge", type=Path, nargs="*", help="only fold these runs' arms into --out")
    parser.add_argument("--cases", default="imagenet,digits")
    parser.add_argument("--reference", default="ort-percentile-99.999", help="arm the differences are to")
    parser.add_argument("--fp32", type=Path, help="reuse this `edgetl export --backbone efficientnet_lite0`")
    parser.add_argument("--with-default", action="store_true", help="also run edgetl's default quantize")
    parser.add_argument("--arms", default="", help="comma-separated name prefixes: run only those arms")
    args = parser.parse_args()
    if args.merge:
        merge(args.out, args.merge, args.reference)
        return
    if args.render:
        print(render(json.loads(args.out.read_text())))
        return
    global FP32_MODEL, WITH_DEFAULT, OUTCOMES, ARMS
    FP32_MODEL, WITH_DEFAULT = args.fp32, args.with_default
    ARMS = tuple(a for a in args.arms.split(",") if a)
    OUTCOMES = args.out.with_name(f"{args.out.stem}-outcomes.npz")
    cases = {"imagenet": case_imagenet, "digits": case_digits}
    results: dict = {
        "command": " ".join(sys.argv),
        "uptime_start": uptime(),
        "bootstrap": BOOTSTRAP,
        "threads": THREADS,
        "calibration_images": CALIBRATE,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-int8-matrix-") as tmp:
        for name in present_cases(args.cases):
            (Path(tmp) / name).mkdir()
            cases[name](Path(tmp) / name, save, results, args.reference)
    results["uptime_end"] = uptime()
    save()


if __name__ == "__main__":
    main()
