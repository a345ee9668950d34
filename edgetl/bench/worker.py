"""Benchmark workers: the backends a benchmark can time (the runtime's table plus the PyTorch
baseline) and the spawned process that loads one of them on one model and answers timing rounds.

Each worker is a fresh interpreter (not a fork), so a backend's threads, allocator and peak memory
are its own; messages are pickled over the worker's stdin/stdout.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from edgetl_runtime.backends import BACKENDS, Backend
from edgetl_runtime.modelinfo import Precision
from edgetl_runtime.preprocess import PreprocessSpec
from edgetl_runtime.timing import peak_rss_mb, time_runs, warm_up


class Source(str, Enum):
    ONNX = "onnx"  # runs the model files given
    CHECKPOINT = "checkpoint"  # runs the PyTorch checkpoint: the eager baseline


class Runner(Protocol):
    """What a worker times: ``run`` on a batch, then ``sync`` if it has one (GPU work is asynchronous).

    The runtime's sessions have no ``sync``: onnxruntime and OpenVINO return host arrays, so their
    ``run`` has finished when it returns.
    """

    threads: int | None
    providers: tuple[str, ...]

    def run(self, batch: np.ndarray) -> object: ...


@dataclass(frozen=True)
class BenchBackend:
    name: str
    device: str  # "cpu" or "gpu"
    source: Source
    check: Callable[[], str | None]
    load: Callable[[Path, int | None], Runner]
    formats: tuple[str, ...]


class TorchRunner:
    """Eager PyTorch on the checkpoint; host batch in, host logits out, like the ONNX sessions.

    On CUDA it runs as `edgetl train --device cuda` evaluates: channels_last memory layout and
    autocast (bf16 where the GPU has it, else fp16), the way a PyTorch user would serve it.
    """

    def __init__(self, path: Path, threads: int | None, device: str) -> None:
        import torch

        from edgetl.backbones.checkpoint import load_checkpoint
        from edgetl.device import cuda_autocast_dtype

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._device = torch.device(device)
        self.model, _ = load_checkpoint(path, self._device)
        self._amp = cuda_autocast_dtype() if device == "cuda" else None
        if self._amp is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.threads = torch.get_num_threads() if device == "cpu" else None
        self.execution_precision = (
            "model" if self._amp is None else f"{str(self._amp).removeprefix('torch.')} (autocast)"
        )
        self.providers = (f"torch:{device}",)
        # CUDA kernels are asynchronous: a timed call must wait for them to finish
        self.sync = torch.cuda.synchronize if device == "cuda" else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with (
            torch.inference_mode(),
            torch.autocast(self._device.type, self._amp, enabled=self._amp is not None),
        ):
            # the host-to-device copy is part of the call, as it is for onnxruntime's CUDA provider
            return self.model(torch.from_numpy(batch).to(self._device)).float().cpu().numpy()


def _torch_reason(device: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch not installed"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _from_runtime(backend: Backend) -> BenchBackend:
    return BenchBackend(
        backend.name, backend.device, Source.ONNX, backend.check, backend.load, backend.formats
    )


# The runtime's backend table plus the PyTorch baseline; the benchmark knows no other backends.
BENCH_BACKENDS: dict[str, BenchBackend] = {
    b.name: b
    for b in (
        BenchBackend(
            "pytorch",
            "cpu",
            Source.CHECKPOINT,
            lambda: _torch_reason("cpu"),
            lambda p, t: TorchRunner(p, t, "cpu"),
            (".safetensors",),
        ),
        BenchBackend(
            "pytorch-cuda",
            "gpu",
            Source.CHECKPOINT,
            lambda: _torch_reason("cuda"),
            lambda p, t: TorchRunner(p, t, "cuda"),
            (".safetensors",),
        ),
        *(_from_runtime(b) for b in BACKENDS.values()),
    )
}


@dataclass(frozen=True)
class TimedModel:
    """A model file as the benchmark times it: precision, preprocessing and size, read once."""

    path: Path
    precision: Precision
    preprocess: PreprocessSpec
    macs: int | None
    size_mb: float
    input_dtype: str = "float32"  # FP16 models may take float16 input


@dataclass(frozen=True)
class Job:
    """What a worker needs; plain data, so it crosses the process boundary."""

    backend: str
    model: str
    threads: int | None
    pools: dict[int, list[np.ndarray]]


# The messages of the worker protocol. Parent -> worker: a Job, then Round requests, then None.
@dataclass(frozen=True)
class Round:
    """Time one batch size: warm up, then at least `min_s` seconds and `min_runs` calls."""

    batch: int
    warmup_s: float
    min_s: float
    min_runs: int
    offset: int  # where in the input pool this round starts (samples taken so far)


# Worker -> parent: Ready or Failed after loading, Samples or Failed per Round, Done at the end.
@dataclass(frozen=True)
class Ready:
    load_s: float
    threads: int | None
    execution_precision: str
    rss_before_load_mb: float | None
    errors: dict[int, str]  # batch size -> why a first call at that size failed


@dataclass(frozen=True)
class Samples:
    durations_ns: list[int]


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Done:
    peak_rss_mb: float | None


Reply = Ready | Samples | Failed | Done


class _Pipe:
    """Pickled messages over a pair of byte streams (both ends are edgetl; nothing untrusted)."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        self.reader, self.writer = reader, writer

    def send(self, message: object) -> None:
        pickle.dump(message, self.writer, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.flush()

    def recv(self) -> object:
        return pickle.load(self.reader)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def serve_worker() -> None:
    """Entry point of a worker process: the protocol runs over stdin/stdout."""
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a backend prints goes to stderr, never into the protocol
    _work(_Pipe(sys.stdin.buffer, protocol_out))


def _work(pipe: _Pipe) -> None:
    """One backend on one model: load, answer timing rounds, report peak RSS at the end."""
    job: Job = pipe.recv()
    try:
        before = peak_rss_mb()
        start = time.perf_counter_ns()
        runner = BENCH_BACKENDS[job.backend].load(Path(job.model), job.threads)
        load_s = (time.perf_counter_ns() - start) / 1e9
        errors = {}
        for batch, pool in job.pools.items():
            try:
                runner.run(pool[0])
            except Exception as e:
                errors[batch] = _error_text(e)
    except Exception as e:
        pipe.send(Failed(_error_text(e)))
        return
    pipe.send(Ready(load_s, runner.threads, runner.execution_precision, before, errors))
    sync = getattr(runner, "sync", None)
    while (request := pipe.recv()) is not None:
        r: Round = request
        try:
            warm_up(runner.run, job.pools[r.batch], r.warmup_s, sync)
            samples = time_runs(
                runner.run, job.pools[r.batch], min_s=r.min_s, min_runs=r.min_runs, sync=sync, start=r.offset
            )
            pipe.send(Samples(samples))
        except Exception as e:
            pipe.send(Failed(_error_text(e)))
    pipe.send(Done(peak_rss_mb()))


class Worker:
    """Parent side of a worker: a fresh interpreter (not a fork: no inherited threads or backends)."""

    def __init__(self, backend: BenchBackend, model: TimedModel, job: Job) -> None:
        self.backend, self.model = backend, model
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import serve_worker; serve_worker()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pipe = _Pipe(self.process.stdout, self.process.stdin)
        self.error = ""
        with contextlib.suppress(OSError):  # a worker that died at start: receive() says so
            self.pipe.send(job)

    def receive(self) -> Reply:
        try:
            return self.pipe.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            return Failed(f"worker process died (exit code {self.process.wait()})")

    def ask(self, request: Round | None) -> Reply:
        with contextlib.suppress(OSError):
            self.pipe.send(request)
        return self.receive()

    def close(self) -> float | None:
        """Stop the worker; its peak RSS, or None when it had already failed."""
        reply = self.ask(None) if not self.error else None
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()
        return reply.peak_rss_mb if isinstance(reply, Done) else None
