"""How each kind of training stage runs, and the context every stage shares.

A frozen stage (`CachedHead`) trains the head on features computed once (plus the frozen prefix of a
later unfreezing stage, cached in the same pass); an unfreezing stage (`PartialUnfreeze`) trains the
last K stages on the cached prefix outputs, or on full forward passes when they cannot be held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from edgetl.backbones.registry import EdgeModel
from edgetl.console import log, track
from edgetl.data.imagefolder import (
    ImageData,
    centre_pixels,
    eval_tensor,
    iter_augmented,
    prefetch,
    train_transform,
)
from edgetl.device import to_device
from edgetl.trainer.distributed import World
from edgetl.trainer.frozen import (
    PROBE_IMAGES,
    FrozenCompute,
    FrozenPart,
    FrozenPath,
    PathChoice,
    PrefixCache,
    Runner,
)
from edgetl.trainer.recipe import PhasePlan, Recipe
from edgetl.trainer.schedule import set_trainable, train_mode
from edgetl_runtime.preprocess import PreprocessSpec


@dataclass(kw_only=True)
class PhaseContext:
    """What every stage needs; mutable bookkeeping lives in `Book`."""

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


def _views(ctx: PhaseContext, views: int, lo: int, hi: int) -> Iterator[tuple[int, int, torch.Tensor]]:
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
def _view_rng(ctx: PhaseContext):
    # A generator of its own, so caching neither depends on nor disturbs the training RNG (resume).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed + 1)
        yield


def frozen_pass(
    ctx: PhaseContext,
    taps: tuple[int, ...],
    val_x: torch.Tensor,
    cache: PrefixCache | None,
    *,
    keep_last: bool,
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


def next_cut(ctx: PhaseContext, plan: PhasePlan) -> int:
    """First trainable stage of the partial-unfreeze stage after `plan`; 0 when there is none."""
    stages = ctx.recipe.stages
    later = stages[next(i for i, p in enumerate(stages) if p is plan) + 1 :]
    nxt = next((p for p in later if not p.frozen), None)
    return 0 if nxt is None else max(0, len(ctx.model.stages) - nxt.unfreeze)


def plan_cache(ctx: PhaseContext, first: int) -> PrefixCache | None:
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


class CachedHead:
    """Frozen backbone: features of every image computed once, the head trains on them for free.

    Training features come from one plain view plus `cache_views` augmented views per image; each
    epoch draws one of the views per image, so the head still sees augmentation. The same pass
    stores the frozen prefix's outputs that the next partial-unfreeze stage starts from.
    """

    def __init__(self, ctx: PhaseContext, plan: PhasePlan, val_x: torch.Tensor) -> None:
        self.ctx = ctx
        set_trainable(ctx.model, 0)
        ctx.model.eval()
        n, stages = len(ctx.data.train_images), len(ctx.model.stages)
        cut = next_cut(ctx, plan)
        cache = plan_cache(ctx, cut) if 0 < cut < stages and cut not in ctx.frozen.caches else None
        taps = (cut, stages) if cache is not None else (stages,)
        self.train_features, val = frozen_pass(ctx, taps, val_x, cache, keep_last=True)
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
            loss, hits = optimise_step(ctx, head(x), y, optimizer, scheduler, scaler)
            total += loss * len(idx)
            correct += hits
        return total / self.n, correct / self.n

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        self.ctx.model.head.eval()
        # every rank trained the same head on the same features; rank 0's logits make the decisions
        return self.ctx.world.broadcast(self.ctx.model.head(self.val_features).float())


class PartialUnfreeze:
    """The last K stages train; the frozen prefix never runs again once its outputs are cached.

    BatchNorm stays in eval mode in the unfrozen stages too (`train_mode`), so the prefix output of
    a fixed view is exactly what a full forward pass would compute (up to float16 storage): only the
    last K stages run, forward and backward, on the prefix outputs of the cached views (one plain and
    `cache_views` augmented views per image, one drawn per image and epoch). Augmentation therefore
    comes from the cached views rather than a fresh crop per step. When the budget cannot hold even
    the plain view, every step augments afresh and runs the prefix without gradients.
    """

    def __init__(self, ctx: PhaseContext, plan: PhasePlan, val_x: torch.Tensor) -> None:
        self.ctx = ctx
        self.first = set_trainable(ctx.model, plan.unfreeze, layers=plan.unfreeze_layers)
        ctx.model.eval()
        self.cache = ctx.frozen.caches.pop(self.first, None)
        # Prefixes deeper than this stage's include stages it trains: stale from now on.
        ctx.frozen.caches = {k: c for k, c in ctx.frozen.caches.items() if k < self.first}
        stages = len(ctx.model.stages)
        if self.cache is None and self.first > 0:
            self.cache = plan_cache(ctx, self.first)
            if self.cache is not None:
                # The taps of the frozen stage that would have cached it: the same computation.
                _, val = frozen_pass(ctx, (self.first, stages), val_x, self.cache, keep_last=False)
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
            loss, hits = optimise_step(ctx, logits, y, optimizer, scheduler, scaler)
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


# Phase kind -> how it runs: frozen stages never touch the backbone, so they train on cached features.
PHASE_RUNNERS = {True: CachedHead, False: PartialUnfreeze}


def optimise_step(ctx: PhaseContext, logits, targets, optimizer, scheduler, scaler) -> tuple[float, int]:
    """One optimisation step; returns the batch's mean loss and its number of correct predictions."""
    loss = ctx.loss(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item(), int((logits.argmax(1) == targets).sum())
