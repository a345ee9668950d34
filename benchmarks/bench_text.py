"""edgetl's text path on BBC News against a by-hand full fine-tune, then INT8 against FP32.

    nice -n 10 uv run --frozen python benchmarks/bench_text.py --per-class 40 --out /tmp/bench_text

Reads ../shared/data/bbc-news (5 topics, one .txt per article); skips with a message when absent.
`--per-class N` takes a seeded subsample (N articles per topic) so the comparison fits a small
machine; both methods see the same train/val split (edgetl's). The by-hand baseline is a plain
transformers full fine-tune (max_length 128, mean pooling as the encoder was trained, AdamW, linear
head), each (lr, epochs) tried and the best on the validation split reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bbc-news"


def subsample(src: Path, dst: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for topic in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(topic.glob("*.txt"))
        (dst / topic.name).mkdir(parents=True, exist_ok=True)
        for i in sorted(rng.permutation(len(files))[:per_class]):
            os.symlink(files[i].resolve(), dst / topic.name / files[i].name)
    return dst


def wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def by_hand(train: list[str], ytrain, test: list[str], ytest, labels, lr: float, epochs: int, seed: int):
    """Full fine-tune with transformers + torch alone: (per-text correctness on `test`, training seconds)."""
    import torch

    from edgetl.backbones.text import create_text_model
    from edgetl_runtime.textinput import TextSpec, encode_texts

    torch.manual_seed(seed)
    ytr = torch.as_tensor(np.asarray(ytrain))
    start = time.perf_counter()
    model, files = create_text_model("all-minilm-l6-v2", len(labels))
    spec = TextSpec(files.tokenizer, 128)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(train) / 16)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / max(1, steps // 10)) * max(0.0, 1 - k / steps)
    )
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), 16):
            idx = order[i : i + 16]
            feed = encode_texts([train[j] for j in idx], spec)
            logits = model(torch.from_numpy(feed.ids), torch.from_numpy(feed.mask))
            loss = torch.nn.functional.cross_entropy(logits, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(test), 32):
            feed = encode_texts(test[i : i + 32], spec)
            preds += model(torch.from_numpy(feed.ids), torch.from_numpy(feed.mask)).argmax(1).tolist()
    return (np.array(preds) == np.asarray(ytest)).astype(float), seconds


def add_arguments(ap: argparse.ArgumentParser, *, out: str, epochs: str) -> None:
    """The options both text benchmarks take: the data, the by-hand sweep, the output and the seed."""
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--lrs", default="5e-5,1e-4", help="by-hand learning rates to try, comma-separated")
    ap.add_argument("--epochs", default=epochs, help="by-hand epoch counts to try, comma-separated")
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--seed", type=int, default=0)


def data_missing(data: Path) -> bool:
    if data.is_dir():
        return False
    print(f"skipped: {data} not found (the BBC News folder of ../shared/data)", file=sys.stderr)
    return True


def by_hand_tries(train, ytrain, test, ytest, labels, args: argparse.Namespace, key: str) -> list[dict]:
    """`by_hand` for every (lr, epochs) of --lrs x --epochs: lr, epochs, accuracy under `key`, seconds,
    and the per-text `correct` array (left out of the progress line)."""
    tries = []
    for lr in (float(v) for v in args.lrs.split(",")):
        for epochs in (int(v) for v in args.epochs.split(",")):
            correct, secs = by_hand(train, ytrain, test, ytest, labels, lr, epochs, args.seed)
            tries.append(
                {"lr": lr, "epochs": epochs, key: float(correct.mean()), "seconds": secs, "correct": correct}
            )
            print(json.dumps({k: v for k, v in tries[-1].items() if k != "correct"}), file=sys.stderr)
    return tries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap, out="/tmp/bench_text", epochs="4,8")
    ap.add_argument("--per-class", type=int, default=0, help="articles per topic (0: all)")
    args = ap.parse_args()
    if data_missing(args.data):
        return 0
    import edgetl
    from edgetl.quantizer.text import latencies_ms
    from edgetl_runtime.modelfile import read_model_info

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data = subsample(args.data, args.out / "data", args.per_class, args.seed) if args.per_class else args.data
    results: dict = {"load_before": os.getloadavg(), "per_class": args.per_class or "all"}
    run = args.out / "run"
    trained = edgetl.train(data, run, backbone="all-minilm-l6-v2", seed=args.seed)
    n = trained.num_val
    k = round(trained.best_val_accuracy * n)
    results["edgetl"] = {"val_accuracy": trained.best_val_accuracy, "ci95": wilson(k, n), "n_val": n,
                         "n_train": trained.num_train, "train_seconds": trained.train_seconds}  # fmt: skip
    print(json.dumps(results["edgetl"]), file=sys.stderr)
    from edgetl.data.texts import read_recorded
    from edgetl.runfolder.splits import Splits

    splits = Splits.load(run)
    train, val = read_recorded([p for p, _ in splits.train]), read_recorded([p for p, _ in splits.val])
    ytrain, yval, labels = [y for _, y in splits.train], [y for _, y in splits.val], splits.labels
    tries = [
        {k: v for k, v in t.items() if k != "correct"}
        for t in by_hand_tries(train, ytrain, val, yval, labels, args, "val_accuracy")
    ]
    best = max(tries, key=lambda t: t["val_accuracy"])
    results["by_hand"] = {**best, "ci95": wilson(round(best["val_accuracy"] * n), n), "tries": tries}
    results["time_ratio"] = trained.train_seconds / best["seconds"]
    edgetl.export(run)
    q = edgetl.quantize(run, allow_drop=True)
    spec = read_model_info(run / "model.onnx").preprocess
    results["int8"] = {"chosen": q.method, "attempts": q.summary["attempts"], "fp32_accuracy": q.fp32_accuracy,
                       "fp32_ms_128": latencies_ms({"fp32": run / "model.onnx"}, spec)["fp32"], "fp32_bytes": (run / "model.onnx").stat().st_size}  # fmt: skip
    results["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
