"""Image folders in, decoded images in memory out: DATA/train/<class>/*, DATA/val/<class>/* (optional).

Every image is decoded once. Training images are kept downscaled (shorter side = spec.resize) and
augmented from memory each epoch; validation images go through the runtime's own preprocessing, so
validation numbers are the ones the device will reproduce. Unreadable files are skipped and counted.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from edgetl.data.images import warn_skipped
from edgetl.errors import DataError, ImageError
from edgetl.runfolder.splits import Splits
from edgetl_runtime.preprocess import (
    Interpolation,
    PreprocessSpec,
    check_pixels,
    decode_image,
    list_images,
    load_image,
    normalize,
    resize_crop,
)

Item = tuple[Path, int]
T = TypeVar("T")


@dataclass(frozen=True)
class ImageData:
    splits: Splits
    train_images: tuple[Image.Image, ...]  # RGB, shorter side = spec.resize
    val_pixels: np.ndarray  # (N, crop, crop, 3) uint8, exactly the runtime's resize + centre crop
    skipped: tuple[str, ...]  # unreadable files, left out

    @property
    def labels(self) -> tuple[str, ...]:
        return self.splits.labels

    @property
    def train_targets(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.splits.train], dtype=torch.long)

    @property
    def val_targets(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.splits.val], dtype=torch.long)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    return {
        d.name: list_images(d) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")
    }


def scan_imagefolder(
    root: str | Path, val_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[str, ...], list[Item], list[Item]]:
    """Class names and (path, label) lists; without DATA/val, a seeded stratified split of DATA/train."""
    root = Path(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "no such folder"
        raise DataError(f"--data {root}: {problem}; give a folder holding train/<class>/ image folders")
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        raise DataError(
            f"--data {root}: no train/ folder; expected {root}/train/<class>/<images> (and optionally {root}/val/<class>/)"
        )
    train = _class_folders(train_dir)
    if len(train) < 2:
        raise DataError(
            f"{train_dir}: found {len(train)} class folder(s); need at least 2, one sub-folder of images per class"
        )
    for name, files in train.items():
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
            # a newline in a class name would split labels.txt into more lines than classes
            raise DataError(
                f"{train_dir}: class folder {name!r} has control characters in its name; rename it"
            )
        if not files:
            raise DataError(
                f"{train_dir / name}: class folder has no images; add images or remove the folder"
            )
    labels = tuple(train)
    if val_dir.is_dir():
        val = _class_folders(val_dir)
        if set(val) != set(train):
            missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
            raise DataError(
                f"{val_dir}: class folders differ from train/ (missing: {', '.join(missing) or '-'}; "
                f"extra: {', '.join(extra) or '-'}); use the same class folders in both"
            )
        for name, files in val.items():
            if not files:
                raise DataError(f"{val_dir / name}: class folder has no images; add validation images for it")
        return (
            labels,
            [(p, i) for i, n in enumerate(labels) for p in train[n]],
            [(p, i) for i, n in enumerate(labels) for p in val[n]],
        )
    rng = np.random.default_rng(seed)
    train_items, val_items = [], []
    for i, name in enumerate(labels):
        files = train[name]
        if len(files) < 2:
            raise DataError(
                f"{train_dir / name}: only {len(files)} image; without a val/ folder each class needs at least 2"
            )
        order = rng.permutation(len(files))
        n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
        val_items += [(files[j], i) for j in sorted(order[:n_val])]
        train_items += [(files[j], i) for j in sorted(order[n_val:])]
    return labels, train_items, val_items


def decode_for_training(path: Path, short_side: int, interpolation: Interpolation) -> Image.Image:
    """Decode with the runtime's decoder (JPEG draft at reduced size), then downscale so the shorter
    side is `short_side`."""
    image = decode_image(path, short_side=short_side)
    w, h = image.size
    scale = short_side / min(w, h)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    check_pixels(size, path)  # random crops need the whole resized image: bound it (aspect-ratio bombs)
    return image if size == image.size else image.resize(size, Image.Resampling[interpolation.name])


def _decode_all(paths: Sequence[Path], decode) -> list:
    def attempt(path: Path):
        try:
            return decode(path)
        except ImageError:
            return None

    # PIL releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(attempt, paths))


def _keep_readable(
    items: list[Item], decoded: list, labels: tuple[str, ...], split: str
) -> tuple[list, list]:
    kept = [(item, d) for item, d in zip(items, decoded, strict=True) if d is not None]
    present = {y for (_, y), _ in kept}
    for i, name in enumerate(labels):
        if i not in present:
            raise DataError(f"{split}/{name}: no readable images (all unreadable); add readable images")
    return [it for it, _ in kept], [d for _, d in kept]


def load_imagefolder(
    root: str | Path, spec: PreprocessSpec, val_fraction: float = 0.2, seed: int = 0
) -> ImageData:
    """Scan, split and decode a dataset once; corrupt files are skipped, counted and named in a warning."""
    labels, train_items, val_items = scan_imagefolder(root, val_fraction, seed)
    train_decoded = _decode_all(
        [p for p, _ in train_items], lambda p: decode_for_training(p, spec.resize, spec.interpolation)
    )
    val_decoded = _decode_all(
        [p for p, _ in val_items], lambda p: np.asarray(resize_crop(load_image(p), spec, p))
    )
    skipped = [
        str(p)
        for (p, _), d in zip([*train_items, *val_items], [*train_decoded, *val_decoded], strict=True)
        if d is None
    ]
    warn_skipped(skipped, "dataset")
    train_items, train_images = _keep_readable(train_items, train_decoded, labels, "train")
    val_items, val_pixels = _keep_readable(val_items, val_decoded, labels, "val")
    splits = Splits(
        labels=labels,
        train=tuple((str(Path(p).resolve()), y) for p, y in train_items),
        val=tuple((str(Path(p).resolve()), y) for p, y in val_items),
        data_root=str(Path(root).resolve()),
        skipped=len(skipped),
    )
    return ImageData(splits, tuple(train_images), np.stack(val_pixels), tuple(skipped))


def eval_tensor(pixels: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 crops -> normalised batch with the runtime's own `normalize` (bit-identical to the device)."""
    return torch.from_numpy(np.stack([normalize(p, spec) for p in pixels]))


def centre_pixels(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """The runtime's resize + centre crop of in-memory images, as (N, crop, crop, 3) uint8."""
    return np.stack([np.asarray(resize_crop(im, spec)) for im in images])


def train_transform(spec: PreprocessSpec, scale: tuple[float, float], hflip: bool):
    """Random resized crop at the spec's size and interpolation, optional flip, then normalisation."""
    from torchvision.transforms import InterpolationMode, v2

    steps = [
        v2.RandomResizedCrop(
            spec.crop, scale=scale, interpolation=InterpolationMode(spec.interpolation.value), antialias=True
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(steps)


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items` produced by one background thread, up to `depth` ahead, in order.

    Augmentation (PIL resizes release the GIL) then overlaps the frozen forward pass of the previous
    batch. One producer keeps the order of random draws, so results stay seeded and bit-exact.
    """
    queue: Queue = Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                queue.put(item)
            queue.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            queue.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


def iter_augmented(
    images: Sequence[Image.Image], order: torch.Tensor, transform, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of freshly augmented images in `order`; yields (inputs, indices into images)."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield torch.stack([transform(images[i]) for i in idx.tolist()]), idx
