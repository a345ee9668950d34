"""Benchmark results: the report that holds one row per (backend, model, batch) with its status (the
rows are benchmark.json's own record type, runfolder.records.BenchRow) and its plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.console import quiet_third_party
from edgetl.errors import EdgetlError
from edgetl.runfolder.records import BenchRow, Status
from edgetl_runtime.fileio import atomic_output, write_text_atomic


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
