"""A pretrained model exported without edgetl vs edgetl's own export of the same network, on real photos.

    uv run --frozen python benchmarks/bench_describe.py --data ../shared/data/imagenet-dev --work /tmp/described

Plain: timm tf_efficientnet_lite0 with the embedded weights, `torch.onnx.export` and nothing else, then
`edgetl describe --labels imagenet.txt --preprocess inception`. Own: `edgetl export --backbone
efficientnet_lite0`. Both then go through the same `edgetl quantize` (seeded calibration subset of the
photos, MinMax) -> `edgetl package` -> `edgetl-run predict` on every photo, FP32 and INT8, and top-1 is
counted from the predicted class index against the synset folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def sh(*args) -> dict:
    done = subprocess.run([*map(str, args), "--json"], capture_output=True, text=True)
    if done.returncode not in (0, 3):
        sys.exit(
            f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout)


def plain_export(path: Path) -> None:
    import timm
    import torch

    from edgetl.backbones.registry import _load_embedded

    model = timm.create_model("tf_efficientnet_lite0").eval()
    _load_embedded(model, "tf_efficientnet_lite0")
    torch.onnx.export(
        model, torch.zeros(1, 3, 224, 224), str(path), input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17, dynamo=False,
    )  # fmt: skip


def top1(bundle_or_model: Path, images: list[Path], truth: dict[str, int], precision: str) -> dict:
    out = sh(
        "edgetl-run",
        "predict",
        bundle_or_model,
        *images,
        "--precision",
        precision,
        "--top-k",
        "1",
        "--backend",
        "onnxruntime-cpu",
    )
    hits = sum(p["index"] == truth[p["source"]] for p in out["predictions"] if "index" in p)
    return {"top1": hits / len(images), "correct": hits, "images": len(images), "failed": out["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/imagenet-dev"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--num-calibration", type=int, default=150)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (the shared photo set is absent); nothing measured")
    from edgetl.exporter.export import _imagenet_labels
    from edgetl.quantizer import map_eval_classes
    from edgetl_runtime.preprocess import list_images

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    labels = _imagenet_labels(1000)
    (work / "imagenet.txt").write_text("".join(f"{x}\n" for x in labels))
    classes = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    index = dict(zip(classes, map_eval_classes(classes, labels), strict=True))
    images = [p for c in classes for p in list_images(args.data / c)]
    truth = {str(p): index[p.parent.name] for p in images}

    # steps whose output is already in --work are not repeated (a rerun resumes)
    if not (work / "plain.onnx").is_file():
        plain_export(work / "plain.onnx")
    if not (work / "described.onnx").is_file():
        labels_file, plain = work / "imagenet.txt", work / "plain.onnx"
        sh(
            "edgetl",
            "describe",
            plain,
            "--labels",
            labels_file,
            "--preprocess",
            "inception",
            "--out",
            work / "described.onnx",
        )
    if not (work / "own.onnx").is_file():
        sh("edgetl", "export", "--backbone", "efficientnet_lite0", "--out", work / "own.onnx")
    results = {}
    for name in ("described", "own"):
        fp32, int8 = work / f"{name}.onnx", work / f"{name}.int8.onnx"
        if not int8.is_file():
            sh("edgetl", "quantize", fp32, "--calibration", args.data, "--num-calibration", args.num_calibration,
               "--method", "minmax", "--allow-drop", "--out", int8)  # fmt: skip
        bundle = work / f"{name}.tar.gz"
        sh("edgetl", "package", fp32, int8, "--out", bundle)
        results[name] = {p: top1(bundle, images, truth, p) for p in ("fp32", "int8")}
        print(name, results[name], file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
