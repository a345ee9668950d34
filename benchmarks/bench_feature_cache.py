"""What feature caching saves while the backbone is frozen.

Same model, same data, same number of frozen epochs, same head optimiser:
- uncached: every epoch augments each image and runs the frozen backbone (no_grad, eval mode) again;
- cached (edgetl): the backbone runs once per cached view (1 plain + `cache_views` augmented), then
  every epoch is a few matrix products on the cached features.

It also prints the split of the caching pass per training image: decode (file -> downscaled image,
threads as in training), augment (random resized crop + normalisation, one view) and forward (the
frozen backbone on the path `edgetl train` chooses on this machine), so one can see whether decode and
augmentation keep up with the faster frozen path.

    uv run python benchmarks/bench_feature_cache.py [--epochs 10] [--per-class 60] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def measure_split(data: Path, spec, recipe) -> dict:
    """Milliseconds per training image of decode, augment and the frozen forward pass."""
    from edgetl.backbones.registry import create_model
    from edgetl.data.imagefolder import (
        _decode_all,
        centre_pixels,
        decode_for_training,
        eval_tensor,
        train_transform,
    )
    from edgetl.trainer import frozen as features
    from edgetl_runtime.preprocess import list_images

    files = [p for d in sorted((data / "train").iterdir()) for p in list_images(d)]
    start = time.perf_counter()
    images = _decode_all(files, lambda p: decode_for_training(p, spec.resize, spec.interpolation))
    decode = (time.perf_counter() - start) / len(files)
    augment = train_transform(spec, recipe.scale, recipe.hflip)
    start = time.perf_counter()
    views = torch.stack([augment(im) for im in images])
    augment_s = (time.perf_counter() - start) / len(images)
    model = create_model("efficientnet_lite0").eval()
    part = features.FrozenPart(model.stages, (len(model.stages),))
    probe = eval_tensor(centre_pixels(images[: features.PROBE_IMAGES], spec), spec)
    choice, run = features.choose_path(part, probe, len(images) * 3, lambda f: model.head(f).argmax(1))
    start = time.perf_counter()
    for i in range(0, len(views), 64):
        run(views[i : i + 64])
    forward = (time.perf_counter() - start) / len(views)
    return {
        "images": len(images),
        "decode": round(decode * 1e3, 2),
        "augment": round(augment_s * 1e3, 2),
        "forward": round(forward * 1e3, 2),
        "path": choice.path.value,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10, help="frozen epochs")
    ap.add_argument("--per-class", type=int, default=60, help="training images per class (2 classes)")
    ap.add_argument("--size", type=int, default=224, help="input size")
    ap.add_argument("--cache-views", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgetl-bench-cache"))
    args = ap.parse_args()

    from edgetl.backbones.registry import create_model, get_backbone
    from edgetl.data.imagefolder import iter_augmented, load_imagefolder, train_transform
    from edgetl.data.samples import write_digits_imagefolder
    from edgetl.trainer.recipe import PhasePlan, Recipe
    from edgetl.trainer.train import train

    data = write_digits_imagefolder(
        args.out / "data", size=args.size, classes=2, per_class=round(args.per_class / 0.8), val_fraction=0.2
    )
    spec = get_backbone("efficientnet_lite0").preprocess.with_size(args.size)
    recipe = Recipe(
        stages=(PhasePlan(epochs=args.epochs, unfreeze=0, lr=3e-3),),
        image_size=args.size,
        cache_views=args.cache_views,
        patience=args.epochs,
    )

    split = measure_split(data, spec, recipe)
    print(json.dumps({"split_ms_per_image": split}), flush=True)

    # Uncached: the plain loop a user would write for a frozen backbone.
    torch.manual_seed(0)
    images = load_imagefolder(data, spec)
    model = create_model("efficientnet_lite0")
    model.reset_head(2)
    model.eval()
    head_opt = torch.optim.AdamW(model.head.parameters(), lr=3e-3)
    transform = train_transform(spec, recipe.scale, recipe.hflip)
    targets = images.train_targets
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(targets))
        for x, idx in iter_augmented(images.train_images, order, transform, recipe.batch_size):
            with torch.no_grad():
                features = model.forward_features(x)
            loss = F.cross_entropy(model.head(features), targets[idx])
            head_opt.zero_grad()
            loss.backward()
            head_opt.step()
    uncached = time.perf_counter() - start

    torch.manual_seed(0)
    result = train(data, args.out / "run", recipe=recipe, device="cpu")
    cached = result.stages[0].seconds
    print(
        json.dumps(
            {
                "train_images": len(targets),
                "size": args.size,
                "frozen_epochs": args.epochs,
                "cache_views": args.cache_views,
                "uncached_seconds": uncached,
                "cached_seconds": cached,
                "speedup": uncached / cached,
                "uncached_seconds_per_epoch": uncached / args.epochs,
                "cached_val_accuracy": result.best_val_accuracy,
                "threads": torch.get_num_threads(),
                "split_ms_per_image": split,
                "frozen_compute": result.frozen_compute,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
