"""Per-stage learning rates: discriminative groups (one per unfrozen stage) and warmup + cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import EdgeModel
from .recipe import Recipe, StagePlan


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


def param_groups(model: EdgeModel, stage: StagePlan, recipe: Recipe) -> list[dict]:
    """The head at stage.lr, then each unfrozen backbone stage at lr_backbone * lr_decay**distance.

    Distance 0 is the stage next to the head, so learning rates shrink toward the input, where
    pretrained features are most generic.
    """
    groups = [{"name": "head", "params": list(model.head.parameters()), "lr": stage.lr}]
    n = len(model.stages)
    for distance in range(min(stage.unfreeze, n)):
        index = n - 1 - distance
        params = list(model.stages[index].parameters())
        if params:
            lr = stage.lr_backbone * recipe.lr_decay**distance
            groups.append({"name": f"stage{index}", "params": params, "lr": lr})
    return groups


def make_optimizer(
    model: EdgeModel, stage: StagePlan, recipe: Recipe, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(param_groups(model, stage, recipe), weight_decay=recipe.weight_decay)
    shape = WarmupCosine(stage.warmup * steps_per_epoch, stage.epochs * steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, shape)


def set_trainable(model: EdgeModel, unfreeze: int) -> int:
    """Freeze all backbone stages but the last `unfreeze`; return the index of the first trainable one."""
    first = max(0, len(model.stages) - unfreeze)
    for i, stage in enumerate(model.stages):
        stage.requires_grad_(i >= first)
    model.head.requires_grad_(True)
    return first


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
