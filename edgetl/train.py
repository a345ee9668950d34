"""Fine-tuning: frozen stages train the head on cached features, then the last K stages are unfrozen.

A run folder gets best.safetensors (best validation score), last.safetensors + last_state.pt (for
--resume), splits.json, metrics.json (per epoch), confusion.json and summary.json.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from edgetl_runtime.fileio import atomic_output, check_writable, write_text_atomic
from edgetl_runtime.preprocess import PreprocessSpec

from .backbones import EdgeModel, create_model, get_backbone
from .checkpoint import (
    BEST,
    BEST_HEAD,
    LAST,
    LAST_HEAD,
    CheckpointInfo,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    save_head,
    save_state,
    with_head,
)
from .console import log, track, warn
from .cuda import cuda_autocast_dtype, place_model, to_device
from .data import (
    ImageData,
    centre_pixels,
    eval_tensor,
    iter_augmented,
    load_imagefolder,
    prefetch,
    train_transform,
)
from .distributed import World, close_world, init_world, launched_rank
from .errors import EdgetlError
from .features import PROBE_IMAGES, FrozenCompute, FrozenPart, FrozenPath, PathChoice, PrefixCache, Runner
from .options import Device
from .plots import write_training_plots
from .recipe import Balance, Recipe, StagePlan, recipe_from_dict, resolve_recipe
from .run import RunFolder, dataset_fingerprint
from .schedule import make_optimizer, set_trainable, train_mode
from .splits import Splits

LAST_STATE = "last_state.pt"
METRICS = "metrics.json"
CONFUSION = "confusion.json"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class StageResult:
    index: int
    unfreeze: int
    epochs_run: int
    seconds: float
    best_val_accuracy: float
    stopped_early: bool


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
    stages: tuple[StageResult, ...]
    frozen_compute: dict | None = None
    world_size: int = 1  # training processes (torchrun); 1 without it
    backend: str | None = (
        None  # their torch.distributed backend: gloo (CPU) or nccl (CUDA)  # features.PathChoice: the frozen path, its features/s, the others'
    )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run"], d["checkpoint"] = str(self.run), str(self.checkpoint)
        return d


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


@dataclass
class _Context:
    """What every stage needs; mutable bookkeeping lives in `_Book`."""

    model: EdgeModel
    data: ImageData
    recipe: Recipe
    spec: PreprocessSpec
    device: torch.device
    amp: torch.dtype | None
    seed: int
    class_weights: torch.Tensor | None
    sample_weights: torch.Tensor | None
    frozen: FrozenCompute
    world: World = field(default_factory=World)

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), targets, weight=self.class_weights, label_smoothing=self.recipe.label_smoothing
        )

    def order(self, n: int) -> torch.Tensor:
        if self.sample_weights is None:
            return torch.randperm(n)
        return torch.multinomial(self.sample_weights, n, replacement=True)

    def frozen_runner(self, taps: tuple[int, ...], probe: torch.Tensor, work_images: int) -> Runner:
        """Stages [0, max(taps)) as inference on the fastest faithful path (`features.py`); outputs
        after each stage in `taps`, float32."""
        self.model.eval()
        stop = max(taps)
        part = FrozenPart(self.model.stages[:stop], taps)
        if self.device.type != "cpu":
            part.eval()

            @torch.no_grad()
            def run(x: torch.Tensor) -> list[torch.Tensor]:
                with self.autocast():
                    return [o.float() for o in part(x.to(self.device))]

            return run

        @torch.no_grad()
        def predict(h: torch.Tensor) -> torch.Tensor:
            return self.model.head(self.model.forward_features(h, stop)).argmax(1)

        if not self.world.active or self.frozen.choice is not None:
            return self.frozen.runner(part, probe, work_images, predict)
        # rank 0 measures and records the path; the others take its choice, so all compute alike
        paths = list(FrozenPath)
        run = self.frozen.runner(part, probe, work_images, predict) if self.world.main else None
        index = paths.index(self.frozen.choice.path) if run is not None else 0
        index = int(self.world.broadcast(torch.tensor([index]))[0])
        if run is None:
            self.frozen.choice = PathChoice(paths[index], 0.0, reused=True)
            run = self.frozen.runner(part, probe, work_images, predict)
        return run

    @torch.no_grad()
    def features(self, run: Runner, x: torch.Tensor) -> list[torch.Tensor]:
        """`run` over `x` in batches, one tensor per tap."""
        size = self.recipe.batch_size * 2
        # an empty share (more ranks than images) still yields (0, ...) tensors
        outs = [run(x[i : i + size]) for i in range(0, max(len(x), 1), size)]
        return [torch.cat(o) for o in zip(*outs, strict=True)]

    def probe(self) -> torch.Tensor:
        """The plain view of the first training images: the batch paths are timed and checked on."""
        return eval_tensor(centre_pixels(self.data.train_images[:PROBE_IMAGES], self.spec), self.spec)

    def prefix_shape(self, stop: int) -> tuple[int, ...]:
        with torch.no_grad():
            x = torch.zeros(1, 3, self.spec.crop, self.spec.crop, device=self.device)
            return tuple(self.model.forward_features(x, 0, stop).shape[1:])


def _views(ctx: _Context, views: int, lo: int, hi: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(view, first image, batch) for the plain view and then augmented views (`views` in all) of
    training images [lo, hi). Call under `_view_rng`: the same views every time, whatever the training RNG."""
    images, size = ctx.data.train_images, ctx.recipe.batch_size * 2
    augment = train_transform(ctx.spec, ctx.recipe.scale, ctx.recipe.hflip)
    for v in range(views):
        for i in range(lo, hi, size):
            chunk = images[i : min(i + size, hi)]
            if v == 0:
                yield v, i, eval_tensor(centre_pixels(chunk, ctx.spec), ctx.spec)
            else:
                yield v, i, torch.stack([augment(im) for im in chunk])


@contextlib.contextmanager
def _view_rng(ctx: _Context):
    # A generator of its own, so caching neither depends on nor disturbs the training RNG (resume).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed + 1)
        yield


def _frozen_pass(
    ctx: _Context, taps: tuple[int, ...], val_x: torch.Tensor, cache: PrefixCache | None, *, keep_last: bool
):
    """Every cached view through stages [0, max(taps)) once: the first tap's outputs go to `cache`,
    the last tap's are returned as (views, images, features) when `keep_last`; plus the validation
    images' outputs at every tap."""
    n, views, world = len(ctx.data.train_images), 1 + ctx.recipe.cache_views, ctx.world
    want = views if keep_last else cache.views
    run = ctx.frozen_runner(taps, ctx.probe(), n * want + len(val_x))
    # under torchrun each rank computes its share of the images; the outputs are gathered once
    lo, hi = world.bounds(n)
    last, steps = [], -(-(hi - lo) // (ctx.recipe.batch_size * 2)) * want
    with _view_rng(ctx):
        for v, i, x in track(prefetch(_views(ctx, want, lo, hi)), "caching features", total=steps):
            outs = run(x)
            if cache is not None and v < cache.views:
                cache.write(v, i, outs[0].cpu())
            if keep_last:
                last.append(outs[-1])
    if cache is not None and world.active:
        share = torch.from_numpy(cache.data[: cache.views, lo:hi].copy())
        cache.data[: cache.views] = world.gather_rows(share, n, dim=1).numpy()
    train = world.gather_rows(torch.cat(last).reshape(views, hi - lo, -1), n, dim=1) if keep_last else None
    vlo, vhi = world.bounds(len(val_x))
    val = [world.gather_rows(t, len(val_x)) for t in ctx.features(run, val_x[vlo:vhi])]
    return train, val


def _next_cut(ctx: _Context, plan: StagePlan) -> int:
    """First trainable stage of the partial-unfreeze stage after `plan`; 0 when there is none."""
    stages = ctx.recipe.stages
    later = stages[next(i for i, p in enumerate(stages) if p is plan) + 1 :]
    nxt = next((p for p in later if not p.frozen), None)
    return 0 if nxt is None else max(0, len(ctx.model.stages) - nxt.unfreeze)


def _plan_cache(ctx: _Context, first: int) -> PrefixCache | None:
    n, views = len(ctx.data.train_images), 1 + ctx.recipe.cache_views
    cache = PrefixCache.plan(views, n, ctx.prefix_shape(first), ctx.frozen.run)
    if ctx.world.active:
        # budgets are measured per process: all ranks keep the views the tightest one can hold,
        # so they draw the same random numbers and stay in step
        fit = int(ctx.world.min(0 if cache is None else cache.views))
        cache = None if fit == 0 else cache
        if cache is not None:
            cache.views = fit
    if cache is None:
        log(f"prefix cache: not even the plain view of {n} images fits the memory and disk budget; "
            "partial unfreeze runs the frozen prefix every step")  # fmt: skip
    elif cache.on_disk:
        log(
            f"prefix cache: {cache.views} of {views} views, {cache.nbytes / 2**20:.0f} MiB on disk (memory budget)"
        )
    return cache


class _CachedHead:
    """Frozen backbone: features of every image computed once, the head trains on them for free.

    Training features come from one plain view plus `cache_views` augmented views per image; each
    epoch draws one of the views per image, so the head still sees augmentation. The same pass
    stores the frozen prefix's outputs that the next partial-unfreeze stage starts from.
    """

    def __init__(self, ctx: _Context, plan: StagePlan, val_x: torch.Tensor) -> None:
        self.ctx = ctx
        set_trainable(ctx.model, 0)
        ctx.model.eval()
        n, stages = len(ctx.data.train_images), len(ctx.model.stages)
        cut = _next_cut(ctx, plan)
        cache = _plan_cache(ctx, cut) if 0 < cut < stages and cut not in ctx.frozen.caches else None
        taps = (cut, stages) if cache is not None else (stages,)
        self.train_features, val = _frozen_pass(ctx, taps, val_x, cache, keep_last=True)
        self.val_features = val[-1]
        if cache is not None:
            cache.val = val[0]
            ctx.frozen.caches[cut] = cache
        self.targets = ctx.data.train_targets.to(ctx.device)
        self.n = n
        self.steps_per_epoch = -(-n // ctx.recipe.batch_size)

    def train_epoch(self, optimizer, scheduler, scaler) -> tuple[float, float]:
        ctx, head = self.ctx, self.ctx.model.head
        head.train()
        order = ctx.order(self.n)
        view = torch.randint(len(self.train_features), (self.n,))
        total, correct = 0.0, 0
        for start in range(0, self.n, ctx.recipe.batch_size):
            idx = order[start : start + ctx.recipe.batch_size]
            x = self.train_features[view[idx], idx]
            y = self.targets[idx.to(ctx.device)]
            loss, hits = _step(ctx, head(x), y, optimizer, scheduler, scaler)
            total += loss * len(idx)
            correct += hits
        return total / self.n, correct / self.n

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        self.ctx.model.head.eval()
        # every rank trained the same head on the same features; rank 0's logits make the decisions
        return self.ctx.world.broadcast(self.ctx.model.head(self.val_features).float())


class _PartialUnfreeze:
    """The last K stages train; the frozen prefix never runs again once its outputs are cached.

    BatchNorm stays in eval mode in the unfrozen stages too (`train_mode`), so the prefix output of
    a fixed view is exactly what a full forward pass would compute (up to float16 storage): only the
    last K stages run, forward and backward, on the prefix outputs of the cached views (one plain and
    `cache_views` augmented views per image, one drawn per image and epoch). Augmentation therefore
    comes from the cached views rather than a fresh crop per step. When the budget cannot hold even
    the plain view, every step augments afresh and runs the prefix without gradients.
    """

    def __init__(self, ctx: _Context, plan: StagePlan, val_x: torch.Tensor) -> None:
        self.ctx = ctx
        self.first = set_trainable(ctx.model, plan.unfreeze, layers=plan.unfreeze_layers)
        ctx.model.eval()
        self.cache = ctx.frozen.caches.pop(self.first, None)
        # Prefixes deeper than this stage's include stages it trains: stale from now on.
        ctx.frozen.caches = {k: c for k, c in ctx.frozen.caches.items() if k < self.first}
        stages = len(ctx.model.stages)
        if self.cache is None and self.first > 0:
            self.cache = _plan_cache(ctx, self.first)
            if self.cache is not None:
                # The taps of the frozen stage that would have cached it: the same computation.
                _, val = _frozen_pass(ctx, (self.first, stages), val_x, self.cache, keep_last=False)
                self.cache.val = val[0]
        if self.cache is not None:
            self.val_prefix = self.cache.val
        else:
            self.prefix = ctx.frozen_runner((self.first,), ctx.probe(), len(val_x)) if self.first else None
            self.val_prefix = ctx.features(self.prefix, val_x)[0] if self.first else val_x
            self.transform = train_transform(ctx.spec, ctx.recipe.scale, ctx.recipe.hflip)
        self.targets = ctx.data.train_targets
        self.n = len(self.targets)
        self.tail = ctx.world.wrap(_Tail(ctx.model, self.first))
        self.batch = ctx.world.local_batch(ctx.recipe.batch_size)
        self.steps_per_epoch = -(-len(ctx.world.shard_order(torch.arange(self.n))) // self.batch)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(prefix outputs, image indices) per step: this rank's share of the epoch order."""
        ctx, order = self.ctx, self.ctx.order(self.n)
        if self.cache is not None:
            view = torch.randint(self.cache.views, (self.n,))
            order = ctx.world.shard_order(order)
            for start in range(0, len(order), self.batch):
                idx = order[start : start + self.batch]
                yield self.cache.read(view[idx], idx), idx
            return
        order = ctx.world.shard_order(order)
        batches = iter_augmented(ctx.data.train_images, order, self.transform, self.batch)
        for x, idx in batches:
            yield (self.prefix(x)[0] if self.prefix else x), idx

    def train_epoch(self, optimizer, scheduler, scaler) -> tuple[float, float]:
        ctx, model = self.ctx, self.ctx.model
        train_mode(model, self.first)
        total, correct, seen = 0.0, 0, 0
        for h, idx in track(self._batches(), "fine-tuning", total=self.steps_per_epoch):
            h, y = to_device(h, ctx.device), self.targets[idx].to(ctx.device)
            with ctx.autocast():
                logits = self.tail(h)
            loss, hits = _step(ctx, logits, y, optimizer, scheduler, scaler)
            total += loss * len(idx)
            correct += hits
            seen += len(idx)
        total, correct, seen = ctx.world.sum([total, correct, seen])
        return total / seen, correct / seen

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        ctx = self.ctx
        ctx.model.eval()
        outs = []
        lo, hi = ctx.world.bounds(len(self.val_prefix))
        for i in range(lo, max(hi, lo + 1), ctx.recipe.batch_size * 2):
            h = self.val_prefix[i : min(i + ctx.recipe.batch_size * 2, hi)].to(ctx.device)
            with ctx.autocast():
                outs.append(ctx.model.head(ctx.model.forward_features(h, self.first)).float())
        return ctx.world.gather_rows(torch.cat(outs), len(self.val_prefix))


class _Tail(torch.nn.Module):
    """The trainable part, stages [first, ...) and the head, as one module for DistributedDataParallel."""

    def __init__(self, model: EdgeModel, first: int) -> None:
        super().__init__()
        self.model, self.first = model, first

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.forward_features(h, self.first))


# Stage kind -> how it runs: frozen stages never touch the backbone, so they train on cached features.
_STAGE_RUNNERS = {True: _CachedHead, False: _PartialUnfreeze}


def _step(ctx: _Context, logits, targets, optimizer, scheduler, scaler) -> tuple[float, int]:
    """One optimisation step; returns the batch's mean loss and its number of correct predictions."""
    loss = ctx.loss(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item(), int((logits.argmax(1) == targets).sum())


def _balance_weights(targets: torch.Tensor, n_classes: int, policy: Balance):
    """(loss class weights, per-sample sampling weights); at most one of them is set."""
    counts = torch.bincount(targets, minlength=n_classes).float()
    imbalanced = counts.max() / counts.min() >= 1.5
    if policy is Balance.SAMPLER:
        return None, (1.0 / counts)[targets]
    if policy is Balance.LOSS or (policy is Balance.AUTO and imbalanced):
        return counts.sum() / (n_classes * counts), None
    return None, None


def _score(accuracy: float, loss: float) -> tuple[float, float]:
    """Higher is better: accuracy first, validation loss breaks ties (small sets often tie on accuracy)."""
    return (accuracy, -loss)


def _save_last_state(run: Path, state: dict) -> None:
    """Optimizer, scheduler, RNG and bookkeeping of the last epoch, beside last.safetensors (--resume)."""
    with atomic_output(run / LAST_STATE) as tmp:
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


def _resume_state(run: Path) -> tuple[Recipe, dict]:
    if not (run / LAST).is_file() or not (run / LAST_STATE).is_file():
        raise EdgetlError(f"--resume: {run} has no {LAST} and {LAST_STATE}; start without --resume")
    info = read_checkpoint_info(run / LAST)
    state = torch.load(run / LAST_STATE, map_location="cpu", weights_only=True)
    return recipe_from_dict(info.recipe, source=str(run / LAST)), state


@dataclass
class _Book:
    """Run bookkeeping that --resume restores: epochs done, best score, history, finished stages."""

    epoch: int = 0
    best: list | None = None  # _score of the best epoch
    best_epoch: int = 0
    best_preds: list = field(default_factory=list)
    history: list = field(default_factory=list)
    stages: list = field(default_factory=list)

    def improves(self, score: tuple[float, float]) -> bool:
        return self.best is None or score > tuple(self.best)


class _Session:
    """One training run in a run folder: stages in order, with checkpoints and metrics per epoch."""

    def __init__(
        self, ctx: _Context, run: Path, val_x: torch.Tensor, book: _Book, elapsed: float, fingerprint: str
    ) -> None:
        self.ctx, self.run, self.val_x, self.book = ctx, run, val_x, book
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

    def run_stage(self, s: int, resume: dict | None) -> None:
        ctx, book, plan = self.ctx, self.book, self.ctx.recipe.stages[s]
        stage_start = time.perf_counter()
        if resume is None and book.best is not None:
            # Each stage starts from the best weights so far, not from an over-trained last epoch.
            best = self.best_weights or load_checkpoint(self.run / BEST)[0].state_dict()
            ctx.model.load_state_dict(best)
        runner = _STAGE_RUNNERS[plan.frozen](ctx, plan, self.val_x)
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
            save_checkpoint(ctx.model, self.info({}), self.run / LAST)
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
                    save(ctx.model, self.info(metrics), self.run / (BEST_HEAD if plan.frozen else BEST))
            # Frozen epochs take milliseconds: log only the ones that matter.
            if not plan.frozen or improved or e + 1 == plan.epochs:
                log(
                    f"stage {s + 1}/{len(ctx.recipe.stages)} epoch {e + 1}/{plan.epochs}: "
                    f"train loss {train_loss:.3f} acc {train_acc:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f}"
                    + (" *" if improved else "")
                )
            if ctx.world.main:
                save(ctx.model, self.info(metrics), self.run / (LAST_HEAD if plan.frozen else LAST))
                _save_last_state(
                    self.run,
                    {
                        "stage": s, "stage_epoch": e + 1, "bad": bad, "seed": ctx.seed, "elapsed": self.elapsed,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "book": asdict(book),
                    },
                )  # fmt: skip
                _write_json(self.run / METRICS, book.history)
        if plan.frozen and ctx.world.main:
            self.join_heads()
        rows = [r for r in book.history if r["stage"] == s + 1]
        book.stages.append(
            asdict(
                StageResult(
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
        for head, full in ((BEST_HEAD, BEST), (LAST_HEAD, LAST)):
            if (self.run / head).is_file():
                state = self.best_weights if head == BEST_HEAD else self.ctx.model.state_dict()
                save_state(
                    with_head(state, self.run / head), read_checkpoint_info(self.run / head), self.run / full
                )
                (self.run / head).unlink()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self) -> TrainResult:
        ctx, book = self.ctx, self.book
        confusion = _confusion(ctx.data.labels, self.val_y, book.best_preds)
        result = TrainResult(
            run=self.run,
            checkpoint=self.run / BEST,
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
            stages=tuple(StageResult(**st) for st in book.stages),
            frozen_compute=ctx.frozen.summary(),
            world_size=ctx.world.size,
            backend=ctx.world.to_dict()["backend"],
        )
        if ctx.world.main:
            _write_json(self.run / CONFUSION, confusion)
            summary = {**result.to_dict(), "per_class_accuracy": confusion["per_class_accuracy"]}
            _write_json(self.run / SUMMARY, summary)
            write_training_plots(self.run)  # curves.png, confusion.png; warns instead of failing the run
        log(
            f"best val accuracy {result.best_val_accuracy:.3f} (epoch {result.best_epoch}) in {result.train_seconds:.1f}s"
        )
        return result


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
    if run.holds_run() and not (resume or overwrite):
        raise EdgetlError(
            f"--out {run.root}: holds a run already; pass --resume to continue it, --overwrite to replace "
            "it (removes its checkpoints, models and records), or choose another --out"
        )


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
    overrides = {
        "weights": weights, "frozen_epochs": frozen_epochs, "epochs": epochs, "unfreeze": unfreeze, "lr": lr,
        "lr_backbone": lr_backbone, "lr_decay": lr_decay, "batch_size": batch_size,
        "label_smoothing": label_smoothing, "patience": patience, "balance": balance, "hflip": hflip,
        "image_size": image_size, "val_fraction": val_fraction, "cache_views": cache_views,
    }  # fmt: skip
    run = RunFolder(Path(out))
    if launched_rank() != 0:
        # under torchrun, rank 0 checks, locks and writes the run folder; the others only read it
        try:
            return _train_locked(
                data, run, started, backbone, recipe, device, seed, resume, overwrite, overrides
            )
        finally:
            close_world()
    _check_fresh(run, resume, overwrite)
    created = not run.root.exists()
    try:
        check_writable(run.root, "--out", folder=True)
        with run.lock("train"):
            return _train_locked(
                data, run, started, backbone, recipe, device, seed, resume, overwrite, overrides
            )
    finally:
        close_world()
        if created:
            run.discard_if_empty()


def _train_locked(
    data, run: RunFolder, started, backbone, recipe, device, seed, resume, overwrite, overrides
):
    main = launched_rank() == 0
    if main:
        _check_fresh(run, resume, overwrite)  # again, now that no other writer can change the folder
    if resume:
        if any(v is not None for v in overrides.values()) or recipe is not None:
            warn("--resume continues with the run's saved recipe; other recipe options are ignored")
        recipe, state = _resume_state(run.root)
        seed = int(state["seed"])
    else:
        recipe, state = resolve_recipe(recipe, backbone).with_overrides(**overrides), None
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
        if (run.root / LAST_HEAD).is_file():  # interrupted in a cached-feature stage
            model.load_state_dict(with_head(model.state_dict(), run.root / LAST_HEAD))
    world.barrier()  # every process has read the old run before rank 0 changes the folder
    if main:
        check_writable(run.root, "--out", folder=True)
        if overwrite:
            removed = run.clear()
            if removed:
                log(f"--overwrite: removed the old run's {', '.join(removed)}")
        if state is None:
            splits.save(run.root)
    place_model(model, dev)
    class_weights, sample_weights = _balance_weights(images.train_targets, len(images.labels), recipe.balance)
    if class_weights is not None:
        class_weights = class_weights.to(dev)
    frozen = FrozenCompute(run.root, reuse=state is not None)
    ctx = _Context(model, images, recipe, spec, dev, amp, seed, class_weights, sample_weights, frozen, world)
    book = _Book(**state["book"]) if state else _Book()
    elapsed = state["elapsed"] + time.perf_counter() - started if state else time.perf_counter() - started
    session = _Session(ctx, run.root, eval_tensor(images.val_pixels, spec), book, elapsed, splits.fingerprint)
    if state is not None and (run.root / BEST_HEAD).is_file():
        # the interrupted stage's best so far: its backbone is the stage's, which the model holds
        session.best_weights = with_head(model.state_dict(), run.root / BEST_HEAD)
    for s in range(state["stage"] if state else 0, len(recipe.stages)):
        session.run_stage(s, state if state and s == state["stage"] else None)
    return session.finish()
