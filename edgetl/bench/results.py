"""Benchmark results: one row per (backend, model, batch) with its status, the report that holds them
(saved as RUN/benchmark.json through the run folder) and its plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from edgetl.console import quiet_third_party
from edgetl.errors import EdgetlError
from edgetl_runtime.fileio import atomic_output, write_text_atomic


class Status(str, Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # not installed or no device here; the reason says which
    FAILED = "failed"  # tried and raised; the error is kept
    SKIPPED = "skipped"  # does not apply (wrong file type, FP16 on CPU, no checkpoint)


@dataclass(frozen=True)
class BenchRow:
    backend: str
    model: str  # file name; model_path has the full path
    precision: str
    batch: int
    status: Status
    reason: str = ""  # why unavailable / skipped, or the error of a failed row
    model_path: str = ""
    device: str = ""
    threads: int | None = None  # effective CPU threads of the backend
    # What the backend computes in: "model" = the file's own types; OpenVINO runs FP32 files in bf16
    # on CPUs with bf16 support unless told otherwise, and a row must say so.
    execution_precision: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    cv: float | None = None
    runs: int = 0
    throughput: float | None = None  # images/s
    macs: int | None = None  # per image
    gops: float | None = None  # achieved: 2 * MACs * throughput / 1e9
    peak_rss_mb: float | None = None  # of the backend's own worker process
    rss_before_load_mb: float | None = None  # the same process before the session existed
    model_size_mb: float | None = None
    load_s: float | None = None  # session creation (compilation included)
    attempts: int = 0
    attempt_p50_ms: tuple[float, ...] = ()  # every attempt's p50, the kept one included
    noisy: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d["attempt_p50_ms"] = list(self.attempt_p50_ms)
        return d


@dataclass(frozen=True)
class BenchReport:
    rows: tuple[BenchRow, ...]
    method: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "method": self.method,
            "environment": self.environment,
        }

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    def fastest(self, precision: str, batch: int = 1) -> BenchRow | None:
        """The measured row with the lowest p50 for a precision and batch size."""
        rows = [
            r for r in self.rows if r.status == Status.OK and r.precision == precision and r.batch == batch
        ]
        return min(rows, key=lambda r: r.p50_ms, default=None)


def plot_report(report: BenchReport, path: str | Path) -> Path:
    """Bar chart of p50 latency with p90 whiskers per backend and precision, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report.rows if r.status == Status.OK]
    if not measured:
        raise EdgetlError("nothing to plot: no backend produced a measurement")
    batches = sorted({r.batch for r in measured})
    precisions = sorted({r.precision for r in measured})
    fig, axes = plt.subplots(
        1,
        len(batches),
        figsize=(max(6, 3 + 1.6 * len({r.backend for r in measured})) * len(batches), 4.5),
        squeeze=False,
    )
    width = 0.8 / len(precisions)
    for ax, batch in zip(axes[0], batches, strict=True):
        backends = list(dict.fromkeys(r.backend for r in measured if r.batch == batch))
        for i, precision in enumerate(precisions):
            picked = {r.backend: r for r in measured if r.batch == batch and r.precision == precision}
            xs = [j + (i - (len(precisions) - 1) / 2) * width for j, b in enumerate(backends) if b in picked]
            chosen = [picked[b] for b in backends if b in picked]
            if not chosen:
                continue
            p50 = [r.p50_ms for r in chosen]
            ax.bar(
                xs,
                p50,
                width,
                label=precision,
                yerr=[[0] * len(chosen), [r.p90_ms - r.p50_ms for r in chosen]],
                capsize=3,
            )
            for x, v in zip(xs, p50, strict=True):
                ax.annotate(f"{v:.1f}", (x, v / 2), ha="center", va="center", fontsize=8, color="white")
        ax.set_xticks(range(len(backends)), backends, rotation=20, ha="right")
        ax.set_ylabel("latency p50 (ms), whisker to p90")
        ax.set_title(f"batch {batch}")
        ax.legend(title="precision")
    env = report.environment
    threads = "/".join(str(t) for t in sorted({r.threads for r in measured if r.threads}))
    fig.suptitle(f"{env.get('cpu', '')}, threads {threads or 'n/a'}; {env.get('date', '')}", fontsize=9)
    with quiet_third_party():  # matplotlib warns "Tight layout not applied" on small figures
        fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
