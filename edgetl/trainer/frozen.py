"""Frozen backbone computation at inference speed, on the path this machine runs fastest.

While stages are frozen they are pure inference: no gradients, eval mode, fixed weights. PyTorch eager
NCHW float32 is the slowest way to run that on a CPU, so the first time a run needs frozen features it
measures the candidate paths on a probe batch and keeps the fastest *faithful* one:

- eager: float32, NCHW (the reference every other path is checked against);
- channels_last: float32, NHWC memory layout (oneDNN's fast convolutions);
- bf16: channels_last under bf16 autocast, only on CPUs with native bf16 instructions (avx512_bf16,
  amx_bf16, aarch64 bf16); features are handed on as float32;
- onnxruntime: the frozen stages exported to ONNX once, run by onnxruntime's CPU provider; tried only
  when the work the faster torch path would still take is long enough for the export to pay off.

A path is refused when its outputs on the probe batch drift from eager float32 (cosine similarity per
image, and the head's predicted class). The choice is logged, written to the run folder (so --resume
computes bit-identical features) and recorded in the training summary.

Prefix caching for partial unfreeze lives here too (`PrefixCache`): the frozen prefix's outputs for
the cached views, stored as float16 in memory within a budget, in a disk-backed numpy memmap beyond it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.console import log
from edgetl.runfolder.folder import TMP_PREFIX, RunFolder
from edgetl.runfolder.records import read_json

CACHE_PREFIX = TMP_PREFIX + "prefix-cache-"  # so the run lock sweeps a killed run's cache
PROBE_IMAGES = 16
# bf16 keeps ~3 significant digits: features stay > 0.999 cosine-similar on real backbones; a path
# below this (or flipping the head's prediction on a probe image) is not the same model any more.
COSINE_FLOOR = 0.999
# The torchscript ONNX export plus session set-up of a small backbone takes ~5-10 s on 2 cores: only
# worth trying when the fastest torch path would still need several times that.
ONNX_WORTH_SECONDS = 30.0


class FrozenPath(str, Enum):
    EAGER = "eager"
    CHANNELS_LAST = "channels_last"
    BF16 = "bf16"
    ONNXRUNTIME = "onnxruntime"


@dataclass(frozen=True)
class PathChoice:
    """The path a run computes frozen features with, and why: each candidate's measured features/s."""

    path: FrozenPath
    features_per_second: float
    measured: dict[str, float] = field(default_factory=dict)  # path -> features/s on the probe batch
    refused: dict[str, str] = field(default_factory=dict)  # path -> reason
    reused: bool = False  # taken over from the run folder (--resume)

    def to_dict(self) -> dict:
        return {**asdict(self), "path": self.path.value}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16() -> bool:
    """bf16 arithmetic in hardware (not emulated through float32), and oneDNN to use it."""
    return torch.backends.mkldnn.is_available() and bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


class FrozenPart(nn.Module):
    """A copy of stages [0, stop) that returns the outputs after each stage index in `taps`."""

    def __init__(self, stages: Sequence[nn.Module], taps: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(copy.deepcopy(list(stages)))
        self.taps = taps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i + 1 in self.taps:
                outs.append(x)
        return tuple(outs)


Runner = Callable[[torch.Tensor], list[torch.Tensor]]


def torch_runner(part: FrozenPart, path: FrozenPath) -> Runner:
    # A private copy: converting the training model itself to channels_last would change its
    # checkpoints' layout (and the trainable stages' numerics).
    fmt = torch.contiguous_format if path is FrozenPath.EAGER else torch.channels_last
    part = copy.deepcopy(part).eval().to(memory_format=fmt)

    @torch.no_grad()
    def run(x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=path is FrozenPath.BF16):
            return [o.float().contiguous() for o in part(x)]

    return run


def onnx_runner(part: FrozenPart, example: torch.Tensor) -> Runner:
    """Export `part` (torchscript exporter: seconds, where dynamo takes tens) and run it in onnxruntime."""
    import onnxruntime as ort

    names = [f"out{i}" for i in range(len(part.taps))]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the torchscript exporter's deprecation notice: it is the one that exports in seconds
        warnings.simplefilter("ignore", DeprecationWarning)
        path = Path(tmp) / "frozen.onnx"
        torch.onnx.export(
            part.eval(),
            (example[:1],),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["x", *names]},
            opset_version=17,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(names, {"x": x.float().contiguous().numpy()})]

    return run


def _throughput(run: Runner, probe: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    run(probe[:2])  # first call: allocation, oneDNN kernel selection
    start = time.perf_counter()
    outs = run(probe)
    return len(probe) / max(time.perf_counter() - start, 1e-9), outs


def _drift(outs: list[torch.Tensor], ref: list[torch.Tensor], predict) -> str | None:
    """Why `outs` is not faithful to `ref`, or None."""
    cosine = min(
        nn.functional.cosine_similarity(o.flatten(1), r.flatten(1), eps=1e-12).min().item()
        for o, r in zip(outs, ref, strict=True)
    )
    if cosine < COSINE_FLOOR:
        return f"features drift from float32 (min cosine similarity {cosine:.5f} < {COSINE_FLOOR})"
    flips = int((predict(outs[-1]) != predict(ref[-1])).sum())
    if flips:
        return f"head prediction changes on {flips}/{len(ref[-1])} probe images"
    return None


def choose_path(
    part: FrozenPart, probe: torch.Tensor, work_images: int, predict: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[PathChoice, Runner]:
    """Measure every candidate on `probe` and return the fastest faithful one with its runner.

    work_images: how many images the run will push through `part`, to decide whether an ONNX export
    pays off. predict: last tap output -> predicted class (fidelity check).
    """
    measured, refused, runners = {}, {}, {}
    ref_run = torch_runner(part, FrozenPath.EAGER)
    measured[FrozenPath.EAGER.value], ref = _throughput(ref_run, probe)
    runners[FrozenPath.EAGER] = ref_run
    candidates = [FrozenPath.CHANNELS_LAST]
    if native_bf16():
        candidates.append(FrozenPath.BF16)
    else:
        refused[FrozenPath.BF16.value] = "no native bf16 on this CPU (avx512_bf16 / amx_bf16 / bf16 flags)"

    def consider(path: FrozenPath, run: Runner) -> None:
        rate, outs = _throughput(run, probe)
        measured[path.value] = rate
        why = _drift(outs, ref, predict)
        if why:
            refused[path.value] = why
        else:
            runners[path] = run

    for path in candidates:
        consider(path, torch_runner(part, path))
    best = max(runners, key=lambda p: measured[p.value])
    remaining = work_images / measured[best.value]
    if remaining >= ONNX_WORTH_SECONDS:
        try:
            consider(FrozenPath.ONNXRUNTIME, onnx_runner(part, probe))
        except Exception as e:  # the exporter raises many types; torch stays a working path
            refused[FrozenPath.ONNXRUNTIME.value] = f"export failed: {type(e).__name__}: {str(e)[:200]}"
        best = max(runners, key=lambda p: measured[p.value])
    else:
        refused[FrozenPath.ONNXRUNTIME.value] = (
            f"export does not pay off: {work_images} images take ~{remaining:.0f}s on {best.value}"
            f" (< {ONNX_WORTH_SECONDS:.0f}s)"
        )
    return PathChoice(best, measured[best.value], measured, refused), runners[best]


def build_runner(part: FrozenPart, path: FrozenPath, example: torch.Tensor) -> Runner:
    if path is FrozenPath.ONNXRUNTIME:
        return onnx_runner(part, example)
    return torch_runner(part, path)


class FrozenCompute:
    """Per run: the chosen path (measured once, persisted in the run folder), and prefix caches."""

    def __init__(self, run: Path, *, reuse: bool = False) -> None:
        self.run = Path(run)
        self.choice_file = RunFolder(self.run).frozen_choice
        self.choice: PathChoice | None = None
        self.caches: dict[int, PrefixCache] = {}
        if reuse and self.choice_file.is_file():
            saved = read_json(self.choice_file)
            saved["path"] = FrozenPath(saved["path"])
            self.choice = PathChoice(**{**saved, "reused": True})

    def runner(self, part: FrozenPart, probe: torch.Tensor, work_images: int, predict: Callable) -> Runner:
        if self.choice is not None:
            return build_runner(part, self.choice.path, probe)
        self.choice, run = choose_path(part, probe, work_images, predict)
        rates = ", ".join(f"{p} {r:.1f}/s" for p, r in self.choice.measured.items())
        log(f"frozen compute: {self.choice.path.value} ({rates})")
        for p, why in self.choice.refused.items():
            log(f"frozen compute: not {p}: {why}")
        from edgetl_runtime.fileio import write_text_atomic

        write_text_atomic(self.choice_file, json.dumps(self.choice.to_dict(), indent=1))
        return run

    def summary(self) -> dict | None:
        return None if self.choice is None else self.choice.to_dict()


def memory_budget() -> int:
    """Bytes of RAM a prefix cache may take: a quarter of what is available now, at most 4 GiB."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 4 << 30
    return min(available // 4, 4 << 30)


def disk_budget(folder: Path) -> int:
    """Bytes of disk a prefix cache may take: half the free space of the run folder's disk."""
    return shutil.disk_usage(folder).free // 2


class PrefixCache:
    """Frozen-prefix outputs of `views` views of `n` images, float16, in RAM or a memmap on disk."""

    def __init__(self, views: int, n: int, shape: tuple[int, ...], folder: Path | None) -> None:
        self.views, self.n, self.shape = views, n, shape
        self._tmp = None
        self.val: torch.Tensor | None = None  # the validation images' prefix outputs, float32
        if folder is None:
            self.data = np.empty((views, n, *shape), dtype=np.float16)
        else:
            # Deleted with this object (or at exit); a killed run's leftover is swept by the run lock.
            self._tmp = tempfile.TemporaryDirectory(prefix=CACHE_PREFIX, dir=folder)
            file = Path(self._tmp.name) / "prefix.f16"
            self.data = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=(views, n, *shape))

    @property
    def on_disk(self) -> bool:
        return self._tmp is not None

    @classmethod
    def plan(cls, views: int, n: int, shape: tuple[int, ...], run: Path) -> PrefixCache | None:
        """As many views as the budgets hold (all in RAM, else on disk); None when not even one fits."""
        per_view = n * int(np.prod(shape)) * 2
        if views * per_view <= memory_budget():
            return cls(views, n, shape, None)
        # a killed run's leftover cache is swept by the run lock (its name starts with TMP_PREFIX);
        # sweeping here would delete the live caches of the other ranks under torchrun
        run.mkdir(parents=True, exist_ok=True)
        fit = min(views, disk_budget(run) // max(per_view, 1))
        return cls(fit, n, shape, run) if fit >= 1 else None

    def write(self, view: int, start: int, values: torch.Tensor) -> None:
        self.data[view, start : start + len(values)] = values.to(torch.float16).numpy()

    def read(self, views: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.data[views.numpy(), idx.numpy()])).float()

    @property
    def nbytes(self) -> int:
        return self.data.nbytes
