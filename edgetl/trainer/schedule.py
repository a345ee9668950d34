"""Per-stage learning rates: discriminative groups (one per unfrozen stage), the optimiser, warmup +
cosine (or constant), and which parameters a stage trains (by stages or by a count of layers)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgetl.backbones.registry import EdgeModel
from edgetl.trainer.recipe import LrSchedule, Optimizer, PhasePlan, Recipe

# schedule -> the multiplier the cosine decays to; 1.0 keeps the stage's rates after warmup
_LR_FLOOR = {LrSchedule.COSINE: 0.01, LrSchedule.CONSTANT: 1.0}
_OPTIMIZERS = {
    Optimizer.ADAMW: lambda groups, r: torch.optim.AdamW(groups, weight_decay=r.weight_decay),
    Optimizer.ADAM: lambda groups, r: torch.optim.Adam(groups, weight_decay=r.weight_decay),
    Optimizer.SGD: lambda groups, r: torch.optim.SGD(
        groups, lr=groups[0]["lr"], momentum=r.momentum, weight_decay=r.weight_decay
    ),
}


@dataclass(frozen=True)
class WarmupCosine:
    """LR multiplier per optimizer step: linear warmup to 1, then cosine down to `floor`.

    A dataclass rather than a lambda so LambdaLR can save and restore it for --resume.
    """

    warmup_steps: int
    total_steps: int
    floor: float = 0.01

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def weighted_layers(model: EdgeModel) -> list[nn.Module]:
    """The backbone's modules that hold weights of their own (Conv, BatchNorm, Linear), input first:
    the layers a Keras user counts in `base_model.layers[-N:]` (those without weights train nothing)."""
    return [m for stage in model.stages for m in stage.modules() if any(True for _ in m.parameters(False))]


def _top_layer_params(model: EdgeModel, count: int) -> set[int]:
    layers = weighted_layers(model)
    return {id(p) for m in layers[max(0, len(layers) - count) :] for p in m.parameters(False)}


def param_groups(model: EdgeModel, stage: PhasePlan, recipe: Recipe) -> list[dict]:
    """The head at stage.lr, then each unfrozen backbone stage at lr_backbone * lr_decay**distance.

    Distance 0 is the stage next to the head, so learning rates shrink toward the input, where
    pretrained features are most generic. With `unfreeze_layers`, a stage's group holds only its
    parameters among the top layers.
    """
    groups = [{"name": "head", "params": list(model.head.parameters()), "lr": stage.lr}]
    n = len(model.stages)
    chosen = _top_layer_params(model, stage.unfreeze_layers) if stage.unfreeze_layers else None
    for distance in range(n if chosen else min(stage.unfreeze, n)):
        index = n - 1 - distance
        params = [p for p in model.stages[index].parameters() if chosen is None or id(p) in chosen]
        if params:
            lr = stage.lr_backbone * recipe.lr_decay**distance
            groups.append({"name": f"stage{index}", "params": params, "lr": lr})
    return groups


def make_optimizer(
    model: EdgeModel, stage: PhasePlan, recipe: Recipe, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = _OPTIMIZERS[recipe.optimizer](param_groups(model, stage, recipe), recipe)
    shape = WarmupCosine(
        stage.warmup * steps_per_epoch, stage.epochs * steps_per_epoch, _LR_FLOOR[recipe.lr_schedule]
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, shape)


def set_trainable(model: EdgeModel, unfreeze: int, *, layers: int = 0) -> int:
    """Freeze all backbone stages but the last `unfreeze` (or all layers but the last `layers`);
    return the index of the first stage with a trainable parameter."""
    model.head.requires_grad_(True)
    if not layers:
        first = max(0, len(model.stages) - unfreeze)
        for i, stage in enumerate(model.stages):
            stage.requires_grad_(i >= first)
        return first
    chosen = _top_layer_params(model, layers)
    for p in model.stages.parameters():
        p.requires_grad_(id(p) in chosen)
    return next(i for i, stage in enumerate(model.stages) if any(p.requires_grad for p in stage.parameters()))


def train_mode(model: EdgeModel, first_trainable: int) -> None:
    """Train mode (dropout) for the head and trainable stages; every BatchNorm stays in eval mode.

    Frozen statistics must not move, and on small datasets the unfrozen ones should not either:
    batch statistics of a few dozen images shift the features the head was just trained on.
    """
    model.eval()
    model.head.train()
    for stage in model.stages[first_trainable:]:
        stage.train()
        for m in stage.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
