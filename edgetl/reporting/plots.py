"""Pictures of a run: learning curves, the confusion matrix and latency, drawn with matplotlib (Agg).

`write_training_plots(run)` is what `edgetl train` calls at the end: it writes RUN/curves.png and
RUN/confusion.png from metrics.json and confusion.json, and never fails a finished training run.
The figure builders return matplotlib Figures so the HTML report can embed the same pictures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.console import quiet_third_party, warn
from edgetl.errors import EdgetlError
from edgetl_runtime.fileio import atomic_output

if TYPE_CHECKING:
    from edgetl.runfolder.records import BenchRow, EpochRecord

# Beyond this many classes a matrix's cells and names get too small to read: show the worst pairs.
MAX_MATRIX_CLASSES = 40
TOP_PAIRS = 25
MAX_LABEL_CHARS = 22
# One palette for every figure: train vs val, FP32 vs INT8 keep their colours everywhere.
COLOURS = {"train": "#7f8c9a", "val": "#1f6fb2", "best": "#d9480f", "fp32": "#1f6fb2", "int8": "#e8890c"}
_PNG_METADATA = {"Software": None}  # keep matplotlib's URL out of the files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_label(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def png_bytes(fig, dpi: int = 110) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png", metadata=_PNG_METADATA)
    plt.close(fig)
    return buffer.getvalue()


def curves_figure(history: Sequence[EpochRecord], best_epoch: int | None = None, *, stacked: bool = False):
    """Loss and accuracy per epoch, train vs val; stages shaded and labelled, the best epoch marked.

    stacked: accuracy above loss (for a half-width column) instead of side by side.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("no epochs in the history")
    if stacked:
        fig, (acc_ax, loss_ax) = plt.subplots(2, 1, figsize=(6.4, 6.6), sharex=True)
    else:
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.0))
    epochs = [r.epoch for r in history]
    for ax, key, title in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        train = [getattr(r, f"train_{key}") for r in history]
        val = [getattr(r, f"val_{key}") for r in history]
        ax.plot(epochs, train, "--", color=COLOURS["train"], label="train")
        ax.plot(epochs, val, "-", color=COLOURS["val"], lw=2, label="val")
        if len(epochs) <= 40:
            ax.plot(epochs, val, "o", color=COLOURS["val"], ms=3)
        ax.set_title(title, fontsize=11)
        if not stacked or ax is loss_ax:
            ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
        _mark_stages(ax, history)
        if best_epoch is not None and best_epoch in epochs:
            ax.axvline(best_epoch, color=COLOURS["best"], lw=1, alpha=0.6)
            ax.plot(
                [best_epoch], [val[epochs.index(best_epoch)]], "*", color=COLOURS["best"], ms=13, zorder=5
            )
    acc_ax.set_ylim(max(0.0, min(min(r.val_accuracy, r.train_accuracy) for r in history) - 0.05), 1.01)
    if best_epoch is not None and best_epoch in epochs:
        best = history[epochs.index(best_epoch)]
        acc_ax.plot([], [], "*", color=COLOURS["best"], ms=10, label=f"best: epoch {best_epoch}")
        acc_ax.annotate(
            f"{best.val_accuracy:.3f}",
            (best_epoch, best.val_accuracy),
            xytext=(7, -14),
            textcoords="offset points",
            ha="left",
            fontsize=9,
            color=COLOURS["best"],
        )
    acc_ax.legend(loc="lower right", fontsize=9)
    with quiet_third_party():  # matplotlib warns "Tight layout not applied" on small figures
        fig.tight_layout()
    return fig


def _mark_stages(ax, history: Sequence[EpochRecord]) -> None:
    """Alternate shading per stage and a label at its start: which stage, how much is unfrozen."""
    stages: list[tuple[int, int, int, int]] = []  # (stage, unfreeze, first epoch, last epoch)
    for r in history:
        if stages and stages[-1][0] == r.stage:
            stages[-1] = (*stages[-1][:3], r.epoch)
        else:
            stages.append((r.stage, r.unfreeze, r.epoch, r.epoch))
    for i, (stage, unfreeze, first, last) in enumerate(stages):
        if i % 2:
            ax.axvspan(first - 0.5, last + 0.5, color="#eef2f7", zorder=0)
        if i:
            ax.axvline(first - 0.5, color="#555", lw=0.8, ls=":")
        what = "frozen" if not unfreeze else f"unfreeze {unfreeze}"
        # Later stages are labelled upright along their boundary: short stages have no room across.
        ax.text(
            first - 0.4,
            0.98,
            f"stage {stage}: {what}",
            transform=ax.get_xaxis_transform(),
            rotation=90 if i else 0,
            ha="left",
            va="top",
            fontsize=8,
            color="#444",
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1},
        )


def _normalised(matrix: Sequence[Sequence[int]]) -> list[list[float]]:
    return [[v / sum(row) if sum(row) else 0.0 for v in row] for row in matrix]


def confusion_figure(labels: Sequence[str], matrix: Sequence[Sequence[int]], *, compact: bool = False):
    """Row-normalised confusion matrix; beyond MAX_MATRIX_CLASSES, the most confused pairs instead.

    compact: a smaller canvas (so relatively larger text) for a half-width column of the report.
    """
    if len(labels) > MAX_MATRIX_CLASSES:
        return confused_pairs_figure(labels, matrix)
    plt = _pyplot()
    n = len(labels)
    norm = _normalised(matrix)
    support = [sum(row) for row in matrix]
    # Cells shrink with n; the figure grows so names stay legible (matplotlib sizes are in points).
    side = min(13.0, max(4.8, 2.6 + 0.34 * n)) * (0.8 if compact else 1.0)
    label_size = max(7.0, min(11.0, 200 / (n + 8)))
    fig, ax = plt.subplots(figsize=(side + 1.6, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [short_label(x) for x in labels]
    ax.set_xticks(range(n), names, rotation=45 if n <= 12 else 90, ha="right" if n <= 12 else "center",
                  rotation_mode="anchor" if n <= 12 else "default", fontsize=label_size)  # fmt: skip
    ax.set_yticks(
        range(n), [f"{name} ({s})" for name, s in zip(names, support, strict=True)], fontsize=label_size
    )
    ax.set_xlabel("predicted", fontsize=10)
    ax.set_ylabel("true class (validation images)", fontsize=10)
    if n <= 20:
        cell_size = max(6.0, min(10.0, 150 / (n + 5))) * (0.8 if compact else 1.0)
        for t in range(n):
            for p in range(n):
                if matrix[t][p]:
                    text = f"{norm[t][p]:.0%}" if n <= 12 else f"{round(100 * norm[t][p])}"
                    colour = "white" if norm[t][p] > 0.55 else "#1b2a3a"
                    ax.text(p, t, text, ha="center", va="center", fontsize=cell_size, color=colour)
    ax.set_xticks([x - 0.5 for x in range(1, n)], minor=True)
    ax.set_yticks([x - 0.5 for x in range(1, n)], minor=True)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)
    total = sum(support)
    correct = sum(matrix[i][i] for i in range(n))
    ax.set_title(
        f"confusion: share of each true class\n{correct}/{total} validation images correct ({correct / max(total, 1):.1%})",
        fontsize=10,
    )
    from matplotlib.ticker import PercentFormatter

    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, format=PercentFormatter(1.0))
    with quiet_third_party():  # matplotlib warns "Tight layout not applied" on small figures
        fig.tight_layout()
    return fig


def confused_pairs(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], top: int = TOP_PAIRS
) -> list[dict]:
    """Off-diagonal cells, most frequent first: true class, predicted class, count, share of the true class."""
    pairs = [
        {"true": labels[t], "predicted": labels[p], "count": c, "share": c / sum(row)}
        for t, row in enumerate(matrix)
        for p, c in enumerate(row)
        if t != p and c
    ]
    return sorted(pairs, key=lambda d: (-d["count"], -d["share"], d["true"]))[:top]


def confused_pairs_figure(labels: Sequence[str], matrix: Sequence[Sequence[int]], top: int = TOP_PAIRS):
    plt = _pyplot()
    pairs = confused_pairs(labels, matrix, top)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * max(len(pairs), 3)))
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(labels)))
    title = (
        f"{len(labels)} classes: the {len(pairs)} most confused pairs "
        f"({correct}/{total} correct = {correct / max(total, 1):.1%})"
    )
    if not pairs:
        ax.text(0.5, 0.5, "no validation image was misclassified", ha="center", va="center")
        ax.set_axis_off()
    else:
        names = [f"{short_label(d['true'])} → {short_label(d['predicted'])}" for d in pairs]
        ys = range(len(pairs))
        ax.barh(ys, [d["count"] for d in pairs], color=COLOURS["val"])
        ax.set_yticks(ys, names, fontsize=9)
        ax.invert_yaxis()
        for y, d in zip(ys, pairs, strict=True):
            ax.text(d["count"], y, f"  {d['count']} ({d['share']:.0%} of its class)",
                    va="center", fontsize=8)  # fmt: skip
        ax.set_xlabel("validation images (true → predicted)")
        ax.set_xlim(0, max(d["count"] for d in pairs) * 1.35)
        ax.grid(axis="x", alpha=0.25)
    ax.set_title(title, fontsize=10)
    with quiet_third_party():  # matplotlib warns "Tight layout not applied" on small figures
        fig.tight_layout()
    return fig


def latency_figure(rows: Sequence[BenchRow], batch: int = 1):
    """p50 latency per backend, FP32 next to INT8, whiskers to p90; from benchmark.json rows."""
    plt = _pyplot()
    measured = [r for r in rows if r.ok and r.batch == batch and r.p50_ms]
    if not measured:
        raise ValueError(f"no measured row at batch {batch}")
    backends = list(dict.fromkeys(r.backend for r in measured))
    precisions = sorted({r.precision for r in measured}, key=lambda p: (p != "fp32", p))
    height = 0.8 / len(precisions)
    fig, ax = plt.subplots(figsize=(10, 1.3 + 0.55 * len(backends) * max(1, len(precisions) / 1.5)))
    top = max(r.p90_ms or r.p50_ms for r in measured)
    low = min(r.p50_ms for r in measured)
    # A slow baseline (PyTorch) next to INT8 spans orders of magnitude: a linear axis hides the fast rows.
    log = top / low > 15
    for i, precision in enumerate(precisions):
        picked = {r.backend: r for r in measured if r.precision == precision}
        ys = [j + (i - (len(precisions) - 1) / 2) * height for j, b in enumerate(backends) if b in picked]
        chosen = [picked[b] for b in backends if b in picked]
        p50 = [r.p50_ms for r in chosen]
        whisker = [max(0.0, (r.p90_ms or r.p50_ms) - r.p50_ms) for r in chosen]
        ax.barh(ys, p50, height * 0.92, xerr=[[0] * len(chosen), whisker], capsize=3,
                color=COLOURS.get(precision), label=precision.upper())  # fmt: skip
        for y, r in zip(ys, chosen, strict=True):
            end = r.p90_ms or r.p50_ms
            ax.text(end * 1.08 if log else end + top * 0.01, y, f"{r.p50_ms:.2f} ms", va="center",
                    fontsize=9)  # fmt: skip
    ax.set_yticks(range(len(backends)), backends, fontsize=10)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        ax.set_xlim(low / 2, top * 3)
    else:
        ax.set_xlim(0, top * 1.2)
    scale = ", log scale" if log else ""
    ax.set_xlabel(f"latency per call at batch {batch}, ms{scale} (bar: p50, whisker: p90)")
    ax.grid(axis="x", alpha=0.25)
    ax.legend(loc="lower right", fontsize=9)
    with quiet_third_party():  # matplotlib warns "Tight layout not applied" on small figures
        fig.tight_layout()
    return fig


def write_training_plots(run: str | Path) -> list[Path]:
    """RUN/curves.png and RUN/confusion.png from the run's JSON; a failure warns and returns what was written.

    Called when training ends: by then the run is complete on disk, and a plotting problem (a broken
    matplotlib, a full disk) must not turn a good run into a failed command.
    """
    from edgetl.runfolder.folder import RunFolder

    run = Path(run)
    folder = RunFolder(run)
    written = []
    try:
        history, summary, confusion = folder.load_metrics(), folder.load_summary(), folder.load_confusion()
        if history is None or confusion is None:
            raise EdgetlError(f"{folder.metrics.name} or {folder.confusion.name} missing")
        best_epoch = summary.best_epoch if summary else None
        written.append(save_png(curves_figure(history, best_epoch), folder.curves_png))
        matrix = [list(row) for row in confusion.matrix]
        written.append(save_png(confusion_figure(list(confusion.labels), matrix), folder.confusion_png))
    except Exception as e:  # plots are a bonus, the finished run is the result
        warn(
            f"{run}: could not draw the training plots ({type(e).__name__}: {e}); `edgetl report {run}` retries"
        )
    return written
