"""Real labelled images shipped by packages, written to disk as an ImageFolder (for the demo and tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits_imagefolder(
    out: str | Path,
    size: int = 64,
    classes: int = 10,
    per_class: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> Path:
    """scikit-learn's handwritten digits (8x8, 1797 real scans) as DATA/{train,val[,test]}/<digit>/*.png.

    Images are upscaled to `size` and inverted to dark ink on white paper, like a photographed digit.
    The split is stratified and seeded, so the same arguments always give the same files.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for label in range(classes):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        if per_class is not None:
            idx = idx[:per_class]
        n_val = max(1, round(len(idx) * val_fraction))
        n_test = round(len(idx) * test_fraction)
        splits = {"val": idx[:n_val], "test": idx[n_val : n_val + n_test], "train": idx[n_val + n_test :]}
        for split, members in splits.items():
            folder = staging / split / str(label)
            for i in members:
                folder.mkdir(parents=True, exist_ok=True)
                pixels = (255 - digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
                image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
                image.save(folder / f"{i:04d}.png")
    # Whole dataset or nothing: a crash never leaves a half-written folder behind under `out`.
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
