"""Why `edgetl train` chose its frozen-compute path here, and what the whole training run costs.

For one dataset it prints (1) the features/s of every frozen-compute path (eager float32 NCHW,
channels_last, bf16 autocast where the CPU has native bf16, onnxruntime after a one-time export, with
the export's cost and each path's fidelity against eager float32), then (2) `edgetl train` with its
defaults end to end: wall and CPU time (user+sys), the path it chose, per-stage seconds and the best
validation accuracy with the number of validation images (one image = 100/num_val points).

Datasets: `demo` (the README demo's data: 1000 scikit-learn digits at 128 px, 10 classes),
`sign-digits` (../shared/data/sign-digits, 2062 photos, 10 classes, --no-hflip), `sign-digits-2`
(its classes 0 and 1), or any ImageFolder path. Real-data sets are linked, never copied.

    uv run python benchmarks/bench_train_speed.py --data sign-digits [--train-only] [--paths-only]

`--train-only` needs nothing beyond `edgetl.trainer.train.train`, so the same script measures an older
checkout: `cd OLD && uv run --frozen python NEW/benchmarks/bench_train_speed.py --train-only ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sign-digits"
NO_FLIP = {"demo", "sign-digits", "sign-digits-2"}  # digits must not be mirrored


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def prepare(name: str, out: Path) -> tuple[Path, int | None]:
    """(ImageFolder root, image size override) for a dataset name or path."""
    if name == "demo":
        from edgetl.data.samples import write_digits_imagefolder

        root = write_digits_imagefolder(
            out / "demo", size=128, classes=10, per_class=100, val_fraction=0.2, test_fraction=0.1, seed=0
        )
        return root, 128
    if name in ("sign-digits", "sign-digits-2"):
        source = SHARED.resolve()
        if not source.is_dir():
            sys.exit(f"skipped: {source} is absent (the shared real-data folder); nothing measured")
        train = out / name / "train"
        train.mkdir(parents=True, exist_ok=True)
        for c in sorted(d.name for d in source.iterdir() if d.is_dir()):
            if name == "sign-digits-2" and c not in ("0", "1"):
                continue
            link = train / c
            if not link.exists():
                link.symlink_to(source / c, target_is_directory=True)
        return out / name, None
    return Path(name), None


def measure_paths(root: Path, image_size: int | None, probe: int) -> dict:
    import torch

    from edgetl.backbones.registry import create_model, get_backbone
    from edgetl.data.imagefolder import centre_pixels, decode_for_training, eval_tensor
    from edgetl.trainer import frozen as F
    from edgetl_runtime.preprocess import list_images

    spec = get_backbone("efficientnet_lite0").preprocess
    spec = spec.with_size(image_size) if image_size else spec
    paths = sorted(p for d in sorted((root / "train").iterdir()) for p in list_images(d))
    paths = paths[:: max(1, len(paths) // probe)][:probe]
    images = [decode_for_training(p, spec.resize, spec.interpolation) for p in paths]
    x = eval_tensor(centre_pixels(images, spec), spec)
    model = create_model("efficientnet_lite0").eval()
    part = F.FrozenPart(model.stages, (len(model.stages),))
    rows = {}
    ref = None
    for path in F.FrozenPath:
        if path is F.FrozenPath.BF16 and not F.native_bf16():
            rows[path.value] = {"skipped": "no native bf16 on this CPU"}
            continue
        started = time.perf_counter()
        run = F.build_runner(part, path, x)
        setup = time.perf_counter() - started
        rate, outs = F._throughput(run, x)
        ref = outs if ref is None else ref
        cos = torch.nn.functional.cosine_similarity(outs[0], ref[0]).min().item()
        rows[path.value] = {"features_per_s": round(rate, 1), "setup_s": round(setup, 2), "min_cosine": cos}
    return {"probe_images": len(x), "input": spec.crop, "threads": torch.get_num_threads(), "paths": rows}


def measure_train(root: Path, out: Path, image_size: int | None, hflip: bool) -> dict:
    from edgetl.trainer.train import train

    overrides = {"hflip": hflip}
    if image_size:
        overrides["image_size"] = image_size
    started, cpu = time.perf_counter(), cpu_seconds()
    result = train(root, out / "run", device="cpu", seed=0, **overrides)
    return {
        "num_train": result.num_train,
        "num_val": result.num_val,
        "best_val_accuracy": result.best_val_accuracy,
        "correct_val_images": round(result.best_val_accuracy * result.num_val),
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(cpu_seconds() - cpu, 1),
        "stages_s": [round(s.seconds, 1) for s in result.stages],
        "frozen_compute": getattr(result, "frozen_compute", None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="sign-digits", help="demo | sign-digits | sign-digits-2 | PATH")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgetl-bench-speed"))
    ap.add_argument("--probe", type=int, default=32, help="images per path throughput measurement")
    ap.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--train-only", action="store_true", help="skip the per-path table")
    ap.add_argument("--paths-only", action="store_true", help="skip the training run")
    args = ap.parse_args()

    root, image_size = prepare(args.data, args.out)
    hflip = args.hflip if args.hflip is not None else args.data not in NO_FLIP
    report = {"data": str(root), "load_1min": os.getloadavg()[0]}
    if not args.train_only:
        report["paths"] = measure_paths(root, image_size, args.probe)
        print(json.dumps(report["paths"]), file=sys.stderr)
    if not args.paths_only:
        report["train"] = measure_train(root, args.out / args.data.replace("/", "_"), image_size, hflip)
    report["load_1min_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
