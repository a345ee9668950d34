"""Where a cold `edgetl-run predict` and a served request spend their time, by cProfile.

    uv run --frozen python benchmarks/profile_runtime.py --work /tmp/prof

- cold: `edgetl-run predict BUNDLE PHOTO` under `python -m cProfile` in a runtime-only environment
  (made from deploy/ as bench_cold_start.py makes it), the bundle cache warm as on a device that ran
  it before; also `-X importtime`'s ten slowest imports;
- serve: `edgetl-run serve BUNDLE` under cProfile, --requests requests from one keep-alive client,
  stopped with SIGTERM. cProfile sees the main thread: the event loop, HTTP parsing, the upload and
  the JSON answer, which is what the server adds to a prediction (the model runs on worker threads).

Writes WORK/cold.txt and WORK/serve.txt (pstats, top entries by cumulative and own time) and prints
one JSON object of the headline figures. docs/device-speed.md summarises a run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cold_start import ROOT, make_runtime, pick_image
from bench_serve import IMAGENET, Served, build_bundle, load_images

TOP = 30
# `edgetl-run` ends with os._exit (no interpreter teardown), so `python -m cProfile` never writes its
# file: profile main() from a script instead. argv: OUT.prof, then edgetl-run's own arguments.
PROFILED = """
import cProfile, sys
profile = cProfile.Profile()
profile.enable()
from edgetl_runtime.cli import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
profile.disable()
profile.dump_stats(sys.argv[1])
"""


def dump(prof: Path, out: Path) -> pstats.Stats:
    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    stats.sort_stats("cumulative").print_stats(TOP)
    stats.sort_stats("tottime").print_stats(TOP)
    out.write_text(text.getvalue())
    return stats


def seconds_in(stats: pstats.Stats, file: str, name: str) -> float:
    """Cumulative seconds in function `name` of a file whose path ends with `file` (summed if several)."""
    return round(
        sum(ct for (f, _, n), (_, _, _, ct, _) in stats.stats.items() if f.endswith(file) and n == name), 4
    )


def profile_cold(env: Path, bundle: Path, image: Path, work: Path) -> dict:
    python = env / "bin" / "python"
    cache = {**os.environ, "EDGETL_RUNTIME_CACHE": str(work / "cache")}
    predict = ["-m", "edgetl_runtime.cli", "predict", str(bundle), str(image)]
    subprocess.run(
        [str(python), *predict], check=True, stdout=subprocess.DEVNULL, env=cache
    )  # fills the cache
    prof = work / "cold.prof"
    subprocess.run([str(python), "-c", PROFILED, str(prof), *predict[2:]], check=True,
                   stdout=subprocess.DEVNULL, env=cache)  # fmt: skip
    stats = dump(prof, work / "cold.txt")
    imports = subprocess.run([str(python), "-X", "importtime", *predict], check=True, capture_output=True,
                             text=True, env=cache).stderr  # fmt: skip
    rows = [
        line.split("|")
        for line in imports.splitlines()
        if line.startswith("import time:") and "self" not in line
    ]
    slowest = sorted(((int(r[1]), r[2].strip()) for r in rows), reverse=True)[:10]
    return {
        "total_s": round(stats.total_tt, 4),
        "parser_s": seconds_in(stats, "edgetl_runtime/cli.py", "build_parser"),
        "open_bundle_s": seconds_in(stats, "edgetl_runtime/bundle.py", "_open_cached"),
        "session_s": seconds_in(stats, "edgetl_runtime/backends.py", "load_session"),
        "predict_s": seconds_in(stats, "edgetl_runtime/predictor.py", "predict"),
        "hashing_s": seconds_in(stats, "~", "<method 'update' of '_hashlib.HASH' objects>"),
        "slowest_imports_cumulative_us": slowest,
    }


def profile_serve(bundle: Path, work: Path, requests: int) -> dict:
    prof = work / "serve.prof"
    images = load_images(IMAGENET if IMAGENET.is_dir() else build_bundle(work / "digits", 224)[1], 64)
    served = Served(bundle, None, launcher=("-c", PROFILED, str(prof)))
    served.load(images, 1, 20, 60)  # warm-up
    figures = served.load(images, 1, requests, 600)
    if served.stop() != 0 or not prof.is_file():
        raise SystemExit("the profiled server did not stop cleanly; no profile written")
    stats = dump(prof, work / "serve.txt")
    return {"requests": requests + 20, "p50_ms": figures["p50_ms"], "outside_model_p50_ms": figures["outside_model_p50_ms"],
            "main_thread_s": round(stats.total_tt, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", type=Path, required=True, help="profiles, the runtime environment and the bundle go here"
    )
    ap.add_argument("--bundle", type=Path, help="a bundle archive (default: build a 224 px Lite0 INT8 one)")
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or args.work / "serve" / "bundle.tar.gz"
    if not bundle.exists():
        bundle = build_bundle(args.work / "serve", 224)[0]
    env = make_runtime(ROOT / "deploy", args.work / "env")
    result = {
        "cold": profile_cold(env, bundle, pick_image(args.work), args.work),
        "serve": profile_serve(bundle, args.work, args.requests),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
