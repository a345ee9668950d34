"""The sections of `edgetl report`, in page order (SECTIONS): each a function of the run's files that
renders its template (reporting/templates/<name>.html.j2) with the text it shows, or says which
command writes the artifact it needs.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from edgetl.console import warn
from edgetl.reporting import plots
from edgetl.reporting.html import mib, pct, render
from edgetl.reporting.records import VERSIONED, RunFiles, Section
from edgetl.runfolder.records import CheckpointHeader, QuantizationRecord
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.inputs import INPUT_KINDS, parse_modality
from edgetl_runtime.modality import Modality
from edgetl_runtime.modelinfo import Precision
from edgetl_runtime.timing import installed_versions

TRAIN = "edgetl train --data DATA --out {run}"

# ------------------------------------------------------------------------------------------ helpers


def plot_uri(fig) -> str:
    return "data:image/png;base64," + base64.b64encode(plots.png_bytes(fig)).decode("ascii")


def section(name: str, title: str, *, half: bool = False, **context) -> Section:
    """The section `name` rendered from its own template, name.html.j2."""
    return Section(name, title, render(f"{name}.html.j2", **context), half=half)


def missing(name: str, title: str, command: str, what: str, run: Path) -> Section:
    command = command.format(run=run)
    return Section(name, title, render("missing.html.j2", what=what, command=command), command)


# ----------------------------------------------------------------------------------------- sections


# the run summary's "input" line, per modality (from the checkpoint header's spec)
INPUT_LINES = {
    Modality.IMAGE: lambda spec: f"{spec.crop} px ({spec.interpolation.value})",
    Modality.TEXT: lambda spec: f"up to {spec.max_length} tokens ({spec.pooling.value} pooling)",
}


def _int8_accuracy(q: QuantizationRecord) -> str:
    g = q.verdict()
    return f"{pct(g.int8)} ({g.drop:+.2f} points drop)" if g.drop is not None else pct(g.int8)


# the run summary's quantization line, by what quantize shipped
SHIPPED_LINES = {
    Precision.INT8: lambda q: ("INT8 accuracy", _int8_accuracy(q)),
    Precision.FP32: lambda q: ("INT8", f"FP32 shipped: {q.reason}"),
}


def section_summary(f: RunFiles) -> Section:
    s, header, splits = f.summary, f.checkpoint_header, f.splits
    if s is None and header is None:
        return missing("summary", "Run", TRAIN, "training summary", f.run)
    header, history = header or CheckpointHeader(), f.metrics or ()
    modality = parse_modality(header.modality, "checkpoint")
    labels = (s.labels if s else ()) or header.labels
    num_train = s.num_train if s else (len(splits.train) if splits else "–")
    num_val = s.num_val if s else (len(splits.val) if splits else "–")
    if s:
        best = f"{pct(s.best_val_accuracy)} at epoch {s.best_epoch}"
        trained = f"{s.train_seconds:.0f} s, {s.epochs} epochs on {s.device}"
    else:  # training still running or interrupted: what metrics.json has so far
        top = max(history, key=lambda r: r.val_accuracy, default=None)
        best = f"{pct(top.val_accuracy)} at epoch {top.epoch} (so far)" if top else "–"
        trained = f"{sum(r.seconds for r in history):.0f} s in {len(history)} epochs (not finished)"
    items = [
        ("backbone", (s.backbone if s else "") or header.backbone or "–"),
        ("input", INPUT_LINES[modality](f.input_spec) if f.input_spec else "–"),
        ("classes", str(len(labels))),
        (f"{INPUT_KINDS[modality].noun}s", f"{num_train} train / {num_val} val"),
        ("unreadable skipped", str(s.skipped if s else splits.skipped if splits else "–")),
        ("best val accuracy", best),
        ("training", trained),
    ]
    # a record may name any precision; only these two ship
    if f.quantize and (line := SHIPPED_LINES.get(f.quantize.shipped)):
        items.append(line(f.quantize))
    rows = f.benchmark.rows if f.benchmark else ()
    fastest = min((r for r in rows if r.ok and r.batch == 1), key=lambda r: r.p50_ms, default=None)
    if fastest:
        items.append(("fastest, batch 1", f"{fastest.p50_ms:.2f} ms p50 ({fastest.backend} {fastest.precision.upper()})"))  # fmt: skip
    return section("summary", "Run", items=items, data_root=splits.data_root if splits else "")


RECIPE_SHOWN = (
    "batch_size",
    "label_smoothing",
    "balance",
    "hflip",
    "weight_decay",
    "dropout",
    "patience",
    "seed",
)


def section_details(f: RunFiles) -> Section:
    """Recipe, package versions and the hashes that tie the artifacts to their inputs."""
    header, s = f.checkpoint_header or CheckpointHeader(), f.summary
    recipe = header.recipe
    run_stages = {st.index: st for st in (s.stages if s else ())}
    stage_rows = []
    for i, st in enumerate(recipe.stages, start=1):
        done = run_stages.get(i)
        stage_rows.append([
            str(i), str(st.epochs), f"last {st.unfreeze} stages" if st.unfreeze else "frozen", str(st.lr),
            "–" if st.lr_backbone is None else str(st.lr_backbone),
            f"{done.epochs_run}{' (early stop)' if done.stopped_early else ''}" if done else "–",
        ])  # fmt: skip
    settings = [(k, getattr(recipe, k)) for k in RECIPE_SHOWN]
    recipe_line = ", ".join(f"{k} {v}" for k, v in settings if v is not None)
    versions = {k: v for k, v in f.provenance.versions.items() if v}
    now = {k: v for k, v in installed_versions(VERSIONED).items() if v}
    return section(
        "details", "Recipe, versions and lineage", stage_rows=stage_rows, recipe_line=recipe_line,
        now=" · ".join(f"{k} {v}" for k, v in now.items()),
        recorded=" · ".join(f"{k} {v}" for k, v in versions.items()), hashes=_lineage(f),
    )  # fmt: skip


def _lineage(f: RunFiles) -> list[tuple[str, str, str]]:
    """(what, sha256, where it is recorded) for every input and artifact the run can name."""
    p = f.provenance
    rows = []
    if p.git_commit:
        rows.append(("git commit", p.git_commit, "bundle manifest"))
    if p.dataset and p.dataset.fingerprint:
        rows.append(("dataset split", p.dataset.fingerprint, "bundle manifest (paths, labels, contents)"))
    if p.checkpoint_sha256:
        rows.append(("checkpoint", p.checkpoint_sha256, "bundle manifest"))
    calibration = f.calibration
    if calibration is not None:
        path = Path(f.quantize.calibration_manifest)
        rows.append(("calibration set", sha256_file(path), f"{path.name} ({len(calibration.files)} images)"))
        if calibration.model_sha256:
            rows.append(("FP32 model calibrated", calibration.model_sha256, "calibration manifest"))
    for path in (f.folder.best, f.folder.model, f.folder.int8):
        if path.is_file():
            rows.append((path.name, sha256_file(path), "sha256 of the file now"))
    return rows


def section_curves(f: RunFiles) -> Section:
    if not f.metrics:
        return missing("curves", "Learning curves", TRAIN, "per-epoch metrics (metrics.json)", f.run)
    best = f.summary.best_epoch if f.summary else None
    figure = plots.curves_figure(f.metrics, best, stacked=True)
    return section("curves", "Learning curves", half=True, uri=plot_uri(figure))


def section_confusion(f: RunFiles) -> Section:
    c = f.confusion
    if c is None:
        return missing("confusion", "Confusion matrix", TRAIN, "confusion matrix (confusion.json)", f.run)
    note = "Rows: true class (number of validation images in brackets); each row sums to 100%. Best checkpoint, PyTorch."
    if len(c.labels) > plots.MAX_MATRIX_CLASSES:
        note = f"{len(c.labels)} classes are too many for a readable matrix: the most confused pairs instead."
    compact = len(c.labels) <= 16
    figure = plots.confusion_figure(list(c.labels), [list(r) for r in c.matrix], compact=compact)
    return section("confusion", "Confusion matrix", half=compact, lead=note, uri=plot_uri(figure))


def section_per_class(f: RunFiles) -> Section:
    c = f.confusion
    if c is None:
        return missing("per_class", "Per class", TRAIN, "per-class results", f.run)
    labels, m = c.labels, c.matrix
    train_counts = [0] * len(labels)
    for _, i in f.splits.train if f.splits else ():
        train_counts[i] += 1
    quant = f.quantize.per_class if f.quantize else {}
    rows = []
    for i, name in enumerate(labels):
        support, predicted = sum(m[i]), sum(row[i] for row in m)
        recall = m[i][i] / support if support else None
        q = quant.get(name)  # a class the gate saw no image of has no entry
        fp32, int8 = (q.fp32, q.int8) if q else (None, None)
        delta = int8 - fp32 if int8 is not None and fp32 is not None else None
        rows.append({
            "name": name, "train": str(train_counts[i]) if f.splits else "–", "val": str(support),
            "precision": pct(m[i][i] / predicted if predicted else None), "recall": recall,
            "fp32": pct(fp32), "int8": pct(int8), "worse": bool(delta and delta < 0),
            "delta": "–" if delta is None else f"{100 * delta:+.1f}",
        })  # fmt: skip
    return section("per_class", "Per class", rows=rows, quantized=bool(quant), run=str(f.run))


def section_quantization(f: RunFiles) -> Section:
    q = f.quantize
    if q is None:
        return missing("quantization", "FP32 vs INT8", "edgetl quantize {run}", "INT8 model (quantize.json)", f.run)  # fmt: skip
    attempts = [
        [a.method, str(len(a.exclude)), "–" if a.drop is None else f"{a.drop:.2f}", pct(a.agreement, 2),
         "–" if a.size_ratio is None else f"{a.size_ratio:.2f}×",
         "–" if a.latency_ms is None else f"{a.latency_ms:.2f} ms",
         (a.verdict or ("passed" if a.passed else "failed")) + (f" ({a.reason})" if a.reason else "")]
        for a in q.attempts
    ]  # fmt: skip
    if q.shipped is Precision.FP32:
        return section(
            "quantization", "FP32 vs INT8", passed=True, verdict="FP32 shipped", reason=f"FP32 shipped: {q.reason}",
            items=[("FP32 accuracy", pct(q.fp32_accuracy)), ("gate images", str(q.eval_images)),
                   ("calibration images", "–" if q.num_calibration is None else str(q.num_calibration)),
                   ("INT8 model", "none written")],
            attempts=attempts,
        )  # fmt: skip
    g, cf = q.verdict(), f.cross_fit
    ci = g.drop_ci95
    ci_text = f"95% interval {ci[0]:+.2f} to {ci[1]:+.2f}" if ci else "no interval recorded"
    calibration_images = "–" if g.calibration_images is None else str(g.calibration_images)
    items = [
        ((g.metric or "accuracy") + " FP32 → INT8", f"{pct(g.fp32)} → {pct(g.int8)}"),
        ("drop", f"{g.drop:.2f} points ({ci_text}), allowed {g.max_drop}" if g.drop is not None else "–"),
        ("gate images", f"{g.images} (one image = {100 / g.images:.2f} points)" if g.images else "none (gate off)"),
        ("calibration images", calibration_images),
        ("cross-fit", f"{cf.folds} fold models judged the images; the model shipped is refit on all, agreeing with them on {pct(cf.shipped_vs_fold_models_agreement, 2)}" if cf else "–"),
        ("top-1 agreement with FP32", pct(q.agreement, 2)),
        ("method", f"{q.backend} {q.method}" + (f" ({q.settings['scheme']})" if "scheme" in q.settings else "")),
        ("size", f"{mib(q.fp32_bytes or 0)} → {mib(q.int8_bytes)}" if q.int8_bytes else "–"),
    ]  # fmt: skip
    return section(
        "quantization", "FP32 vs INT8", passed=g.passed, verdict=g.verdict or ("passed" if g.passed else "failed"),
        items=items, reason=g.reason, attempts=attempts if len(attempts) > 1 else [],
    )  # fmt: skip


def section_gallery(f: RunFiles) -> Section:
    from edgetl.data.modality import source_modality
    from edgetl.reporting.gallery import VIEWS, find_misses

    splits = f.splits
    if splits is None or (not f.folder.model.is_file() and f.checkpoint_header is None):
        return missing(
            "gallery", "Misclassified validation images", TRAIN, "validation split and model", f.run
        )
    found = find_misses(f.run, list(splits.labels), list(splits.val))
    view = VIEWS[source_modality(f.run)]
    shown = found.misses[: f.gallery_limit]
    sample = f", a seeded sample of {found.evaluated}" if found.sampled else ""
    lead = (
        f"{len(found.misses)} of {found.evaluated} validation {view.noun} misclassified{sample} "
        f"({found.source}); most confident mistakes first"
        + (f", first {len(shown)} shown" if len(shown) < len(found.misses) else "")
        + (f"; {found.unreadable} unreadable skipped" if found.unreadable else "")
        + ". Caption: predicted label and its probability; the true label and its probability."
    )
    cards = [(m, view.card(m)) for m in shown]
    return section(
        "gallery", f"Misclassified validation {view.noun}", lead=lead, cards=cards, card=view.template
    )


def section_latency(f: RunFiles) -> Section:
    b = f.benchmark
    if b is None:
        return missing("latency", "Latency", "edgetl benchmark {run}", "benchmark (benchmark.json)", f.run)
    ok = [r for r in b.rows if r.ok]
    env = f.bench_environment
    threads = sorted({str(r.threads) for r in ok if r.threads})
    note = f"{env.cpu}; threads {', '.join(threads) or '–'}; {env.date}. Noisy rows (coefficient of variation too high after re-measuring) are marked."  # fmt: skip
    plots_by_batch = [
        (plot_uri(plots.latency_figure(b.rows, batch)), f"latency at batch {batch}")
        for batch in sorted({r.batch for r in ok})
    ]
    rows = [
        [r.backend, r.precision.upper(), str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
         f"{r.throughput:.0f}", f"{r.cv:.2f}" + (" noisy" if r.noisy else ""),
         f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "–"]
        for r in ok
    ]  # fmt: skip
    others = [(r.backend, r.precision, r.status.value, r.reason) for r in b.rows if not r.ok]
    return section("latency", "Latency", lead=note, plots=plots_by_batch, rows=rows, others=others)


def section_bundle(f: RunFiles) -> Section:
    found = f.bundle
    if found is None:
        return missing(
            "bundle", "Bundle", "edgetl package {run} --out {run}/bundle.tar.gz",
            "bundle in the run folder (or pass --bundle)", f.run,
        )  # fmt: skip
    path, manifest = found
    entries = [
        (e.path, e.precision.value.upper() if e.precision else "", mib(e.size), e.sha256[:16])
        for e in (*manifest.models, *manifest.files)
    ]
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
    packaged_from = f.provenance.checkpoint_sha256
    checkpoint = next(
        (p for p in (f.run / "best.safetensors", f.run / "last.safetensors") if p.is_file()), None
    )
    stale = bool(packaged_from and checkpoint is not None and packaged_from != sha256_file(checkpoint))
    if stale:  # a bundle left from an older training: it does not ship this run's model
        warn(
            f"{path}: stale bundle, packaged from another checkpoint than {checkpoint}; rebuild it with `edgetl package {f.run} --out {path} --overwrite`"
        )
    return section(
        "bundle", "Bundle", path=str(path), size=mib(size), created=manifest.created, entries=entries,
        stale=stale, packaged_from=(packaged_from or "")[:16], checkpoint=checkpoint.name if checkpoint else "",
        rebuild=f"edgetl package {f.run} --out {path} --overwrite",
    )  # fmt: skip


# Page order: what a person looks at first fits a 1280x2000 screen (summary, curves, confusion,
# mistakes, latency); the tables follow.
SECTIONS: tuple[Callable[[RunFiles], Section], ...] = (
    section_summary,
    section_curves,
    section_confusion,
    section_gallery,
    section_latency,
    section_quantization,
    section_per_class,
    section_bundle,
    section_details,
)
