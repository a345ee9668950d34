"""LiteRT against ONNX: the same images, the same gate, latency interleaved in one benchmark run.

Cases (each skipped with a message when its data is absent):

- imagenet: the pretrained efficientnet_lite0 exported with `--format litert` (parity of the .tflite
  on 64 imagenet-dev photos); a seeded 300 of ../shared/data/imagenet-dev calibrate both INT8 models
  (`edgetl quantize` for ONNX, `--backend litert` for the .tflite), the other 450 gate them. Reported:
  each INT8's agreement with its own FP32 and KL with exact 95% intervals (the gate's), top-1 on the
  synset labels, the paired difference of the two agreements (exact interval on the images where
  exactly one of them agrees), sizes, and batch-1 / 2-thread p50 of all four models on onnxruntime-cpu
  and litert-cpu, interleaved (`edgetl benchmark`'s protocol) with the load average beside it.
- digits: a run fine-tuned with the default recipe on ../shared/data/sign-digits, exported, quantized and packaged as
  ONNX and as LiteRT (INT8 bundles, and FP32 bundles); each pair predicts the validation photos with
  `edgetl-run` in a fresh runtime-only environment (edgetl-runtime[litert], no torch), and the labels
  are compared.

    nice -n 10 uv run --frozen python benchmarks/bench_litert.py \
        --out benchmarks/results/litert_lite0.json > /tmp/bench_litert.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

import edgetl
from edgetl.quantizer.gate import paired_drop_ci
from edgetl.quantizer.litert import SCHEME
from edgetl_runtime.backends import load_session
from edgetl_runtime.modelfile import model_format, read_model_info
from edgetl_runtime.preprocess import list_images, preprocess_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEED = 0
N_CALIBRATION = 300


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def link_split(photos: list[Path], folder: Path) -> Path:
    """Symlinks in synset (class) folders: what --calibration and --eval read."""
    if folder.is_dir():  # made by an earlier run in this --work, from the same seeded split
        return folder
    for p in photos:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / p.parent.name / p.name).symlink_to(p)
    return folder


def logits(model: Path, photos: list[Path]) -> np.ndarray:
    """The model's logits image by image, preprocessed as its own metadata says (NHWC for .tflite)."""
    session = load_session(model, model_format(model).backends[0], threads=2)
    spec = read_model_info(model).preprocess
    return np.concatenate([session.run(preprocess_image(p, spec)[None]) for p in photos])


def gate_summary(q: dict) -> dict:
    """The figures of a quantization summary (QuantResult.to_dict(), or a run's quantize.json)."""
    keys = ("int8_model", "backend", "method", "kl", "fp32_accuracy", "int8_accuracy", "accuracy_drop",
            "size_ratio", "int8_bytes", "fp32_bytes")  # fmt: skip
    gate = {k: q["gate"][k] for k in ("verdict", "agreement", "agreement_ci95", "drop_ci95", "images")}
    return {**{k: q[k] for k in keys}, **gate}


def case_imagenet(work: Path, onnx_method: str) -> dict:
    photos = sorted(list_images(DATA / "imagenet-dev"))
    random.Random(SEED).shuffle(photos)
    calib, held = photos[:N_CALIBRATION], photos[N_CALIBRATION:]
    calib_dir, eval_dir = link_split(calib, work / "calib"), link_split(held, work / "eval")
    onnx, tflite = work / "lite0.onnx", work / "lite0.tflite"
    out: dict = {"export": {"reused": True}}
    if not tflite.is_file():  # an export already in --work is reused
        t = time.perf_counter()
        exported = edgetl.export(
            backbone="efficientnet_lite0", out=onnx, formats=("onnx", "litert"),
            check_images=eval_dir, max_images=64,
        )  # fmt: skip
        out["export"] = {
            "seconds": round(time.perf_counter() - t, 1),
            "checks": [asdict(c) for c in exported.checks],
        }
    arms = {}
    for name, fp32, int8, backend in (
        ("onnx", onnx, work / "lite0.int8.onnx", "onnxruntime"),
        ("litert", tflite, work / "lite0.int8.tflite", "litert"),
    ):
        t = time.perf_counter()
        method = onnx_method if backend == "onnxruntime" else "auto"
        q = edgetl.quantize(
            fp32, int8, calibration=calib_dir, eval_dir=eval_dir, backend=backend, method=method
        )
        arms[name] = {**gate_summary(q.to_dict()), "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps({name: arms[name]}), flush=True)
    arms["litert"]["scheme"] = SCHEME
    out["int8"] = arms
    # paired: images where exactly one INT8 agrees with its FP32; and the FP32 .tflite against ONNX
    names = ("lite0.onnx", "lite0.tflite", "lite0.int8.onnx", "lite0.int8.tflite")
    z = {name: logits(work / name, held) for name in names}
    pred = {name: v.argmax(1) for name, v in z.items()}
    agree_onnx = pred["lite0.int8.onnx"] == pred["lite0.onnx"]
    agree_litert = pred["lite0.int8.tflite"] == pred["lite0.tflite"]
    only_onnx, only_litert = int(np.sum(agree_onnx & ~agree_litert)), int(np.sum(agree_litert & ~agree_onnx))
    lo, hi = paired_drop_ci(only_onnx, only_litert, len(held))
    out["paired"] = {
        "images": len(held), "onnx_int8_agreement": float(agree_onnx.mean()),
        "litert_int8_agreement": float(agree_litert.mean()),
        "onnx_minus_litert_points": 100.0 * (only_onnx - only_litert) / len(held),
        "ci95_points": [lo, hi], "only_onnx_agrees": only_onnx, "only_litert_agrees": only_litert,
        "fp32_tflite_vs_onnx_top1_agreement": float(np.mean(pred["lite0.tflite"] == pred["lite0.onnx"])),
        "fp32_tflite_vs_onnx_max_abs_logit_diff": float(np.abs(z["lite0.tflite"] - z["lite0.onnx"]).max()),
        "sizes_bytes": {name: (work / name).stat().st_size for name in names},
    }  # fmt: skip
    print(json.dumps({"paired": out["paired"]}), flush=True)
    models = [onnx, work / "lite0.int8.onnx", tflite, work / "lite0.int8.tflite"]
    before = uptime()
    report = edgetl.benchmark(
        [str(m) for m in models], backends=["onnxruntime-cpu", "litert-cpu"], batches=[1], threads=2,
    )  # fmt: skip
    out["latency"] = {
        "uptime_before": before, "uptime_after": uptime(),
        "rows": [
            {k: r.get(k) for k in ("model", "backend", "precision", "batch", "threads", "p50_ms", "p90_ms", "status")}
            for r in report.to_dict()["rows"] if r.get("status") == "ok"
        ],
    }  # fmt: skip
    return out


def runtime_env(work: Path) -> Path:
    """A fresh environment with edgetl-runtime[litert] alone (no torch), from uv's cache."""
    env = work / "runtime-env"
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(env)], check=True)
    python = env / "bin" / "python"
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(python), f"{ROOT / 'deploy'}[litert]"], check=True
    )
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, check=False)
    if probe.returncode == 0:
        raise SystemExit("the runtime environment has torch; it must not")
    return env


def device_labels(env: Path, bundle: Path, photos: list[Path]) -> list[str]:
    done = subprocess.run(
        [str(env / "bin" / "edgetl-run"), "predict", str(bundle), *map(str, photos), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [p["label"] for p in json.loads(done.stdout)["predictions"]]


def case_digits(work: Path) -> dict:
    run, data = work / "digits-run", work / "sign-digits"
    if not data.is_dir():
        (data / "train").mkdir(parents=True)
        for folder in sorted(p for p in (DATA / "sign-digits").iterdir() if p.is_dir()):
            (data / "train" / folder.name).symlink_to(folder.resolve())  # no val/: train splits it, seeded
    t = time.perf_counter()
    # each step that an earlier run in this --work finished is kept
    if not (run / "summary.json").is_file():
        # the default recipe (the backbone's own 224 px); no flips: a mirrored hand sign is another hand
        edgetl.train(data, run, hflip=False, seed=SEED)
    if not (run / "model.tflite").is_file():
        edgetl.export(run, formats=("onnx", "litert"))
    if not (run / "model.int8.onnx").is_file():
        edgetl.quantize(run)
    q_onnx = json.loads((run / "quantize.json").read_text())
    edgetl.package(run, work / "onnx-bundle", precision="int8", overwrite=True)
    q_litert = edgetl.quantize(run, backend="litert").to_dict()
    edgetl.package(run, work / "litert-bundle", precision="int8", format="litert", overwrite=True)
    build_s = time.perf_counter() - t
    photos = [Path(p) for p, _ in json.loads((run / "splits.json").read_text())["val"]]
    for form in ("onnx", "litert"):  # the FP32 models too, as bundles of their own
        edgetl.package(run, work / f"{form}-fp32-bundle", precision="fp32", format=form, overwrite=True)
    env = runtime_env(work)

    def same_labels(onnx_bundle: str, litert_bundle: str) -> float:
        onnx_labels = device_labels(env, work / onnx_bundle, photos)
        litert_labels = device_labels(env, work / litert_bundle, photos)
        return float(np.mean([a == b for a, b in zip(onnx_labels, litert_labels, strict=True)]))

    return {
        "build_seconds": round(build_s, 1), "val_photos": len(photos),
        "same_label_share": same_labels("onnx-bundle", "litert-bundle"),
        "fp32_same_label_share": same_labels("onnx-fp32-bundle", "litert-fp32-bundle"),
        "onnx_int8_gate": gate_summary(q_onnx), "litert_int8_gate": gate_summary(q_litert),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "litert_lite0.json")
    parser.add_argument("--cases", nargs="+", default=["imagenet", "digits"])
    parser.add_argument("--work", type=Path, help="a folder for the models made (an export there is reused)")
    parser.add_argument("--onnx-method", default="auto", help="edgetl quantize --method of the ONNX arm")
    args = parser.parse_args()
    result: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "uptime": uptime()}
    cases = {
        "imagenet": (lambda work, a: case_imagenet(work, a.onnx_method), "imagenet-dev"),
        "digits": (lambda work, a: case_digits(work), "sign-digits"),
    }
    # models stay in --work (a fresh temporary folder by default) for a look after the run
    root = args.work or Path(tempfile.mkdtemp(prefix="bench-litert-"))
    for name in args.cases:
        run_case, folder = cases[name]
        if not (DATA / folder).is_dir():
            result[name] = {"skipped": f"{DATA / folder} not found"}
            continue
        work = root / name
        work.mkdir(parents=True, exist_ok=True)
        result[name] = run_case(work, args)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"{name} done, its files in {work}", flush=True)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
