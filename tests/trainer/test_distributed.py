"""Multi-process training through torchrun (gloo on CPU) and the sharding helpers it relies on."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgetl.errors import EdgetlError
from edgetl.trainer.distributed import (
    LAUNCHER,
    CommBackend,
    World,
    launch_command,
    parse_devices,
    relaunch,
    strip_option,
    world_from_env,
)
from edgetl.trainer.train import train

ARGS = [
    "--frozen-epochs",
    "3",
    "--epochs",
    "2",
    "--image-size",
    "32",
    "--no-hflip",
    "--device",
    "cpu",
    "--batch-size",
    "8",
]


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (7, 3), (1, 2)])
def test_shard_order_covers_every_index_with_equal_shares(n, size):
    order = torch.randperm(n)
    shards = [World(r, r, size, CommBackend.GLOO).shard_order(order) for r in range(size)]
    assert len({len(s) for s in shards}) == 1  # equal step counts: DDP collectives stay matched
    assert set(torch.cat(shards).tolist()) == set(range(n))
    assert sum(len(s) for s in shards) - n < size  # padding only to a multiple of the world size


@pytest.mark.parametrize("n,size", [(10, 2), (11, 3), (1, 2), (0, 2)])
def test_bounds_partition_the_rows(n, size):
    parts = [World(r, r, size, CommBackend.GLOO).bounds(n) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))


def test_single_process_world_is_a_no_op():
    w = World()
    x = torch.arange(6.0).reshape(3, 2)
    assert not w.active and w.main
    assert w.gather_rows(x, 3) is x and w.broadcast(x) is x and w.sum([1.0, 2.0]) == [1.0, 2.0]
    assert w.sum_tensor(x) is x
    assert w.local_batch(32) == 32 and w.to_dict() == {"world_size": 1, "backend": None}
    module = torch.nn.Linear(2, 2)
    assert w.wrap(module) is module


def test_world_from_env_picks_nccl_on_gpus_and_gloo_on_cpu():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert world_from_env(env, cuda=True) == World(3, 1, 4, CommBackend.NCCL)
    assert world_from_env(env, cuda=False).backend is CommBackend.GLOO
    assert world_from_env({}, cuda=True) == World()
    assert World(0, 0, 2, CommBackend.GLOO).local_batch(32) == 16


@pytest.mark.parametrize(
    "text,expected", [("2", (2, None)), ("0,1", (2, (0, 1))), ("3,", (1, (3,))), ("1,3,5", (3, (1, 3, 5)))]
)
def test_parse_devices(text, expected):
    assert parse_devices(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "two", "0,0", ",", "1,-2"])
def test_parse_devices_refuses_nonsense(text):
    with pytest.raises(EdgetlError, match="--devices"):
        parse_devices(text)


def test_launch_command_drops_devices_and_runs_edgetl_under_torchrun():
    argv = ["train", "--data", "d", "--devices", "0,1", "--out", "r", "--devices=2", "--json"]
    assert strip_option(argv, "--devices") == ["train", "--data", "d", "--out", "r", "--json"]
    cmd = launch_command(2, argv)
    assert cmd[:4] == [sys.executable, "-m", LAUNCHER, "--standalone"]
    assert "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("-m", 3) :] == ["-m", "edgetl", "train", "--data", "d", "--out", "r", "--json"]


def test_relaunch_restricts_visible_gpus_to_the_listed_ids(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen = {}

    def fake_run(cmd, env, **kw):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 0, "{}\n")

    relaunch("1,3", ["train", "--devices", "1,3"], run=fake_run)
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "1,3" and "--nproc-per-node=2" in seen["cmd"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EdgetlError, match="already running under torchrun"):
        relaunch("2", ["train"], run=fake_run)


def _edgetl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def two_process_run(digits_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("ddp") / "run"
    done = _edgetl("train", "--data", str(digits_dir), "--out", str(run), "--devices", "2", "--json", *ARGS)
    return run, done


@pytest.mark.slow  # two trainings, one of them on 2 processes
def test_two_processes_on_gloo_match_one_process(two_process_run, digits_dir, tmp_path):
    run, done = two_process_run
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # exactly one JSON object: rank 0's
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    # logs are rank 0's alone: each epoch line once
    assert done.stderr.count("stage 2/2 epoch 2/2") == 1
    single = train(
        digits_dir,
        tmp_path / "one",
        device="cpu",
        frozen_epochs=3,
        epochs=2,
        image_size=32,
        hflip=False,
        batch_size=8,
    )
    assert single.world_size == 1 and single.backend is None
    # the end-to-end runs see different augmentations, so their accuracies may differ; the step itself
    # is checked exactly by test_one_ddp_step_on_two_processes_equals_one_process_on_the_global_batch
    assert summary["num_train"] == single.num_train and summary["num_val"] == single.num_val


DDP_STEP = """
import sys
import torch
from edgetl.trainer.distributed import World, close_world, init_world


def step(world: World) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(1), torch.nn.Linear(4 * 6 * 6, 3)
    )
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 3  # the global batch, the same on every rank
    mine = world.shard_order(torch.arange(8))[: world.local_batch(8)]
    wrapped = world.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    torch.nn.functional.cross_entropy(wrapped(x[mine]), y[mine]).backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    world = World() if sys.argv[2] == "single" else init_world(cuda=False)
    weights = step(world)
    if world.main:
        torch.save(weights, sys.argv[1])
    close_world()
"""


def test_one_ddp_step_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """Gradient averaging across ranks: after one SGD step (lr 1) on the same global batch of 8, the
    weights of 2 gloo processes with 4 images each equal those of 1 process with all 8. Summed or
    unreduced gradients, or a wrong shard of the batch, move the weights by whole gradients."""
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_STEP)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run([*launcher, str(script), str(tmp_path / "two.pt"), "ddp"], capture_output=True,
                         text=True, env=env, timeout=240)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), "single"],
                         capture_output=True, text=True, env=env, timeout=240)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two_w, one_w = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert two_w.keys() == one_w.keys()
    for name in one_w:
        torch.testing.assert_close(two_w[name], one_w[name], atol=1e-6, rtol=1e-5, msg=name)


def _rank_pids(marker: str, rank: str) -> list[int]:
    """Processes whose command line holds `marker` and whose environment says RANK=`rank`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker.encode() in cmdline and f"RANK={rank}".encode() in env:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow  # two 2-process trainings
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the rank")
def test_resume_after_killing_one_rank(digits_dir, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    args = ["train", "--data", str(digits_dir), "--out", str(run), "--devices", "2", "--json", *ARGS]
    args += ["--epochs", "8", "--patience", "20"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.Popen([sys.executable, "-m", "edgetl", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        rows = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else []
        if len(rows) >= 4:  # inside the partial-unfreeze stage
            break
        time.sleep(0.05)
    pids = _rank_pids(str(run), "1")
    assert pids, "rank 1 not found"
    os.kill(pids[0], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    done = len(json.loads((run / "metrics.json").read_text()))
    assert 4 <= done < 11
    again = _edgetl(
        "train", "--data", str(digits_dir), "--out", str(run), "--resume", "--devices", "2", "--json"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    history = json.loads((run / "metrics.json").read_text())
    assert summary["epochs"] == 11 and summary["world_size"] == 2
    assert [r["epoch"] for r in history] == list(range(1, 12))


def _text_inputs(root: Path) -> tuple[Path, Path, Path]:
    """A tiny BERT and a recipe without dropout (so one and two processes train alike), and texts
    whose classes are imbalanced (36/22/22: a weighted loss) and whose 65 training texts leave a last
    length bucket of one text, which rank 1 has no share of."""
    from tinytext import sentences, write_text_folder, write_tiny_bert

    bert = write_tiny_bert(root / "bert", dropout=0.0)
    data = write_text_folder(root / "data", per_class=22)
    for i, text in enumerate(sentences("sport", 14, seed=9)):
        (data / "sport" / f"x{i:03d}.txt").write_text(text, encoding="utf-8")
    recipe = (Path(__file__).resolve().parents[2] / "models" / "all-minilm-l6-v2.toml").read_text()
    for old, new in [("dropout = 0.1", "dropout = 0.0"), ("lr = 1e-2", "lr = 0.05"),
                     ("lr_backbone = 1e-4", "lr_backbone = 1e-3"), ("patience = 4", "patience = 3")]:  # fmt: skip
        assert old in recipe
        recipe = recipe.replace(old, new)
    (root / "recipe.toml").write_text(recipe, encoding="utf-8")
    return bert, data, root / "recipe.toml"


def _same_history(rows: list[dict], expected: list[dict]) -> None:
    assert [(r["epoch"], r["stage"]) for r in rows] == [(r["epoch"], r["stage"]) for r in expected]
    for key in ("val_accuracy", "val_loss", "train_accuracy", "train_loss"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in expected], abs=1e-5), key


@pytest.mark.slow  # two 2-process text trainings (one of them resumed) and a 1-process one
def test_text_on_two_processes_matches_one_process_and_resumes(tmp_path):
    """Each rank trains on its share of every length bucket and the gradients are summed, so without
    dropout every epoch (losses, accuracies, early stopping, best epoch) is the one-process epoch; a
    rank stepping on its own share, or deciding alone, drifts off it (or hangs the collectives)."""
    bert, data, recipe = _text_inputs(tmp_path)
    run = tmp_path / "two"
    args = ["train", "--data", str(data), "--recipe", str(recipe), "--weights", str(bert)]
    args += ["--frozen-epochs", "10", "--epochs", "2", "--out", str(run), "--devices", "2", "--json"]
    done = _edgetl(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # exactly one JSON object: rank 0's
    assert summary["world_size"] == 2 and summary["backend"] == "gloo" and summary["num_train"] == 65
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    assert done.stderr.count("stage 2/2 epoch 2/2") == 1  # rank 0 alone logs
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, summary["epochs"] + 1))
    single = train(data, tmp_path / "one", recipe=recipe, weights=str(bert), frozen_epochs=10, epochs=2)
    assert single.world_size == 1 and single.backend is None
    _same_history(history, json.loads((tmp_path / "one" / "metrics.json").read_text()))
    assert summary["best_epoch"] == single.best_epoch
    assert [(s["epochs_run"], s["stopped_early"]) for s in summary["stages"]] == [
        (s.epochs_run, s.stopped_early) for s in single.stages
    ]
    # as if stopped after the frozen stage (last.safetensors is the run's end, not the stage's, so the
    # resumed stage 2 is checked against one process resuming the same folder)
    state = json.loads((run / "last_state.json").read_text())
    state["history"] = [r for r in state["history"] if r["stage"] == 1]
    state.update(stage=1, stage_epoch=0, stages=state["stages"][:1])
    (run / "last_state.json").write_text(json.dumps(state))
    shutil.copytree(run, tmp_path / "alone")
    again = _edgetl("train", "--data", str(data), "--out", str(run), "--resume", "--devices", "2", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["epochs"] == summary["epochs"]
    alone = train(data, tmp_path / "alone", resume=True)
    assert alone.epochs == summary["epochs"] and alone.world_size == 1
    _same_history(json.loads((run / "metrics.json").read_text()),
                  json.loads((tmp_path / "alone" / "metrics.json").read_text()))  # fmt: skip
