"""How edgetl times a model: one method shared by `edgetl benchmark` and `edgetl-run bench`.

The method, stated so a figure can be reproduced:
- warm-up by time (caches, lazy allocations, CPU frequency), not by a fixed count;
- timed runs until BOTH a minimum time and a minimum count are reached;
- each run timed alone with ``time.perf_counter_ns`` around the call and the device synchronisation,
  nothing else (inputs are prepared beforehand, so preprocessing and copies are not timed);
- inputs cycle through a pool of distinct arrays, so no result comes from one cached tensor.

numpy only (no torch), so the device runtime uses exactly the same code.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Above this coefficient of variation a measurement is called noisy (warned about and repeated).
NOISY_CV = 0.15


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one call on one batch, in milliseconds; throughput in images per second."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    cv: float  # std / mean: the run's own noise
    runs: int
    batch: int
    throughput: float  # images/s at the mean latency

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    def to_dict(self) -> dict:
        return asdict(self)


def stats_from_samples(samples_ns: Sequence[int], batch: int) -> LatencyStats:
    """Summarise raw per-call durations (ns); pooled samples from several rounds are fine."""
    if len(samples_ns) == 0:
        raise ValueError("no timing samples")
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return LatencyStats(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=mean,
        std_ms=std,
        min_ms=float(ms.min()),
        cv=std / mean if mean > 0 else 0.0,
        runs=int(ms.size),
        batch=int(batch),
        throughput=batch * 1000.0 / mean if mean > 0 else 0.0,
    )


def warm_up(
    run: Callable[[np.ndarray], object],
    inputs: Sequence[np.ndarray],
    warmup_s: float,
    sync: Callable[[], None] | None = None,
) -> int:
    """Run untimed for warmup_s seconds (at least once); returns how many calls it made."""
    deadline = time.perf_counter_ns() + int(warmup_s * 1e9)
    calls = 0
    while True:
        run(inputs[calls % len(inputs)])
        if sync is not None:
            sync()
        calls += 1
        if time.perf_counter_ns() >= deadline:
            return calls


def time_runs(
    run: Callable[[np.ndarray], object],
    inputs: Sequence[np.ndarray],
    *,
    min_s: float,
    min_runs: int,
    sync: Callable[[], None] | None = None,
    start: int = 0,
) -> list[int]:
    """Per-call durations in ns, until at least min_s seconds and min_runs calls.

    ``start`` offsets the position in the input pool, so successive rounds keep cycling through it.
    """
    if not inputs:
        raise ValueError("the input pool is empty")
    clock = time.perf_counter_ns
    pool = list(inputs)  # a plain list: indexing it inside the loop costs nothing measurable
    size = len(pool)
    samples: list[int] = []
    deadline = clock() + int(min_s * 1e9)
    i = start
    while True:
        x = pool[i % size]
        t0 = clock()
        run(x)
        if sync is not None:
            sync()
        t1 = clock()
        samples.append(t1 - t0)
        i += 1
        if len(samples) >= min_runs and t1 >= deadline:
            return samples


def measure_latency(
    run: Callable[[np.ndarray], object],
    inputs: Sequence[np.ndarray],
    *,
    warmup_s: float = 2.0,
    min_s: float = 5.0,
    min_runs: int = 50,
    sync: Callable[[], None] | None = None,
) -> LatencyStats:
    """Warm up, then time ``run`` on the input pool; every input must have the same batch size."""
    if not inputs:
        raise ValueError("the input pool is empty")
    first = inputs[0]  # an image model's array, or a text model's named arrays
    batch = int((next(iter(first.values())) if isinstance(first, dict) else first).shape[0])
    warm_up(run, inputs, warmup_s, sync)
    return stats_from_samples(time_runs(run, inputs, min_s=min_s, min_runs=min_runs, sync=sync), batch)


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get without swapping (Linux MemAvailable, else free physical
    pages); None where the OS does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where the OS does not say)."""
    try:
        # Linux: the high-water mark of this program alone. getrusage's ru_maxrss would also count
        # the parent's memory at fork time, since Linux carries it across fork and exec.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def physical_cores() -> int:
    """Physical cores this process may use: onnxruntime's and OpenVINO's default thread count."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no sysfs (macOS, Windows, containers hiding it): count logical CPUs
            return len(cpus)
    return len(cores)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def installed_versions(packages: Sequence[str]) -> dict[str, str | None]:
    """name -> installed version (None when not installed): the one place versions are collected."""
    # imported here, as platform and datetime below: a cold `edgetl-run predict` pays for none of them
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_environment(packages: Sequence[str] = ("numpy", "onnxruntime", "openvino")) -> dict:
    """What a latency figure depends on besides the model, so a reader can compare like with like."""
    import platform
    from datetime import datetime, timezone

    versions = installed_versions(packages)
    return {
        "cpu": cpu_model(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
