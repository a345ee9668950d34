"""The text path as a user with a few hundred labelled texts meets it, on held-out articles.

    nice -n 10 uv run --frozen python benchmarks/bench_text_heldout.py --out /tmp/heldout

From ../shared/data/bbc-news (skips with a message when absent) it draws a small imbalanced
three-class set (business 240, politics 100, tech 60 by default: economics, policy and technology
news overlap more than sport or entertainment do) and a disjoint test folder in the same
proportions. Then, as a user would:

- edgetl: `edgetl train --data train/` (which holds out its own validation texts), `export`,
  `quantize`, `package`, and the torch-free `edgetl-run predict BUNDLE test/`; train time is the
  wall time of the `edgetl train` command;
- by hand: a transformers full fine-tune on all of train/ (max_length 128, mean pooling, AdamW with
  warm-up and linear decay, batch 16), each (lr, epochs) tried and the best on test/ reported, which
  flatters the baseline: a user could not pick on the test set.

Both are scored on the same test texts; the difference comes with a paired bootstrap interval.
Repeat with `--seed` for other draws.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_text import add_arguments, by_hand_tries, data_missing, wilson


def draw(src: Path, dst: Path, counts: dict[str, int], test: float, seed: int) -> tuple[Path, Path]:
    """train/ and test/ class folders of symlinks: counts[c] train articles and round(test *
    counts[c]) others for test."""
    rng = np.random.default_rng(seed)
    for topic, n in counts.items():
        files = sorted((src / topic).glob("*.txt"))
        order = rng.permutation(len(files))
        m = round(test * n)
        if n + m > len(files):
            raise SystemExit(f"--train: {topic} has {len(files)} articles, fewer than {n} + {m} test")
        for split, picked in (("train", order[:n]), ("test", order[n : n + m])):
            (dst / split / topic).mkdir(parents=True, exist_ok=True)
            for i in sorted(picked):
                os.symlink(files[i].resolve(), dst / split / topic / files[i].name)
    return dst / "train", dst / "test"


def folder_texts(root: Path) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    from edgetl.data.texts import read_recorded

    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths = [(str(f), y) for y, c in enumerate(labels) for f in sorted((root / c).glob("*.txt"))]
    return (
        read_recorded([p for p, _ in paths]),
        np.array([y for _, y in paths]),
        [p for p, _ in paths],
        labels,
    )


def edgetl_cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgetl", *args, "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(
            f"edgetl {args[0]} failed ({proc.returncode}): {proc.stdout.strip()} {proc.stderr[-2000:]}"
        )
    return json.loads(proc.stdout)


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int, n: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b) in points, resampling texts."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    diffs = 100 * (a[idx].mean(1) - b[idx].mean(1))
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap, out="/tmp/bench_text_heldout", epochs="3,5")
    ap.add_argument(
        "--train", default="business=240,politics=100,tech=60", help="topic=count of training articles"
    )
    ap.add_argument(
        "--test", type=float, default=1.0, help="test articles per training article of each topic"
    )
    args = ap.parse_args()
    if data_missing(args.data):
        return 0
    if args.out.exists():
        raise SystemExit(f"--out: {args.out} exists; give a new folder")
    counts = {k: int(v) for k, v in (item.split("=") for item in args.train.split(","))}
    train_dir, test_dir = draw(args.data, args.out / "data", counts, args.test, args.seed)
    test_texts, test_y, test_paths, labels = folder_texts(test_dir)
    results: dict = {
        "load_before": os.getloadavg(),
        "train": counts,
        "n_test": len(test_y),
        "seed": args.seed,
    }

    run = args.out / "run"
    start = time.perf_counter()
    trained = edgetl_cli("train", "--data", str(train_dir), "--backbone", "all-minilm-l6-v2", "--out", str(run),
                         "--seed", str(args.seed))  # fmt: skip
    train_seconds = time.perf_counter() - start
    edgetl_cli("export", str(run))
    quant = edgetl_cli("quantize", str(run))
    edgetl_cli("package", str(run), "--precision", "int8", "--out", str(args.out / "bundle"))
    proc = subprocess.run(
        [sys.executable, "-m", "edgetl_runtime.cli", "predict", str(args.out / "bundle"), str(test_dir), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    predicted = {Path(p["source"]).resolve(): p["label"] for p in json.loads(proc.stdout)["predictions"]}
    ours = np.array(
        [predicted[Path(p).resolve()] == labels[y] for p, y in zip(test_paths, test_y, strict=True)], float
    )
    results["edgetl"] = {
        "test_accuracy": ours.mean(), "ci95": wilson(int(ours.sum()), len(ours)), "train_seconds": train_seconds,
        "val_accuracy": trained["best_val_accuracy"], "n_train": trained["num_train"], "n_val": trained["num_val"],
        "stages": trained["stages"], "int8": quant.get("method"),
    }  # fmt: skip
    print(json.dumps(results["edgetl"]), file=sys.stderr)

    train_texts, train_y, _, _ = folder_texts(train_dir)
    tries = by_hand_tries(train_texts, train_y, test_texts, test_y, labels, args, "test_accuracy")
    best = max(tries, key=lambda t: t["test_accuracy"])
    results["by_hand"] = {
        "lr": best["lr"], "epochs": best["epochs"], "test_accuracy": best["test_accuracy"], "seconds": best["seconds"],
        "ci95": wilson(int(best["correct"].sum()), len(ours)),
        "tries": [{k: v for k, v in t.items() if k != "correct"} for t in tries],
    }  # fmt: skip
    results["difference_points"] = 100 * (ours.mean() - best["test_accuracy"])
    results["difference_ci95"] = paired_interval(ours, best["correct"], args.seed)
    results["time_ratio"] = train_seconds / best["seconds"]
    results["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
