"""Multi-process training on PyTorch's own launcher (torchrun); nothing here starts or talks to processes.

`edgetl train --devices N` re-runs the same command under `python -m torch.distributed.run
--standalone --nproc-per-node N -m edgetl train ...` (as Ultralytics does); torchrun started by hand,
on one machine or several (`--nnodes`, `--rdzv-backend c10d`, `--rdzv-endpoint`), works the same way:
each process reads RANK / LOCAL_RANK / WORLD_SIZE from the environment torchrun sets.

How training splits the work (train.py calls the helpers below):
- every rank loads the same data and split (same seed) and draws the same epoch order;
- frozen features: each rank computes a contiguous share of the images, `gather_rows` joins them once;
- unfrozen stages: DistributedDataParallel, each rank takes every world-th index of the epoch order
  (padded like DistributedSampler) with batch_size / world images a step, so a step still averages
  gradients over `batch_size` images and the schedule has the same number of steps;
- validation logits are sharded and gathered (or broadcast from rank 0), so every rank takes the same
  early-stopping and best-checkpoint decisions; training metrics are summed over ranks;
- only rank 0 writes the run folder, logs and shows progress; the others' stdout goes to stderr.

Text models share out each length bucket's texts over the ranks instead (text.py says how).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from edgetl.errors import EdgetlError

LAUNCHER = "torch.distributed.run"


class CommBackend(str, Enum):
    GLOO = "gloo"  # CPU tensors
    NCCL = "nccl"  # CUDA tensors


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; the default is a single process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: CommBackend | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def local_batch(self, batch_size: int) -> int:
        """Images per step on this rank: the global batch split over the ranks."""
        return max(1, -(-batch_size // self.size))

    def shard_order(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of an epoch order: padded by wrapping around to a multiple of the world
        size, then every size-th index from `rank` (what DistributedSampler does)."""
        if not self.active:
            return order
        pad = -len(order) % self.size
        if pad:
            order = torch.cat([order, order[:pad]])
        return order[self.rank :: self.size]

    def bounds(self, n: int) -> tuple[int, int]:
        """The contiguous rows [lo, hi) of n that this rank computes for `gather_rows`."""
        per = -(-n // self.size)
        return min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def gather_rows(self, part: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
        """Join every rank's `bounds(n)` rows (along `dim`) into the full tensor, on every rank."""
        if not self.active:
            return part
        import torch.distributed as dist

        per = -(-n // self.size)
        device = self.comm_device()
        shape = list(part.shape)
        shape[dim] = per
        padded = torch.zeros(shape, dtype=part.dtype, device=device)
        padded.narrow(dim, 0, part.shape[dim]).copy_(part)
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(pieces, padded)
        return torch.cat(pieces, dim).narrow(dim, 0, n).to(part.device)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (training loss and hit counts)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a tensor shaped alike on every rank, on every rank."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        t = tensor.to(self.comm_device()).contiguous()
        dist.all_reduce(t)
        return t.to(tensor.device)

    def sum_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each gradient by its sum over ranks, in one exchange; a parameter without a
        gradient on this rank (it had no rows this step) adds zeros, so every rank steps alike."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.sum_tensor(torch.cat([g.reshape(-1) for g in grads]))
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p)

    def min(self, value: float) -> float:
        """The smallest `value` over ranks (budgets that every rank must agree on)."""
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.item()

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (same shape and dtype everywhere)."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        t = tensor.to(self.comm_device()).contiguous()
        dist.broadcast(t, 0)
        return t.to(tensor.device)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def comm_device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank) if self.backend is CommBackend.NCCL else torch.device("cpu")
        )

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel over `module`'s trainable parameters; the module itself when alone."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.backend is CommBackend.NCCL else None
        return DistributedDataParallel(module, device_ids=ids)

    def to_dict(self) -> dict:
        return {"world_size": self.size, "backend": self.backend.value if self.backend else None}


SINGLE = World()  # a process that torchrun did not start
_WORLD = SINGLE


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_from_env(env: dict[str, str] | None = None, *, cuda: bool) -> World:
    """The World torchrun describes in the environment (a single process when WORLD_SIZE is unset)."""
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    backend = CommBackend.NCCL if cuda else CommBackend.GLOO
    return World(int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), size, backend)


def init_world(*, cuda: bool) -> World:
    """Join the process group torchrun set up; quiet every rank but 0. Idempotent."""
    global _WORLD
    world = world_from_env(cuda=cuda)
    if not world.active:
        return world
    import torch.distributed as dist

    if not dist.is_initialized():
        if world.backend is CommBackend.NCCL:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(world.backend.value)
    if not world.main:
        from edgetl.console import err

        err.quiet = True
        # the one JSON object on stdout is rank 0's; anything the others print is diagnostics
        sys.stdout = sys.stderr
    _WORLD = world
    return world


def close_world() -> None:
    global _WORLD
    if _WORLD.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _WORLD = SINGLE


def parse_devices(text: str) -> tuple[int, tuple[int, ...] | None]:
    """`--devices`: "N" (N processes; on GPUs the first N) or a list of GPU ids "0,2"."""
    try:
        if "," in text:
            ids = tuple(int(t) for t in text.split(",") if t.strip())
            if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
                raise ValueError
            return len(ids), ids
        n = int(text)
        if n < 1:
            raise ValueError
        return n, None
    except ValueError:
        raise EdgetlError(
            f"--devices {text!r}: give a number of processes (2) or distinct GPU ids (0,1)"
        ) from None


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE` (the relaunched command must not relaunch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def launch_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command line that runs `edgetl <argv>` in nproc processes on this machine."""
    return [
        sys.executable, "-m", LAUNCHER, "--standalone", f"--nproc-per-node={nproc}",
        "-m", "edgetl", *strip_option(argv, "--devices"),
    ]  # fmt: skip


def relaunch(
    devices: str, argv: Sequence[str], *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> subprocess.CompletedProcess:
    """Run this command again under torchrun with `devices`; returns the finished launcher.

    stdout is captured so the caller can pass on rank 0's output (or report that there was none);
    stderr (logs, progress) goes straight to the terminal.
    """
    if os.environ.get("WORLD_SIZE"):
        raise EdgetlError("--devices: already running under torchrun; drop --devices or torchrun")
    nproc, ids = parse_devices(devices)
    env = dict(os.environ)
    if ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    return run(launch_command(nproc, argv), env=env, stdout=subprocess.PIPE, text=True, check=False)
