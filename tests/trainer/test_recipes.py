"""Each classic recipe in models/ trains exactly the parameters it says, at the rates it says.

Real training runs on tiny data (--weights none, 32 px, one epoch per stage); the optimizer each stage
builds is recorded, and what the last stage changed is compared with what it was meant to train.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgetl.trainer.session as session_module
from edgetl.trainer.recipe import MODELS_DIR, PhasePlan, Recipe, RecipeError, load_recipe
from edgetl.trainer.train import train

SHORT = {
    "weights": "none",
    "image_size": 32,
    "cache_views": 1,
    "batch_size": 16,
    "frozen_epochs": 1,
    "epochs": 1,
}


def record_stages(monkeypatch) -> list[dict]:
    """Wrap make_optimizer: per stage, its optimizer, trainable names, lr per name, and a snapshot."""
    seen: list[dict] = []
    make = session_module.make_optimizer

    def recording(model, stage, recipe, steps):
        optimizer, scheduler = make(model, stage, recipe, steps)
        names = {id(p): n for n, p in model.named_parameters()}
        seen.append(
            {
                "model": model,
                "optimizer": optimizer,
                "trainable": {n for n, p in model.named_parameters() if p.requires_grad},
                "lr": {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]},
                "snapshot": {n: p.detach().clone() for n, p in model.named_parameters()},
            }
        )
        return optimizer, scheduler

    monkeypatch.setattr(session_module, "make_optimizer", recording)
    return seen


def run_recipe(name: str, data, tmp_path, monkeypatch) -> list[dict]:
    seen = record_stages(monkeypatch)
    recipe = load_recipe(MODELS_DIR / f"{name}.toml")
    train(data, tmp_path / name, recipe=recipe, device="cpu", **SHORT)
    return seen


def head_names(model) -> set[str]:
    return {f"head.{n}" for n, _ in model.head.named_parameters()}


def under(model, *prefixes: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def assert_last_stage_changed_exactly(stage: dict) -> None:
    """Nothing outside the trainable set moved, and every param group moved (a randomly initialised
    net can have a dead unit whose gradient is exactly zero, so not every single tensor must)."""
    changed = {n for n, p in stage["model"].named_parameters() if not torch.equal(p, stage["snapshot"][n])}
    assert changed <= stage["trainable"]
    names = {id(p): n for n, p in stage["model"].named_parameters()}
    for group in stage["optimizer"].param_groups:
        assert changed & {names[id(p)] for p in group["params"]}, group["name"]


def test_resnet50_medical_mlp_head_then_layer4(digits_dir, tmp_path, monkeypatch):
    frozen, tuned = run_recipe("classic-resnet50-medical", digits_dir, tmp_path, monkeypatch)
    model = frozen["model"]
    layers = list(model.head)
    assert [type(m) for m in layers] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (layers[1].in_features, layers[1].out_features, layers[3].p, layers[4].out_features) == (
        2048,
        256,
        0.4,
        3,
    )
    assert all(type(o["optimizer"]) is torch.optim.Adam for o in (frozen, tuned))
    assert frozen["trainable"] == head_names(model) and set(frozen["lr"].values()) == {1e-3}
    layer4 = under(model, "stages.4.")  # torchvision layer4 (+ pooling)
    assert tuned["trainable"] == head_names(model) | layer4
    assert tuned["lr"] == {**dict.fromkeys(head_names(model), 1e-3), **dict.fromkeys(layer4, 1e-4)}
    assert_last_stage_changed_exactly(tuned)


def test_mobilenetv2_keras_last_20_weighted_layers_at_1e5(digits_dir, tmp_path, monkeypatch):
    frozen, tuned = run_recipe("classic-mobilenetv2-keras", digits_dir, tmp_path, monkeypatch)
    model = frozen["model"]
    assert frozen["trainable"] == head_names(model) and set(frozen["lr"].values()) == {1e-4}
    # Derived here from parameter names: a layer is the module that owns a parameter.
    owners = list(
        dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if n.startswith("stages."))
    )
    top20 = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in owners[-20:]}
    assert tuned["trainable"] == head_names(model) | top20
    assert set(tuned["lr"]) == tuned["trainable"] and set(tuned["lr"].values()) == {1e-5}
    assert_last_stage_changed_exactly(tuned)


def test_resnet18_feature_extraction_then_fine_tune(digits_dir, tmp_path, monkeypatch):
    frozen, tuned = run_recipe("classic-resnet18-catsdogs", digits_dir, tmp_path, monkeypatch)
    model = frozen["model"]
    assert [type(m) for m in model.head] == [nn.Dropout, nn.Linear] and model.head[1].in_features == 512
    assert frozen["trainable"] == head_names(model) and set(frozen["lr"].values()) == {1e-4}
    assert type(frozen["optimizer"]) is torch.optim.Adam
    everything = {n for n, _ in model.named_parameters()}
    assert tuned["trainable"] == everything and set(tuned["lr"]) == everything
    assert set(tuned["lr"].values()) == {1e-5}
    assert_last_stage_changed_exactly(tuned)


def test_gradual_unfreeze_one_more_stage_each_time_with_sgd(digits_dir, tmp_path, monkeypatch):
    seen = run_recipe("classic-gradual-unfreeze", digits_dir, tmp_path, monkeypatch)
    assert len(seen) == 5
    model = seen[0]["model"]
    n = len(model.stages)
    for k, stage in enumerate(seen):
        optimizer = stage["optimizer"]
        assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
        unfrozen = {f"stages.{n - 1 - d}." for d in range(k)}
        assert stage["trainable"] == head_names(model) | under(model, *unfrozen) if k else head_names(model)
        want = dict.fromkeys(head_names(model), 1e-2 if k == 0 else 1e-3)
        for d in range(k):
            want.update(dict.fromkeys(under(model, f"stages.{n - 1 - d}."), 1e-3 * 0.385**d))
        assert stage["lr"] == pytest.approx(want)
    assert_last_stage_changed_exactly(seen[-1])


def test_recipe_keys_are_validated():
    with pytest.raises(RecipeError, match="optimizer"):
        Recipe(optimizer="lamb")
    with pytest.raises(RecipeError, match="unfreeze_layers"):
        Recipe(stages=(PhasePlan(epochs=1, unfreeze=2, unfreeze_layers=3),))
    with pytest.raises(RecipeError, match="gradual"):
        Recipe(stages=(PhasePlan(epochs=1, gradual=True),))
    with pytest.raises(RecipeError, match="head_hidden"):
        Recipe(head_hidden=(0,))
    gradual = Recipe(stages=(PhasePlan(epochs=2, unfreeze=3, gradual=True),))
    assert [(s.unfreeze, s.epochs) for s in gradual.stages] == [(1, 2), (2, 2), (3, 2)]
