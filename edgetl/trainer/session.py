"""One training run in its run folder: stages in order, per-epoch metrics and checkpoints, the
bookkeeping --resume restores, and the summary, confusion matrix and plots at the end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from edgetl.backbones.checkpoint import (
    CheckpointInfo,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    save_head,
    save_state,
    with_head,
)
from edgetl.console import log
from edgetl.errors import EdgetlError
from edgetl.reporting.plots import write_training_plots
from edgetl.runfolder.folder import RunFolder
from edgetl.runfolder.records import PhaseRecord as PhaseResult  # summary.json's stage record
from edgetl.trainer.phases import PHASE_RUNNERS, PhaseContext
from edgetl.trainer.recipe import Recipe, recipe_from_dict
from edgetl.trainer.schedule import make_optimizer
from edgetl_runtime.fileio import atomic_output, write_text_atomic


@dataclass(frozen=True)
class TrainResult:
    run: Path
    checkpoint: Path
    best_val_accuracy: float
    best_epoch: int
    train_seconds: float
    epochs: int
    skipped: int
    num_train: int
    num_val: int
    labels: tuple[str, ...]
    backbone: str
    device: str
    stages: tuple[PhaseResult, ...]
    frozen_compute: dict | None = None
    world_size: int = 1  # training processes (torchrun); 1 without it
    backend: str | None = None  # their torch.distributed backend: gloo (CPU) or nccl (CUDA)

    @property
    def artifact(self) -> Path:
        """The run folder this training wrote (what the next step takes)."""
        return self.run

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run"], d["checkpoint"] = str(self.run), str(self.checkpoint)
        return d


def _score(accuracy: float, loss: float) -> tuple[float, float]:
    """Higher is better: accuracy first, validation loss breaks ties (small sets often tie on accuracy)."""
    return (accuracy, -loss)


def save_last_state(run: Path, state: dict) -> None:
    """Optimizer, scheduler, RNG and bookkeeping of the last epoch, beside last.safetensors (--resume)."""
    with atomic_output(RunFolder(run).last_state) as tmp:
        torch.save(state, tmp)


def _write_json(path: Path, obj) -> None:
    import json

    write_text_atomic(path, json.dumps(obj, indent=1))


def _confusion(labels: tuple[str, ...], targets: torch.Tensor, preds: list[int]) -> dict:
    n = len(labels)
    matrix = torch.zeros(n, n, dtype=torch.long)
    for t, p in zip(targets.tolist(), preds, strict=True):
        matrix[t, p] += 1
    per_class = {
        labels[i]: (matrix[i, i] / matrix[i].sum()).item() if matrix[i].sum() else None for i in range(n)
    }
    return {
        "labels": list(labels),
        "matrix": matrix.tolist(),  # rows: true class, columns: predicted class
        "per_class_accuracy": per_class,
        "accuracy": (matrix.diag().sum() / matrix.sum()).item(),
    }


def load_resume_state(run: Path) -> tuple[Recipe, dict]:
    folder = RunFolder(run)
    if not folder.last.is_file() or not folder.last_state.is_file():
        raise EdgetlError(
            f"--resume: {run} has no {folder.last.name} and {folder.last_state.name}; nothing to resume: "
            "start over with --overwrite"
        )
    info = read_checkpoint_info(folder.last)
    state = torch.load(folder.last_state, map_location="cpu", weights_only=True)
    return recipe_from_dict(info.recipe, source=str(folder.last)), state


@dataclass
class Book:
    """Run bookkeeping that --resume restores: epochs done, best score, history, finished stages."""

    epoch: int = 0
    best: list | None = None  # _score of the best epoch
    best_epoch: int = 0
    best_preds: list = field(default_factory=list)
    history: list = field(default_factory=list)
    stages: list = field(default_factory=list)

    def improves(self, score: tuple[float, float]) -> bool:
        return self.best is None or score > tuple(self.best)


class Session:
    """One training run in a run folder: stages in order, with checkpoints and metrics per epoch."""

    def __init__(
        self, ctx: PhaseContext, run: Path, val_x: torch.Tensor, book: Book, elapsed: float, fingerprint: str
    ) -> None:
        self.ctx, self.run, self.val_x, self.book = ctx, run, val_x, book
        self.folder = RunFolder(run)
        self.fingerprint = fingerprint
        self.val_y = ctx.data.val_targets
        self.best_weights: dict | None = None
        self.started = time.perf_counter() - elapsed

    def info(self, metrics: dict) -> CheckpointInfo:
        r = self.ctx.recipe
        return CheckpointInfo(
            r.backbone,
            self.ctx.data.labels,
            self.ctx.spec,
            self.book.epoch,
            r.to_dict(),
            metrics,
            self.fingerprint,
        )

    def run_phase(self, s: int, resume: dict | None) -> None:
        ctx, book, plan = self.ctx, self.book, self.ctx.recipe.stages[s]
        stage_start = time.perf_counter()
        if resume is None and book.best is not None:
            # Each stage starts from the best weights so far, not from an over-trained last epoch.
            best = self.best_weights or load_checkpoint(self.folder.best)[0].state_dict()
            ctx.model.load_state_dict(best)
        runner = PHASE_RUNNERS[plan.frozen](ctx, plan, self.val_x)
        optimizer, scheduler = make_optimizer(ctx.model, plan, ctx.recipe, runner.steps_per_epoch)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp is torch.float16)
        start_epoch, bad = 0, 0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            torch.set_rng_state(resume["rng"])
            start_epoch, bad = resume["stage_epoch"], resume["bad"]
            log(f"resuming stage {s + 1} after its epoch {start_epoch} (run epoch {book.epoch})")
        stopped = False
        # Cached-feature epochs change only the head: the backbone is written once, here, and each epoch
        # writes the head alone; the stage's end joins them into full best/last checkpoints again.
        save = save_head if plan.frozen else save_checkpoint
        if plan.frozen and resume is None and ctx.world.main:
            save_checkpoint(ctx.model, self.info({}), self.folder.last)
        for e in range(start_epoch, plan.epochs):
            if bad >= ctx.recipe.patience:
                stopped = True
                log(f"stage {s + 1}: no better validation score for {bad} epochs, stopping it early")
                break
            t0 = time.perf_counter()
            train_loss, train_acc = runner.train_epoch(optimizer, scheduler, scaler)
            logits = runner.evaluate().cpu()
            val_loss = F.cross_entropy(logits, self.val_y).item()
            preds = logits.argmax(1)
            val_acc = int((preds == self.val_y).sum()) / len(self.val_y)  # exact, as a count of images
            book.epoch += 1
            book.history.append(
                {
                    "epoch": book.epoch,
                    "stage": s + 1,
                    "unfreeze": plan.unfreeze,
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            metrics = {"val_accuracy": val_acc, "val_loss": val_loss}
            improved = book.improves(_score(val_acc, val_loss))
            bad = 0 if improved else bad + 1
            if improved:
                book.best, book.best_epoch, book.best_preds = (
                    list(_score(val_acc, val_loss)),
                    book.epoch,
                    preds.tolist(),
                )
                self.best_weights = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
                if ctx.world.main:  # the other processes hold the same weights and write nothing
                    save(
                        ctx.model,
                        self.info(metrics),
                        self.folder.best_head if plan.frozen else self.folder.best,
                    )
            # Frozen epochs take milliseconds: log only the ones that matter.
            if not plan.frozen or improved or e + 1 == plan.epochs:
                log(
                    f"stage {s + 1}/{len(ctx.recipe.stages)} epoch {e + 1}/{plan.epochs}: "
                    f"train loss {train_loss:.3f} acc {train_acc:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f}"
                    + (" *" if improved else "")
                )
            if ctx.world.main:
                save(
                    ctx.model, self.info(metrics), self.folder.last_head if plan.frozen else self.folder.last
                )
                save_last_state(
                    self.run,
                    {
                        "stage": s, "stage_epoch": e + 1, "bad": bad, "seed": ctx.seed, "elapsed": self.elapsed,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "book": asdict(book),
                    },
                )  # fmt: skip
                _write_json(self.folder.metrics, book.history)
        if plan.frozen and ctx.world.main:
            self.join_heads()
        rows = [r for r in book.history if r["stage"] == s + 1]
        book.stages.append(
            asdict(
                PhaseResult(
                    index=s + 1,
                    unfreeze=plan.unfreeze,
                    epochs_run=len(rows),
                    seconds=time.perf_counter() - stage_start,
                    best_val_accuracy=max((r["val_accuracy"] for r in rows), default=0.0),
                    stopped_early=stopped,
                )
            )
        )

    def join_heads(self) -> None:
        """Turn a cached-feature stage's head-only checkpoints into full ones (the backbone is the model's)."""
        folder = self.folder
        for head, full in ((folder.best_head, folder.best), (folder.last_head, folder.last)):
            if head.is_file():
                state = self.best_weights if head == folder.best_head else self.ctx.model.state_dict()
                save_state(with_head(state, head), read_checkpoint_info(head), full)
                head.unlink()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self) -> TrainResult:
        ctx, book = self.ctx, self.book
        confusion = _confusion(ctx.data.labels, self.val_y, book.best_preds)
        result = TrainResult(
            run=self.run,
            checkpoint=self.folder.best,
            best_val_accuracy=book.best[0],
            best_epoch=book.best_epoch,
            train_seconds=self.elapsed,
            epochs=book.epoch,
            skipped=len(ctx.data.skipped),
            num_train=len(ctx.data.train_images),
            num_val=len(self.val_y),
            labels=ctx.data.labels,
            backbone=ctx.recipe.backbone,
            device=ctx.device.type,
            stages=tuple(PhaseResult(**st) for st in book.stages),
            frozen_compute=ctx.frozen.summary(),
            world_size=ctx.world.size,
            backend=ctx.world.to_dict()["backend"],
        )
        if ctx.world.main:
            _write_json(self.folder.confusion, confusion)
            summary = {**result.to_dict(), "per_class_accuracy": confusion["per_class_accuracy"]}
            _write_json(self.folder.summary, summary)
            write_training_plots(self.run)  # curves.png, confusion.png; warns instead of failing the run
        log(
            f"best val accuracy {result.best_val_accuracy:.3f} (epoch {result.best_epoch}) in {result.train_seconds:.1f}s"
        )
        return result
