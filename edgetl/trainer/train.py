"""Fine-tuning: frozen stages train the head on cached features, then the last K stages are unfrozen.

A run folder gets best.safetensors (best validation score), last.safetensors + last_state.pt (for
--resume), splits.json, metrics.json (per epoch), confusion.json and summary.json.

This module resolves the recipe, data and device, guards the run folder and starts the run; how each
stage kind trains is in `stages`, the per-epoch bookkeeping, checkpoints and summary in `session`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgetl.backbones.checkpoint import load_checkpoint, read_checkpoint_info, with_head
from edgetl.backbones.registry import create_model, get_backbone
from edgetl.console import log, warn
from edgetl.data.imagefolder import eval_tensor, load_imagefolder
from edgetl.data.modality import backbone_modality
from edgetl.device import cuda_autocast_dtype, place_model
from edgetl.errors import EdgetlError
from edgetl.options import Device, check_seed
from edgetl.runfolder.folder import RunFolder, dataset_fingerprint
from edgetl.runfolder.splits import Splits
from edgetl.trainer.distributed import close_world, init_world, launched_rank
from edgetl.trainer.frozen import FrozenCompute
from edgetl.trainer.phases import PhaseContext
from edgetl.trainer.recipe import Balance, Recipe, recipe_from_dict, resolve_recipe
from edgetl.trainer.session import Book, PhaseResult, Session, TrainResult, load_resume_state
from edgetl_runtime.fileio import check_writable
from edgetl_runtime.modality import Modality

__all__ = ["PhaseResult", "TrainResult", "resolve_device", "train"]


def _cuda_missing_reason() -> str:
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    return "no CUDA device is visible: no GPU, no driver, or CUDA_VISIBLE_DEVICES hides it"


def resolve_device(choice: str | Device = Device.AUTO) -> tuple[torch.device, torch.dtype | None]:
    """The device and its autocast dtype (bf16 where supported, else fp16; None on CPU)."""
    choice = Device(choice)
    if choice is Device.CUDA and not torch.cuda.is_available():
        raise EdgetlError(f"--device cuda: {_cuda_missing_reason()}; use --device cpu or --device auto")
    if choice is Device.CPU or not torch.cuda.is_available():
        if choice is Device.AUTO:
            log(f"device: cpu, because {_cuda_missing_reason()}")
        return torch.device("cpu"), None
    dtype = cuda_autocast_dtype()
    log(f"device: cuda ({torch.cuda.get_device_name()}), mixed precision {str(dtype).removeprefix('torch.')}")
    return torch.device("cuda"), dtype


def _balance_weights(targets: torch.Tensor, n_classes: int, policy: Balance):
    """(loss class weights, per-sample sampling weights); at most one of them is set."""
    counts = torch.bincount(targets, minlength=n_classes).float()
    imbalanced = counts.max() / counts.min() >= 1.5
    if policy is Balance.SAMPLER:
        return None, (1.0 / counts)[targets]
    if policy is Balance.LOSS or (policy is Balance.AUTO and imbalanced):
        return counts.sum() / (n_classes * counts), None
    return None, None


def _check_same_data(run: RunFolder, splits: Splits) -> None:
    """--resume continues only on the data the run started with (checked before anything is written)."""
    recorded = run.load_splits()
    same = (
        recorded.fingerprint == splits.fingerprint
        if recorded.fingerprint
        else (recorded.labels, recorded.train, recorded.val) == (splits.labels, splits.train, splits.val)
    )
    if not same:
        raise EdgetlError(
            f"--resume: --data differs from the data {run.root} was trained on ({recorded.data_root}: "
            f"{len(recorded.labels)} classes, {len(recorded.train)}+{len(recorded.val)} images); resume with "
            "that --data, or start over with --overwrite"
        )


def _check_fresh(run: RunFolder, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise EdgetlError("--resume and --overwrite: choose one (continue the run, or replace it)")
    foreign = run.foreign_artifacts()
    if foreign:
        raise EdgetlError(
            f"--out {run.root}: holds {', '.join(foreign)} but no edgetl run; --overwrite removes only "
            "what a run wrote, so move those files or choose another --out"
        )
    nothing_to_resume = run.holds_run() and run.checkpoint() is None and not run.last_state.is_file()
    if nothing_to_resume and not overwrite:
        raise EdgetlError(
            f"--out {run.root}: holds a run interrupted before its first epoch ended (no checkpoint); "
            "nothing to resume: pass --overwrite to start it over, or choose another --out"
        )
    if run.holds_run() and not (resume or overwrite):
        raise EdgetlError(
            f"--out {run.root}: holds a run already; pass --resume to continue it, --overwrite to replace "
            "it (removes its checkpoints, models and records), or choose another --out"
        )


def _check_apart(data: Path, out: Path) -> None:
    """--out inside --data would add its plots to a class as photos; --data inside --out is cleared by
    --overwrite. Both refused before anything is written."""
    data, out = Path(data).resolve(), Path(out).resolve()
    if out.is_relative_to(data):
        raise EdgetlError(
            f"--out {out}: is inside --data {data}; its plots would be read as images, choose a run folder outside it"
        )
    if data.is_relative_to(out):
        raise EdgetlError(f"--data {data}: is inside --out {out}; keep the dataset outside the run folder")


def train(
    data: str | Path,
    out: str | Path,
    *,
    backbone: str | None = None,
    recipe: str | Path | Recipe | None = None,
    device: str | Device = Device.AUTO,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    weights: str | None = None,
    frozen_epochs: int | None = None,
    epochs: int | None = None,
    unfreeze: int | None = None,
    lr: float | None = None,
    lr_backbone: float | None = None,
    lr_decay: float | None = None,
    batch_size: int | None = None,
    label_smoothing: float | None = None,
    patience: int | None = None,
    balance: str | Balance | None = None,
    hflip: bool | None = None,
    image_size: int | None = None,
    val_fraction: float | None = None,
    cache_views: int | None = None,
) -> TrainResult:
    """Fine-tune `backbone` on the ImageFolder `data` into run folder `out`.

    recipe: a Recipe, a TOML path or a backbone name (default: models/<backbone>.toml). The options
    from `weights` on replace the recipe's values (None keeps them); `frozen_epochs`, `epochs`,
    `unfreeze`, `lr` and `lr_backbone` act on its stages as `Recipe.with_overrides` describes.
    A folder that holds a run is refused unless resume=True (continue from RUN/last.safetensors with
    the recipe saved there, on the same data) or overwrite=True (every artifact of the old run is
    removed first). The run folder is locked while training: a second writer fails at once.
    """
    started = time.perf_counter()
    check_seed(seed)
    overrides = {
        "weights": weights, "frozen_epochs": frozen_epochs, "epochs": epochs, "unfreeze": unfreeze, "lr": lr,
        "lr_backbone": lr_backbone, "lr_decay": lr_decay, "batch_size": batch_size,
        "label_smoothing": label_smoothing, "patience": patience, "balance": balance, "hflip": hflip,
        "image_size": image_size, "val_fraction": val_fraction, "cache_views": cache_views,
    }  # fmt: skip
    request = TrainRequest(
        data=data,
        backbone=backbone,
        recipe=recipe,
        device=device,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        overrides=overrides,
    )
    run = RunFolder(Path(out))
    if launched_rank() != 0:
        # under torchrun, rank 0 checks, locks and writes the run folder; the others only read it
        try:
            return _train_locked(request, run, started=started)
        finally:
            close_world()
    _check_apart(Path(data), run.root)
    _check_fresh(run, resume, overwrite)
    created = not run.root.exists()
    try:
        check_writable(run.root, "--out", folder=True)
        with run.lock("train"):
            return _train_locked(request, run, started=started)
    finally:
        close_world()
        if created:
            run.discard_if_empty()


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """What `train` was asked for, as the locked part of training receives it."""

    data: str | Path
    backbone: str | None
    recipe: Recipe | str | Path | None
    device: str
    seed: int
    resume: bool
    overwrite: bool
    overrides: dict  # recipe options given (None: keep the recipe's value)


def _train_locked(request: TrainRequest, run: RunFolder, *, started: float):
    if launched_rank() == 0:
        # again, now that no other writer can change the folder
        _check_fresh(run, request.resume, request.overwrite)
    return TRAINERS[_run_modality(run, request)](request, run, started=started)


def _run_modality(run: RunFolder, request: TrainRequest) -> Modality:
    """What the run trains: a resumed run's checkpoint says; else the recipe's backbone."""
    if request.resume and run.last.is_file():
        return read_checkpoint_info(run.last).modality
    return backbone_modality(resolve_recipe(request.recipe, request.backbone).backbone)


def _train_text(request: TrainRequest, run: RunFolder, *, started: float):
    from edgetl.trainer.text import train_text

    world = init_world(cuda=False)  # text trains on CPU: gloo
    if world.active:
        log(f"distributed: {world.size} processes, backend {world.backend.value}")
    if request.resume:
        info = read_checkpoint_info(run.last)
        recipe = recipe_from_dict(info.recipe, source=str(run.last))
    else:
        recipe = resolve_recipe(request.recipe, request.backbone).with_overrides(**request.overrides)
    return train_text(
        request.data, run, recipe, world, seed=request.seed, resume=request.resume, overwrite=request.overwrite,
        started=started,
    )  # fmt: skip


def _train_images(request: TrainRequest, run: RunFolder, *, started: float):
    data, recipe, device, seed = request.data, request.recipe, request.device, request.seed
    resume, overwrite, overrides = request.resume, request.overwrite, request.overrides
    main = launched_rank() == 0
    if resume:
        if any(v is not None for v in overrides.values()) or recipe is not None:
            warn("--resume continues with the run's saved recipe; other recipe options are ignored")
        recipe, state = load_resume_state(run.root)
        seed = int(state["seed"])
    else:
        recipe, state = resolve_recipe(recipe, request.backbone).with_overrides(**overrides), None
    spec = recipe.preprocess_spec(get_backbone(recipe.backbone).preprocess)
    dev, amp = resolve_device(device)
    world = init_world(cuda=dev.type == "cuda")
    if world.active:
        log(f"distributed: {world.size} processes, backend {world.backend.value}")
        if dev.type == "cuda":
            dev = torch.device("cuda", world.local_rank)
    torch.manual_seed(seed)

    images = load_imagefolder(data, spec, recipe.val_fraction, seed)
    splits = images.splits.with_fingerprint(dataset_fingerprint(images.splits))
    log(
        f"data: {len(images.labels)} classes, {len(images.train_images)} train / {len(images.val_pixels)} val images"
        + (f", {len(images.skipped)} unreadable skipped" if images.skipped else "")
    )
    if state is None:
        # built before the run folder is touched, so bad --weights leave the old run (or nothing) behind
        model = create_model(recipe.backbone, weights=recipe.weights)
        model.reset_head(len(images.labels), recipe.dropout, recipe.head_hidden, recipe.head_dropout)
    else:
        _check_same_data(run, splits)
        model, _ = load_checkpoint(run.last)
        if run.last_head.is_file():  # interrupted in a cached-feature stage
            model.load_state_dict(with_head(model.state_dict(), run.last_head))
    world.barrier()  # every process has read the old run before rank 0 changes the folder
    if main:
        run.prepare(splits, overwrite=overwrite, resuming=state is not None)
    place_model(model, dev)
    class_weights, sample_weights = _balance_weights(images.train_targets, len(images.labels), recipe.balance)
    if class_weights is not None:
        class_weights = class_weights.to(dev)
    frozen = FrozenCompute(run.root, reuse=state is not None)
    ctx = PhaseContext(
        model=model,
        data=images,
        recipe=recipe,
        spec=spec,
        device=dev,
        amp=amp,
        seed=seed,
        class_weights=class_weights,
        sample_weights=sample_weights,
        frozen=frozen,
        world=world,
    )
    book = Book(**state["book"]) if state else Book()
    elapsed = state["elapsed"] + time.perf_counter() - started if state else time.perf_counter() - started
    session = Session(ctx, run.root, eval_tensor(images.val_pixels, spec), book, elapsed, splits.fingerprint)
    if state is not None and run.best_head.is_file():
        # the interrupted stage's best so far: its backbone is the stage's, which the model holds
        session.best_weights = with_head(model.state_dict(), run.best_head)
    for s in range(state["stage"] if state else 0, len(recipe.stages)):
        session.run_phase(s, state if state and s == state["stage"] else None)
    return session.finish()


# one trainer per modality, chosen by the model (edgetl/data/modality.py)
TRAINERS = {Modality.IMAGE: _train_images, Modality.TEXT: _train_text}
