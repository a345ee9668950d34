"""Cold `edgetl-run predict BUNDLE photo.jpg`: process start to answer, in fresh processes.

Each runtime is installed from a deploy/ folder into its own environment the way pip installs it on
a device (bytecode compiled, no torch), so two versions of the runtime can be timed side by side:

    uv run --frozen python benchmarks/bench_cold_start.py --out benchmarks/results/cold_start.json
    uv run --frozen python benchmarks/bench_cold_start.py --deploy before=../old/deploy --deploy after=deploy

The runs of the runtimes are interleaved (A B A B ...), so a change of machine load falls on all of
them alike. Reported per runtime: the first run (empty bundle cache: it extracts the archive), the
median, min and max wall time of --runs more, and where one process spends its time (imports, loading
the bundle, one prediction), measured inside it. Without --bundle, one is built with edgetl's own
pipeline (224 px efficientnet_lite0 INT8, see bench_serve.py); without --image, the first
imagenet-dev photo is used when present, else a generated digit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_serve import IMAGENET, build_bundle

ROOT = Path(__file__).resolve().parents[1]

# Runs inside a runtime's environment: the phases of one cold predict, as the CLI goes through them.
PHASES = """
import json, sys, time
t0 = time.perf_counter()
from edgetl_runtime.predictor import Predictor
t1 = time.perf_counter()
predictor = Predictor.from_bundle(sys.argv[1])
t2 = time.perf_counter()
predictor.predict([sys.argv[2]])
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "load_ms": (t2 - t1) * 1e3, "predict_ms": (t3 - t2) * 1e3}))
"""


def make_runtime(deploy: Path, env: Path) -> Path:
    """A runtime-only environment from `deploy` (made once per --work folder)."""
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(env)], check=True)
        subprocess.run(
            ["uv", "pip", "install", "-q", "--compile-bytecode", "--python", str(python), str(deploy)],
            check=True,
        )
    return env


def time_predict(env: Path, bundle: Path, image: Path, cache: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(env / "bin" / "edgetl-run"), "predict", str(bundle), str(image)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "EDGETL_RUNTIME_CACHE": str(cache)},
    )
    return time.perf_counter() - start


def time_phases(env: Path, bundle: Path, image: Path, cache: Path, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [str(env / "bin" / "python"), "-c", PHASES, str(bundle), str(image)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "EDGETL_RUNTIME_CACHE": str(cache)},
        )
        samples.append(json.loads(out.stdout))
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in samples[0]}


def pick_image(work: Path) -> Path:
    photos = sorted(IMAGENET.glob("*/*.jpg")) if IMAGENET.is_dir() else []
    if photos:
        return photos[0]
    from edgetl.data.samples import write_digits_imagefolder

    data = write_digits_imagefolder(work / "digit", size=224, classes=1, per_class=1, val_fraction=0.0)
    return next(p for p in data.rglob("*.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a bundle archive (default: build a 224 px Lite0 INT8 one)")
    ap.add_argument("--image", type=Path, help="the photo to predict")
    ap.add_argument(
        "--deploy", action="append", default=[], metavar="LABEL=DIR", help="a runtime to time (repeatable)"
    )
    ap.add_argument("--runs", type=int, default=10, help="fresh processes per runtime after the first")
    ap.add_argument("--work", type=Path, help="keep environments and the built bundle here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-cold-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = dict(item.split("=", 1) for item in args.deploy) or {"current": str(ROOT / "deploy")}
    bundle = args.bundle or (work / "serve" / "bundle.tar.gz")
    if not bundle.exists():
        print("building a 224 px Lite0 INT8 bundle ...", file=sys.stderr)
        bundle = build_bundle(work / "serve", 224)[0]
    image = args.image or pick_image(work)
    envs = {label: make_runtime(Path(src).resolve(), work / f"env-{label}") for label, src in sources.items()}
    caches = {label: work / f"cache-{label}" for label in envs}
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    first = {label: time_predict(env, bundle, image, caches[label]) for label, env in envs.items()}
    walls: dict[str, list[float]] = {label: [] for label in envs}
    load = [os.getloadavg()]
    for _ in range(args.runs):
        for label, env in envs.items():
            walls[label].append(time_predict(env, bundle, image, caches[label]))
    load.append(os.getloadavg())
    result = {
        "bundle": str(bundle),
        "bundle_bytes": bundle.stat().st_size,
        "image": str(image),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_before_after": [[round(x, 2) for x in la] for la in load],
        "runtimes": {
            label: {
                "deploy": sources[label],
                "first_run_s": round(first[label], 3),
                "median_s": round(statistics.median(walls[label]), 3),
                "min_s": round(min(walls[label]), 3),
                "max_s": round(max(walls[label]), 3),
                "runs": len(walls[label]),
                "phases_median_ms": time_phases(envs[label], bundle, image, caches[label], 5),
            }
            for label in envs
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    for label, row in result["runtimes"].items():
        print(
            f"{label:>10}: first {row['first_run_s']:.3f} s, median {row['median_s']:.3f} s "
            f"[{row['min_s']:.3f}, {row['max_s']:.3f}] of {row['runs']}; {row['phases_median_ms']}",
            file=sys.stderr,
        )
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
