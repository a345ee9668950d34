"""Frozen-compute path choice and the partial-unfreeze prefix cache."""

from __future__ import annotations

import gc

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import edgetl.trainer.frozen as features
import edgetl.trainer.session as session_module
from edgetl.runfolder.folder import RunFolder
from edgetl.trainer.recipe import PhasePlan, Recipe
from edgetl.trainer.train import train

TINY = {"image_size": 32, "hflip": False, "batch_size": 16, "cache_views": 1}
TWO_STAGES = Recipe(
    stages=(
        PhasePlan(epochs=1, unfreeze=0, lr=1e-2),
        PhasePlan(epochs=2, unfreeze=2, lr=1e-3, lr_backbone=1e-3),
    ),
    **TINY,
)


def tiny_part() -> features.FrozenPart:
    torch.manual_seed(0)
    stages = [
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3)),
    ]
    tail = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return features.FrozenPart([*stages, tail], (2, 3)).eval()


def test_prefix_cache_spills_to_disk_beyond_the_memory_budget_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "memory_budget", lambda: 0)
    cache = features.PrefixCache.plan(3, 5, (2, 4), tmp_path)
    assert cache.on_disk and cache.views == 3
    values = torch.randn(5, 2, 4)
    cache.write(1, 0, values)
    got = cache.read(torch.tensor([1, 1]), torch.tensor([4, 0]))
    assert torch.equal(got, values[[4, 0]].half().float())
    assert list(tmp_path.glob(features.CACHE_PREFIX + "*"))
    del cache
    gc.collect()
    assert not list(tmp_path.glob(features.CACHE_PREFIX + "*"))


def test_prefix_cache_holds_what_fits_and_nothing_when_not_one_view_fits(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "memory_budget", lambda: 0)
    monkeypatch.setattr(features, "disk_budget", lambda folder: 2 * 5 * 8 * 2)
    assert features.PrefixCache.plan(3, 5, (2, 4), tmp_path).views == 2
    monkeypatch.setattr(features, "disk_budget", lambda folder: 10)
    assert features.PrefixCache.plan(3, 5, (2, 4), tmp_path) is None


def test_bf16_only_with_native_instructions(monkeypatch):
    monkeypatch.setattr(features, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not features.native_bf16()
    choice, _ = features.choose_path(tiny_part(), torch.randn(4, 3, 16, 16), 4, lambda f: f.argmax(1))
    assert "bf16" in choice.refused and "bf16" not in choice.measured
    monkeypatch.setattr(features, "cpu_flags", lambda: {"avx512_bf16"})
    assert features.native_bf16() == torch.backends.mkldnn.is_available()


def test_drifting_features_or_flipped_predictions_are_refused():
    ref = [torch.randn(6, 100)]
    ref[0][0, :2] = torch.tensor([5.0, 4.999])
    assert features._drift([ref[0] + 1e-6], ref, lambda f: f.argmax(1)) is None
    assert "cosine" in features._drift([torch.randn(6, 100)], ref, lambda f: f.argmax(1))
    flipped = ref[0].clone()
    flipped[0, 1] = 5.001  # a near tie tipped over: features barely move, the prediction does
    assert "prediction" in features._drift([flipped], ref, lambda f: f.argmax(1))


def test_onnxruntime_is_tried_when_it_pays_off_and_matches_eager(monkeypatch):
    monkeypatch.setattr(features, "ONNX_WORTH_SECONDS", 0.0)
    part, probe = tiny_part(), torch.randn(4, 3, 16, 16)
    choice, _ = features.choose_path(part, probe, 10**6, lambda f: f.argmax(1))
    assert set(choice.measured) >= {"eager", "channels_last", "onnxruntime"}
    assert "onnxruntime" not in choice.refused
    ort = features.onnx_runner(part, probe)(probe)
    ref = features.torch_runner(part, features.FrozenPath.EAGER)(probe)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ort, ref, strict=True))
    monkeypatch.setattr(features, "ONNX_WORTH_SECONDS", float("inf"))
    assert "pay off" in features.choose_path(part, probe, 4, lambda f: f.argmax(1))[0].refused["onnxruntime"]


def choose_channels_last(part, probe, work_images, predict):
    """A fixed choice: two runs timed apart may choose different paths, and so differ in the last bits."""
    path = features.FrozenPath.CHANNELS_LAST
    return features.PathChoice(path, 1.0, {path.value: 1.0}), features.torch_runner(part, path)


@pytest.fixture(scope="module")
def uninterrupted(digits_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "whole"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "choose_path", choose_channels_last)
        return train(digits_dir, run, recipe=TWO_STAGES, device="cpu"), run


def test_summary_records_the_chosen_path(uninterrupted):
    result, run = uninterrupted
    assert result.frozen_compute["path"] == "channels_last"
    assert RunFolder(run).frozen_choice.is_file()
    assert not list(run.glob(features.CACHE_PREFIX + "*"))


def test_resume_inside_partial_unfreeze_is_bit_exact(digits_dir, tmp_path, uninterrupted):
    """Killed after the unfreeze stage's first epoch: the resumed run recomputes the prefix cache
    (on disk this time) and ends with the same weights as the run that was never interrupted."""
    saved = session_module.save_last_state

    def crash_in_stage_two(path, state):
        saved(path, state)
        if state["stage"] == 1:
            raise KeyboardInterrupt

    run = tmp_path / "resumed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session_module, "save_last_state", crash_in_stage_two)
        mp.setattr(features, "choose_path", choose_channels_last)
        with pytest.raises(KeyboardInterrupt):
            train(digits_dir, run, recipe=TWO_STAGES, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "memory_budget", lambda: 0)
        mp.setattr(features, "choose_path", None)  # --resume takes the run's saved choice
        train(digits_dir, run, resume=True, device="cpu")
    whole = load_file(str(uninterrupted[1] / "last.safetensors"))
    resumed = load_file(str(run / "last.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_without_room_for_the_prefix_cache_training_runs_full_passes(
    digits_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(features, "memory_budget", lambda: 0)
    monkeypatch.setattr(features, "disk_budget", lambda folder: 0)
    result = train(digits_dir, tmp_path / "run", recipe=TWO_STAGES, device="cpu")
    assert "not even the plain view" in capsys.readouterr().err
    assert [s.epochs_run for s in result.stages] == [1, 2]
