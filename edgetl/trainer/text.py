"""Fine-tuning a text encoder with the image schedule: the head on cached pooled outputs, then the
top K transformer layers on cached lower-layer states.

Both stages compute what stays frozen once: stage 1 the pooled outputs of the whole encoder, a
partial-unfreeze stage the hidden states entering its first trainable layer. Batches are bucketed
by length (each padded to its own longest text), so padding costs little. The run folder gets the
records an image run gets: best/last.safetensors, splits.json, metrics.json, confusion.json,
summary.json and the plots.

Under torchrun (`--devices N`, gloo) each bucket's texts are shared out over the ranks (`share`):
every rank caches, trains and evaluates its share of every bucket, the gradients are summed and the
validation logits joined, so each step is the one-process step on the same bucket and every rank
takes the same decisions; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgetl.backbones.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from edgetl.backbones.text import TextClassifier, create_text_model
from edgetl.console import log, warn
from edgetl.data.texts import TextData, load_texts
from edgetl.errors import EdgetlError
from edgetl.reporting.plots import write_training_plots
from edgetl.runfolder.folder import BEST, CONFUSION, LAST, METRICS, SUMMARY, TEXT_STATE, RunFolder
from edgetl.trainer.distributed import SINGLE, World
from edgetl.trainer.recipe import Balance, Recipe
from edgetl.trainer.session import PhaseResult, TrainResult, _confusion, _score
from edgetl_runtime.fileio import write_text_atomic
from edgetl_runtime.modality import Modality
from edgetl_runtime.textinput import TextSpec, encode_texts

EVAL_BATCH = 64


@dataclass(frozen=True)
class Tokens:
    """Tokenized texts, unpadded; batches are padded to their own longest."""

    ids: tuple[np.ndarray, ...]
    truncated: int

    @classmethod
    def of(cls, texts, spec: TextSpec) -> Tokens:
        out, truncated = [], 0
        for start in range(0, len(texts), 256):
            enc = encode_texts(texts[start : start + 256], spec)
            truncated += enc.truncated
            out += [row[m.astype(bool)] for row, m in zip(enc.ids, enc.mask, strict=True)]
        return cls(tuple(out), truncated)

    def batch(self, index, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(self.ids[i]) for i in index)
        ids = torch.full((len(index), length), pad, dtype=torch.long)
        mask = torch.zeros((len(index), length), dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, : len(self.ids[i])] = torch.from_numpy(self.ids[i])
            mask[row, : len(self.ids[i])] = 1
        return ids, mask


def length_buckets(lengths, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Indices in batches of similar length; with `rng` the texts of equal length and the batch
    order are shuffled (training), without it the order is fixed (evaluation, caching)."""
    lengths = np.asarray(lengths)
    keys = lengths + (rng.random(len(lengths)) if rng is not None else 0)
    order = np.argsort(keys, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 -> (B, 1, 1, L) 0/-inf-like, the form BERT's eager attention adds to its scores."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def pool(states: torch.Tensor, mask: torch.Tensor, model: TextClassifier) -> torch.Tensor:
    if model.pooling.value == "cls":
        return states[:, 0]
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def run_layers(model: TextClassifier, states: torch.Tensor, mask: torch.Tensor, start: int, stop: int):
    """The hidden states entering layer `stop` from those entering layer `start`."""
    extended = additive_mask(mask, states.dtype)
    for layer in model.layers[start:stop]:
        out = layer(states, extended)
        states = out[0] if isinstance(out, tuple) else out
    return states


def run_top(model: TextClassifier, states: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
    """Logits from the hidden states entering layer `first` (the layers below it are cached)."""
    return model.head(pool(run_layers(model, states, mask, first, len(model.layers)), mask, model))


def share(index, world: World):
    """A rank's texts of a length bucket: every world-th one (all of them in a single process)."""
    return index[world.rank :: world.size]


@torch.no_grad()
def cache_states(
    model: TextClassifier,
    tokens: Tokens,
    first: int,
    pad: int,
    world: World = SINGLE,
    batch: int = EVAL_BATCH,
    rng: np.random.Generator | None = None,
) -> list:
    """(index, states entering layer `first`, mask) per length bucket; only the embeddings and the
    layers below `first` run. `index` is the whole bucket, the states and mask this rank's `share`
    of it (None when it has none): a rank trains on its share of every bucket, so it never needs the
    other shares' states, and caching them is split over the ranks with nothing to exchange.
    Training buckets are drawn with `rng`: texts of equal length (all of them, when every text is
    truncated) would otherwise fill buckets in file order, one class each."""
    model.eval()
    cached = []
    for index in length_buckets([len(t) for t in tokens.ids], batch, rng):
        states = mask = None
        if len(share(index, world)):
            ids, mask = tokens.batch(share(index, world), pad)
            states = run_layers(model, model.encoder.embeddings(input_ids=ids), mask, 0, first)
        cached.append((torch.from_numpy(index), states, mask))
    return cached


@torch.no_grad()
def advance_cache(model: TextClassifier, cached: list, start: int, first: int) -> list:
    """A cache of states entering layer `start` moved up to layer `first`, with the weights those
    layers have now; `first` = all layers: pooled outputs."""
    if first == start < len(model.layers):
        return cached
    model.eval()
    moved = []
    for index, states, mask in cached:
        if states is not None:
            states = run_layers(model, states, mask, start, first)
            states = pool(states, mask, model) if first == len(model.layers) else states
        moved.append((index, states, mask))
    return moved


def _trainable(model: TextClassifier, first: int, plan, decay: float) -> list[dict]:
    """The head at the stage's lr; unfrozen layer i from the top at lr_backbone * decay**i."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr": plan.lr}]
    top = len(model.layers) - 1
    for i in range(first, len(model.layers)):
        params = list(model.layers[i].parameters())
        groups.append({"params": params, "lr": plan.lr_backbone * decay ** (top - i)})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return groups


def _class_weights(targets: np.ndarray, n: int, policy: Balance) -> torch.Tensor | None:
    counts = np.bincount(targets, minlength=n).astype(np.float32)
    if policy is Balance.LOSS or (policy is Balance.AUTO and counts.max() / counts.min() >= 1.5):
        return torch.from_numpy(counts.sum() / (n * counts))
    return None


@torch.no_grad()
def _evaluate(model, cached, targets: torch.Tensor, first: int, frozen: bool, world: World):
    model.eval()
    logits = torch.zeros(len(targets), model.head[-1].out_features)
    for index, states, mask in cached:
        if states is not None:
            out = model.head(states) if frozen else run_top(model, states, mask, first)
            logits[share(index, world)] = out
    # each row is one rank's and zero on the others: the sum is the whole, bit for bit the same everywhere
    logits = world.sum_tensor(logits)
    loss = F.cross_entropy(logits, targets).item()
    preds = logits.argmax(1)
    return float((preds == targets).float().mean()), loss, preds


class TextSession:
    def __init__(
        self, model, data: TextData, recipe: Recipe, spec: TextSpec, run: Path, seed: int, files, world: World
    ) -> None:
        self.model, self.data, self.recipe, self.spec, self.run = model, data, recipe, spec, run
        self.seed, self.architecture, self.world = seed, files.config, world
        self.pad = 0
        self.train_tokens = Tokens.of(data.train_texts, spec)
        self.val_tokens = Tokens.of(data.val_texts, spec)
        self.truncated = self.train_tokens.truncated + self.val_tokens.truncated
        log(
            f"tokenized {len(data.train_texts)} train / {len(data.val_texts)} val texts at max_length {spec.max_length}: "
            f"{self.truncated} truncated"
        )
        self.history: list[dict] = []
        self.best: tuple = (-1.0, -math.inf)
        self.best_epoch, self.best_preds, self.stages = 0, [], []
        # kept in memory because only rank 0 writes best.safetensors (maybe on another machine)
        self.best_weights: dict | None = None
        self.cache: tuple[int, list, list] | None = None  # (layer, train states, val states) entering it

    def _first(self, plan) -> int:
        """The lowest layer a stage trains (all layers: the head alone)."""
        depth = len(self.model.layers)
        return depth - min(plan.unfreeze or plan.unfreeze_layers, depth)

    def info(self, epoch: int, metrics: dict) -> CheckpointInfo:
        return CheckpointInfo(
            backbone=self.recipe.backbone, labels=self.data.labels, preprocess=self.spec, epoch=epoch,
            recipe=self.recipe.to_dict(), metrics=metrics, data_fingerprint=self.data.splits.fingerprint,
            modality=Modality.TEXT, architecture=self.architecture,
        )  # fmt: skip

    def run_stage(self, s: int, start_epoch: int = 0) -> None:
        plan, model = self.recipe.stages[s], self.model
        first = self._first(plan)
        frozen = first == len(model.layers)
        t0 = time.perf_counter()
        if self.cache is None:
            # once, below every stage still to run: the layers under it never train
            lowest = min(self._first(p) for p in self.recipe.stages[s:])
            # training buckets are the steps' batches, drawn alike on every rank
            rng = np.random.default_rng(self.seed)
            train = cache_states(
                model, self.train_tokens, lowest, self.pad, self.world, self.recipe.batch_size, rng
            )
            self.cache = (lowest, train, cache_states(model, self.val_tokens, lowest, self.pad, self.world))
        lowest, train_base, val_base = self.cache
        train_cache = advance_cache(model, train_base, lowest, first)
        val_cache = advance_cache(model, val_base, lowest, first)
        log(
            f"stage {s + 1}: cached {'pooled outputs' if frozen else f'states entering layer {first + 1}'} in {time.perf_counter() - t0:.1f}s"
        )
        groups = _trainable(model, first, plan, self.recipe.lr_decay)
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.recipe.weight_decay)
        steps = plan.epochs * len(train_cache)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))
        )
        targets = torch.from_numpy(self.data.train_targets)
        val_y = torch.from_numpy(self.data.val_targets)
        weights = _class_weights(self.data.train_targets, len(self.data.labels), self.recipe.balance)
        rng = np.random.default_rng(self.seed + s)
        bad, stopped, total = 0, False, len(targets)
        for e in range(start_epoch, plan.epochs):
            model.train()
            correct = loss_sum = 0.0
            for index, states, mask in (train_cache[i] for i in rng.permutation(len(train_cache))):
                optimizer.zero_grad()
                if states is not None:
                    y = targets[share(index, self.world)]
                    logits = model.head(states) if frozen else run_top(model, states, mask, first)
                    # this rank's summed loss over the whole bucket's weight: the ranks' gradients add up
                    # to the one-process mean's, however unevenly the bucket splits (DDP's average would not)
                    norm = weights[targets[index]].sum() if weights is not None else len(index)
                    loss = F.cross_entropy(logits, y, weight=weights, label_smoothing=self.recipe.label_smoothing,
                                           reduction="sum") / norm  # fmt: skip
                    loss.backward()
                    loss_sum += loss.item() * len(index)
                    correct += int((logits.argmax(1) == y).sum())
                self.world.sum_grads(params)
                optimizer.step()
                scheduler.step()
            loss_sum, correct = self.world.sum([loss_sum, correct])
            val_acc, val_loss, preds = _evaluate(model, val_cache, val_y, first, frozen, self.world)
            self.history.append({
                "epoch": len(self.history) + 1, "stage": s + 1, "unfreeze": plan.unfreeze,
                "train_loss": loss_sum / total, "train_accuracy": correct / total, "val_loss": val_loss,
                "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
            })  # fmt: skip
            metrics = {"val_accuracy": val_acc, "val_loss": val_loss}
            improved = _score(val_acc, val_loss) > self.best
            if improved:
                self.best, self.best_epoch, self.best_preds = (
                    _score(val_acc, val_loss),
                    len(self.history),
                    preds.tolist(),
                )
                self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if self.world.main and not frozen:
                    save_checkpoint(model, self.info(len(self.history), metrics), self.run / BEST)
            bad = 0 if improved else bad + 1
            if not frozen or improved or e + 1 == plan.epochs:
                log(
                    f"stage {s + 1}/{len(self.recipe.stages)} epoch {e + 1}/{plan.epochs}: train loss {loss_sum / total:.3f} "
                    f"acc {correct / total:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f}"
                    + (" *" if improved else "")
                )
            # a head-only epoch takes milliseconds: writing the whole model after each would cost more
            # than redoing the stage on --resume, so the frozen stage writes its checkpoints once, below
            if self.world.main and not frozen:
                save_checkpoint(model, self.info(len(self.history), metrics), self.run / LAST)
                self.save_state(s, e + 1)
            if bad >= self.recipe.patience and e + 1 < plan.epochs:
                stopped = True
                log(f"stage {s + 1}: no better validation score for {bad} epochs; stopping early")
                break
        rows = [r for r in self.history if r["stage"] == s + 1]
        self.stages.append(asdict(PhaseResult(
            index=s + 1, unfreeze=plan.unfreeze, epochs_run=len(rows), seconds=time.perf_counter() - t0,
            best_val_accuracy=max((r["val_accuracy"] for r in rows), default=0.0), stopped_early=stopped,
        )))  # fmt: skip
        # the next stage starts from the best weights so far, as for images (on disk only when resumed
        # after them: best.safetensors has not changed since this process started)
        model.load_state_dict(self.best_weights or load_checkpoint(self.run / BEST)[0].state_dict())
        if self.world.main:
            if frozen and self.best_epoch in {r["epoch"] for r in rows}:
                best = {"val_accuracy": self.best[0], "val_loss": -self.best[1]}
                save_checkpoint(model, self.info(self.best_epoch, best), self.run / BEST)
            save_checkpoint(model, self.info(len(self.history), {}), self.run / LAST)
            self.save_state(s + 1, 0)  # this stage is done: --resume starts the next one

    def save_state(self, stage: int, epoch: int) -> None:
        state = {"stage": stage, "stage_epoch": epoch, "seed": self.seed, "history": self.history, "best": list(self.best),
                 "best_epoch": self.best_epoch, "best_preds": self.best_preds, "stages": self.stages}  # fmt: skip
        write_text_atomic(self.run / TEXT_STATE, json.dumps(state))
        write_text_atomic(self.run / METRICS, json.dumps(self.history, indent=1))

    def restore(self, state: dict) -> None:
        self.history, self.best = state["history"], tuple(state["best"])
        self.best_epoch, self.best_preds, self.stages = (
            state["best_epoch"],
            state["best_preds"],
            state["stages"],
        )

    def finish(self, seconds: float, device: str) -> TrainResult:
        labels = self.data.labels
        confusion = _confusion(labels, torch.from_numpy(self.data.val_targets), self.best_preds)
        result = TrainResult(
            run=self.run, checkpoint=self.run / BEST, best_val_accuracy=self.best[0], best_epoch=self.best_epoch,
            train_seconds=seconds, epochs=len(self.history), skipped=self.data.splits.skipped,
            num_train=len(self.data.train_texts), num_val=len(self.data.val_texts), labels=labels,
            backbone=self.recipe.backbone, device=device, stages=tuple(PhaseResult(**st) for st in self.stages),
            frozen_compute={"modality": "text", "truncated": self.truncated, "max_length": self.spec.max_length,
                            "data": self.data.stats.to_dict()},
            world_size=self.world.size, backend=self.world.to_dict()["backend"],
        )  # fmt: skip
        if self.world.main:
            write_text_atomic(self.run / CONFUSION, json.dumps(confusion, indent=1))
            summary = {**result.to_dict(), "per_class_accuracy": confusion["per_class_accuracy"]}
            write_text_atomic(self.run / SUMMARY, json.dumps(summary, indent=1))
            write_training_plots(self.run)
        log(f"best val accuracy {result.best_val_accuracy:.3f} (epoch {result.best_epoch}) in {seconds:.1f}s")
        return result


def train_text(
    data, run: RunFolder, recipe: Recipe, world: World, *, seed: int, resume: bool, overwrite: bool,
    started: float,
) -> TrainResult:  # fmt: skip
    """The text half of `edgetl train` (called with the run folder locked and checked by rank 0)."""
    torch.manual_seed(seed)
    texts = load_texts(data, recipe.val_fraction, seed)
    log(
        f"data: {len(texts.labels)} classes, {len(texts.train_texts)} train / {len(texts.val_texts)} val texts"
    )
    state = None
    if resume:
        if not (run.root / TEXT_STATE).is_file():
            raise EdgetlError(f"--resume: {run.root} has no {TEXT_STATE}; start over with --overwrite")
        state = json.loads((run.root / TEXT_STATE).read_text())
        if run.load_splits().fingerprint != texts.splits.fingerprint:
            raise EdgetlError(
                f"--resume: --data differs from the data {run.root} was trained on; resume with that --data"
            )
        model, info = load_checkpoint(run.last)
        from edgetl.backbones.text import EncoderFiles

        files = EncoderFiles(info.architecture, None, info.preprocess.tokenizer)
    else:
        model, files = create_text_model(
            recipe.backbone, len(texts.labels), weights=recipe.weights, dropout=recipe.dropout
        )
    world.barrier()  # every process has read the old run before rank 0 changes the folder
    if world.main:
        run.prepare(texts.splits, overwrite=overwrite, resuming=state is not None)
    spec = TextSpec(files.tokenizer, recipe.max_length, model.pooling)
    session = TextSession(model, texts, recipe, spec, run.root, seed, files, world)
    first_stage, first_epoch = 0, 0
    if state is not None:
        session.restore(state)
        first_stage, first_epoch = state["stage"], state["stage_epoch"]
    for s in range(first_stage, len(recipe.stages)):
        session.run_stage(s, first_epoch if s == first_stage else 0)
    if not session.history:
        warn("nothing left to train: the run had finished")
    return session.finish(time.perf_counter() - started, "cpu")
