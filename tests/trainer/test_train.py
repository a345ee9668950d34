"""The training schedule on tiny real data: what is frozen stays bit-identical, what trains moves."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch
from badfiles import write_corrupt_image
from click.testing import CliRunner
from safetensors.torch import load_file

import edgetl.trainer.session as session_module
from edgetl.backbones.checkpoint import load_checkpoint, read_checkpoint_info
from edgetl.backbones.registry import DEFAULT_BACKBONE, TORCHVISION_NAMES, create_model
from edgetl.cli import main
from edgetl.runfolder.splits import Splits
from edgetl.trainer.recipe import MODELS_DIR, PhasePlan, Recipe, RecipeError, load_recipe, resolve_recipe
from edgetl.trainer.schedule import WarmupCosine, param_groups
from edgetl.trainer.train import resolve_device, train

TINY = {"image_size": 32, "hflip": False, "batch_size": 16, "cache_views": 1}
FROZEN = Recipe(stages=(PhasePlan(epochs=3, unfreeze=0, lr=1e-2),), **TINY)
TWO_STAGES = Recipe(
    stages=(
        PhasePlan(epochs=2, unfreeze=0, lr=1e-2),
        PhasePlan(epochs=2, unfreeze=2, lr=1e-3, lr_backbone=1e-3),
    ),
    **TINY,
)


@pytest.fixture(scope="module")
def pretrained():
    return {k: v.clone() for k, v in create_model("efficientnet_lite0").state_dict().items()}


def stage_tensors(state: dict, index: int) -> dict:
    return {k: v for k, v in state.items() if k.startswith(f"stages.{index}.")}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_stage_run(digits_dir, tmp_path_factory):
    """Frozen stage then the last 2 stages unfrozen, on data with one corrupt image."""
    data = shutil.copytree(digits_dir, tmp_path_factory.mktemp("corrupt") / "data")
    write_corrupt_image(data / "train" / "0" / "zz_broken.png")
    run = tmp_path_factory.mktemp("runs") / "two"
    return train(data, run, recipe=TWO_STAGES, device="cpu"), run


@pytest.fixture(scope="module")
def interrupted_run(digits_dir, tmp_path_factory):
    """A frozen-only run killed after its first epoch, then resumed with --resume."""
    run = tmp_path_factory.mktemp("runs") / "resumed"
    saved = session_module.save_last_state

    def crash_after_first_epoch(path, state):
        saved(path, state)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session_module, "save_last_state", crash_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            train(digits_dir, run, recipe=FROZEN, device="cpu")
    after_first = {
        **load_file(str(run / "last.safetensors")),
        **load_file(str(run / "last.head.safetensors")),
    }
    crashed = {p.name: (p.stat().st_size, len(load_file(str(p)))) for p in run.glob("*.safetensors")}
    result = train(digits_dir, run, resume=True, device="cpu")
    return result, run, after_first, crashed


def test_cached_feature_epochs_write_only_the_head_and_the_stage_end_joins_them(interrupted_run):
    _, run, after_first, crashed = interrupted_run
    full = len(after_first)
    # killed in a cached-feature stage: the backbone was written once, each epoch wrote only the head
    assert crashed["last.safetensors"][1] == full
    assert crashed["last.head.safetensors"][1] == crashed["best.head.safetensors"][1] == 2  # weight, bias
    assert crashed["last.head.safetensors"][0] * 100 < crashed["last.safetensors"][0]
    assert "best.safetensors" not in crashed
    # finished: full checkpoints again, no head files left; best's head is the best epoch's
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    best = load_file(str(run / "best.safetensors"))
    assert len(best) == full and len(load_file(str(run / "last.safetensors"))) == full
    best_epoch = json.loads((run / "summary.json").read_text())["best_epoch"]
    assert read_checkpoint_info(run / "best.safetensors").epoch == best_epoch


def test_frozen_stage_keeps_backbone_bit_identical_and_trains_head(interrupted_run, pretrained):
    _, run, after_first, _ = interrupted_run
    final = load_file(str(run / "last.safetensors"))
    backbone = {k: v for k, v in final.items() if k.startswith("stages.")}
    # Parameters and BatchNorm running statistics alike.
    assert same(backbone, {k: v for k, v in pretrained.items() if k.startswith("stages.")})
    assert not torch.equal(final["head.1.weight"], after_first["head.1.weight"])


def test_resume_continues_after_the_saved_epoch(interrupted_run):
    result, run, _, _ = interrupted_run
    history = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert result.epochs == 3
    assert read_checkpoint_info(run / "last.safetensors").epoch == 3


def test_partial_unfreeze_changes_exactly_the_unfrozen_stages(two_stage_run, pretrained):
    _, run = two_stage_run
    final = load_file(str(run / "last.safetensors"))
    for i in range(9):
        unchanged = same(stage_tensors(final, i), stage_tensors(pretrained, i))
        assert unchanged == (i < 7), f"stage {i}"


def test_run_folder_records_metrics_skips_and_checkpoint(two_stage_run):
    result, run = two_stage_run
    assert result.skipped == 1
    assert Splits.load(run).skipped == 1
    assert len(Splits.load(run).train) == result.num_train == 36
    assert [s.unfreeze for s in result.stages] == [0, 2]
    confusion = json.loads((run / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == result.num_val
    # the best checkpoint's confusion matrix counts exactly the accuracy reported
    hits = sum(confusion["matrix"][i][i] for i in range(len(confusion["matrix"])))
    assert result.best_val_accuracy == hits / result.num_val
    assert set(confusion["per_class_accuracy"]) == {"0", "1", "2"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_accuracy"] == result.best_val_accuracy
    _, info = load_checkpoint(result.checkpoint)
    assert info.labels == ("0", "1", "2") and info.preprocess.crop == 32
    assert info.metrics["val_accuracy"] == result.best_val_accuracy
    assert Recipe(**{**info.recipe, "stages": [PhasePlan(**s) for s in info.recipe["stages"]]}) == TWO_STAGES


def test_lr_groups_decay_toward_the_input(two_stage_run):
    model, _ = load_checkpoint(two_stage_run[0].checkpoint)
    plan = PhasePlan(epochs=1, unfreeze=3, lr=1e-2, lr_backbone=1e-3)
    groups = param_groups(model, plan, Recipe(lr_decay=0.5))
    assert [g["name"] for g in groups] == ["head", "stage8", "stage7", "stage6"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-3, 5e-4, 2.5e-4])
    for g in groups[1:]:
        index = int(g["name"].removeprefix("stage"))
        assert {id(p) for p in g["params"]} == {id(p) for p in model.stages[index].parameters()}


def test_warmup_then_cosine():
    shape = WarmupCosine(warmup_steps=2, total_steps=10, floor=0.0)
    values = [shape(s) for s in range(10)]
    assert values[0] < values[1] < values[2] == 1.0
    assert all(a > b for a, b in itertools.pairwise(values[2:]))


def test_recipe_files_load_and_the_default_matches_the_builtin():
    for name in (DEFAULT_BACKBONE, *TORCHVISION_NAMES):
        assert load_recipe(MODELS_DIR / f"{name}.toml").backbone == name
    assert resolve_recipe() == Recipe()


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stages]]\nepochs = 0\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.epochs"):
        load_recipe(bad)
    bad.write_text("batch_sise = 3\n")
    with pytest.raises(RecipeError, match="batch_sise"):
        load_recipe(bad)


def test_overrides_replace_recipe_values():
    r = Recipe().with_overrides(frozen_epochs=4, epochs=0, lr=0.5, hflip=False, batch_size=None)
    assert [(s.epochs, s.unfreeze, s.lr) for s in r.stages] == [(4, 0, 0.5)]
    assert r.hflip is False and r.batch_size == Recipe().batch_size
    assert Recipe().with_overrides(unfreeze=5).stages[1].unfreeze == 5


def test_cuda_request_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    from edgetl.errors import EdgetlError

    with pytest.raises(EdgetlError, match=r"--device cuda: .*use --device cpu"):
        resolve_device("cuda")


def test_cli_train_json(digits_dir, tmp_path):
    args = ["train", "--data", str(digits_dir), "--out", str(tmp_path / "run"), "--json"]
    args += ["--frozen-epochs", "2", "--epochs", "0", "--image-size", "32", "--no-hflip", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(rows) == 2 and summary["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert summary["train_seconds"] > 0
    assert (tmp_path / "run" / "best.safetensors").samefile(summary["checkpoint"])


def test_cli_train_bad_data_is_one_line_error(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "no such folder" in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_recipe_name_names_the_option():
    with pytest.raises(RecipeError, match="--recipe no_such_recipe"):
        resolve_recipe("no_such_recipe")


def test_cli_train_bad_weights_or_out_leave_no_run_folder(digits_dir, tmp_path):
    base = ["train", "--data", str(digits_dir), "--image-size", "32", "--device", "cpu"]
    junk = tmp_path / "junk.pth"
    junk.write_text("not weights")
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "r"), "--weights", str(junk)])
    assert result.exit_code == 1 and "--weights" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(main, [*base, "--out", str(junk / "r")])
    assert result.exit_code == 1 and "--out" in result.output and "Traceback" not in result.output
