"""Choose edgetl's quantization defaults on an ImageNet proxy and measure them against the baselines.

There is no ImageNet offline, so the proxy is natural photographs shipped with scikit-image and
scikit-learn, cut into many distinct random crops, scales and flips (several hundred inputs), split
into calibration and evaluation images. The pretrained 1000-class efficientnet_lite0 runs on them;
each configuration is compared with FP32 by top-1 agreement, mean KL(FP32 || INT8) of the softmax
and CPU latency (onnxruntime, batch 1, default threads, median of interleaved runs).

    uv run python benchmarks/bench_quantize.py --out benchmarks/results/quantize.json

Configurations: onnxruntime `quantize_static` library defaults; the careful user's choices
(pre-processing, per-channel weights, uint8 activations, MinMax); edgetl's candidate calibration
methods; and `edgetl.quantize.quantize(...)` with default options end to end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CONFIDENT = 0.5  # FP32 softmax maximum above which an input counts as confidently classified


def photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    return [getattr(skimage.data, n)() for n in PHOTOS] + list(load_sample_images().images)


def write_proxy_images(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` distinct random crops (8-100% of the area, aspect 3/4-4/3), flips and brightness."""
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(a) for a in photos()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        area = rng.uniform(0.08, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.clip(np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def export_fp32(path: Path) -> Path:
    """The pretrained efficientnet_lite0 (1000 classes) with edgetl metadata, as `edgetl export` writes it."""
    import onnx
    import torch

    from edgetl.backbones import create_model, get_backbone
    from edgetl_runtime.modelinfo import ModelInfo

    spec = get_backbone("efficientnet_lite0").preprocess
    model = create_model("efficientnet_lite0").eval()
    torch.onnx.export(
        model,
        torch.randn(1, 3, spec.crop, spec.crop),
        str(path),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        external_data=False,
    )
    proto = onnx.load(str(path))
    info = ModelInfo(
        labels=tuple(f"class{i}" for i in range(1000)), preprocess=spec, backbone="efficientnet_lite0"
    )
    for key, value in info.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def latency_ms(paths: dict[str, Path], x: np.ndarray, runs: int) -> dict[str, float]:
    """Median batch-1 latency per model, runs interleaved so a busy neighbour hits all alike."""
    import onnxruntime as ort

    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(10):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def main() -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgetl import quantize as q
    from edgetl.calibration import list_labelled_images, select_calibration
    from edgetl_runtime.fileio import sha256_file
    from edgetl_runtime.modelinfo import read_model_info
    from edgetl_runtime.predictor import softmax
    from edgetl_runtime.preprocess import preprocess_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="FP32 efficientnet_lite0 ONNX with edgetl metadata (exported if absent)"
    )
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--runs", type=int, default=200, help="latency runs per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--manifest", type=Path, help="where edgetl writes its calibration manifest")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgetl-bench-quant-") as tmp:
        tmp = Path(tmp)
        model = args.model or export_fp32(tmp / "fp32.onnx")
        info = read_model_info(model)
        calib_dir, eval_dir = tmp / "calib", tmp / "eval"
        write_proxy_images(calib_dir, args.calibration, args.seed)
        eval_paths = write_proxy_images(eval_dir, args.eval, args.seed + 1)
        items, classes = list_labelled_images(calib_dir)
        calib = select_calibration(
            items, classes, info.preprocess, model_sha256=sha256_file(model), num=args.calibration
        )
        x_eval = preprocess_batch(eval_paths, info.preprocess)
        fp32_logits = q.run_model(model, x_eval)
        # FP32's own top-1 as the label: the gate's accuracy is then agreement with FP32
        labelled = tmp / "eval-labelled"
        for path, cls in zip(eval_paths, fp32_logits.argmax(1), strict=True):
            (labelled / info.labels[cls]).mkdir(parents=True, exist_ok=True)
            path.rename(labelled / info.labels[cls] / path.name)
        reader = lambda: q._ArrayReader("input", calib.inputs, 1)  # noqa: E731

        models: dict[str, Path] = {"fp32": model}
        t0 = time.perf_counter()
        quantize_static(str(model), str(tmp / "defaults.onnx"), reader())
        models["ort library defaults"] = tmp / "defaults.onnx"
        pre = q.preprocess_for_quantization(model, tmp / "pre.onnx")
        quantize_static(
            str(pre),
            str(tmp / "careful.onnx"),
            reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        models["careful user (minmax)"] = tmp / "careful.onnx"
        timings = {"baselines_s": round(time.perf_counter() - t0, 1)}

        t0 = time.perf_counter()
        result = q.quantize(
            model,
            tmp / "edgetl-default.onnx",
            calibration=calib_dir,
            eval_dir=labelled,
            num_calibration=args.calibration,
            manifest=args.manifest,
            # the proxy's labels are FP32's own guesses on ambiguous crops: report, do not gate
            allow_drop=True,
        )
        timings["edgetl_default_end_to_end_s"] = round(time.perf_counter() - t0, 1)
        models[f"edgetl default (auto -> {result.method})"] = result.int8_model

        latency = latency_ms(models, x_eval[:1], args.runs)
        # Random crops are often ambiguous (FP32 itself unsure), where any noise flips top-1; inputs
        # FP32 is confident about behave more like labelled photos, whose top-1 is usually clear.
        confident = softmax(fp32_logits).max(1) > CONFIDENT
        rows = {}
        for name, path in models.items():
            logits = q.run_model(path, x_eval)
            ev = q.compare_logits(fp32_logits, logits, None, ())
            sure = q.compare_logits(fp32_logits[confident], logits[confident], None, ())
            rows[name] = {
                "agreement_pct": round(100 * ev.agreement, 2),
                "confident_agreement_pct": round(100 * sure.agreement, 2),
                "kl": round(ev.kl, 5),
                "p50_ms": round(latency[name], 3),
                "latency_ratio": round(latency[name] / latency["fp32"], 3),
                "size_ratio": round(path.stat().st_size / model.stat().st_size, 3),
            }
        for a in result.attempts:  # every candidate edgetl measured (same graph, same speed as its pick)
            rows[f"edgetl candidate {a.method} (+{len(a.exclude)} float nodes)"] = {
                "agreement_pct": round(100 * a.agreement, 2),
                "kl": round(a.kl, 5),
                "size_ratio": round(a.size_ratio, 3),
            }
        for name, r in rows.items():
            speed = f"p50 {r['p50_ms']:7.2f} ms ({r['latency_ratio']:.2f}x FP32)" if "p50_ms" in r else ""
            sure = f"confident {r['confident_agreement_pct']:6.2f}%" if "p50_ms" in r else " " * 17
            print(
                f"{name:<44} agreement {r['agreement_pct']:6.2f}%  {sure}  KL {r['kl']:.5f}  size {r['size_ratio']:.3f}x  {speed}"
            )
        report = {
            "proxy": {
                "photos": [*PHOTOS, "sklearn china", "sklearn flower"],
                "calibration": args.calibration,
                "eval": args.eval,
                "confident_eval": int(confident.sum()),
            },
            "configs": rows,
            "default_method": result.method,
            "timings": timings,
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
