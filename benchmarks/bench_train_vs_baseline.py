"""`edgetl train` with its defaults against the by-hand recipe, on the same data and machine.

The by-hand recipe (the seed documents'): pretrained backbone, new head at lr 1e-3, the last blocks
trainable at lr 1e-4, everything else frozen, Adam, 10 epochs over augmented images, the usual
torchvision ImageFolder + DataLoader loop. edgetl's default must reach at least its validation
accuracy in at most half its wall time.

Data: two classes of real handwritten digits (scikit-learn), ~120 training and 40 validation images
per class, upscaled to full 224 px RGB images (a stand-in for a small photo dataset, offline).

    uv run python benchmarks/bench_train_vs_baseline.py [--digits 3 8] [--size 224] [--out /tmp/bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def write_two_digits(
    out: Path, digits: tuple[int, int], size: int, train: int, val: int, seed: int = 0
) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    for label in digits:
        idx = rng.permutation(np.flatnonzero(d.target == label))
        for split, members in (("train", idx[:train]), ("val", idx[train : train + val])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                pixels = (255 - d.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(
                    folder / f"{i:04d}.png"
                )
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers): fair under load."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def by_hand(data: Path, epochs: int = 10, unfreeze: int = 2, workers: int = 2) -> dict:
    """The seed documents' recipe, written plainly."""
    from torchvision import datasets, transforms

    from edgetl.backbones.registry import create_model, get_backbone

    started, cpu = time.perf_counter(), cpu_seconds()
    spec = get_backbone("efficientnet_lite0").preprocess
    interp = transforms.InterpolationMode(spec.interpolation.value)
    norm = transforms.Normalize(spec.mean, spec.std)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(spec.crop, interpolation=interp),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(spec.resize, interpolation=interp),
            transforms.CenterCrop(spec.crop),
            transforms.ToTensor(),
            norm,
        ]
    )
    train_set = datasets.ImageFolder(data / "train", train_tf)
    val_set = datasets.ImageFolder(data / "val", val_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True, num_workers=workers)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=64, num_workers=workers)

    model = create_model("efficientnet_lite0", num_classes=len(train_set.classes))
    for p in model.parameters():
        p.requires_grad = False
    last_blocks = model.stages[-unfreeze:]
    for p in [*last_blocks.parameters(), *model.head.parameters()]:
        p.requires_grad = True
    optimizer = torch.optim.Adam(
        [{"params": model.head.parameters(), "lr": 1e-3}, {"params": last_blocks.parameters(), "lr": 1e-4}]
    )
    loss_fn = nn.CrossEntropyLoss()
    accuracies = []
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
        accuracies.append(correct / len(val_set))
    return {
        "final_val_accuracy": accuracies[-1],
        "best_val_accuracy": max(accuracies),
        "per_epoch": accuracies,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
    }


def edgetl_defaults(data: Path, run: Path) -> dict:
    from edgetl.trainer.train import train

    started, cpu = time.perf_counter(), cpu_seconds()
    result = train(data, run, device="cpu")
    return {
        "best_val_accuracy": result.best_val_accuracy,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "train_seconds": result.train_seconds,
        "stages": [(s.index, s.unfreeze, s.epochs_run, round(s.seconds, 1)) for s in result.stages],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=int, nargs=2, default=(3, 8))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--train", type=int, default=120, help="training images per class")
    ap.add_argument("--val", type=int, default=40, help="validation images per class")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the by-hand loop")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgetl-bench-train"))
    args = ap.parse_args()

    data = write_two_digits(args.out / "data", tuple(args.digits), args.size, args.train, args.val)
    torch.manual_seed(0)
    ours = edgetl_defaults(data, args.out / "run")
    torch.manual_seed(0)
    baseline = by_hand(data, workers=args.workers)
    report = {
        "edgetl_defaults": ours,
        "by_hand_10_epochs": baseline,
        "wall_time_ratio": ours["wall_seconds"] / baseline["wall_seconds"],
        "cpu_time_ratio": ours["cpu_seconds"] / baseline["cpu_seconds"],
        # float32 accuracies: the same count of correct images must compare equal
        "accuracy_ok": ours["best_val_accuracy"] >= baseline["final_val_accuracy"] - 1e-6,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
