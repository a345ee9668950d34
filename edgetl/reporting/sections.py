"""The sections of `edgetl report`, in page order (SECTIONS): each a function of the run's files that
returns its HTML, or says which command writes the artifact it needs.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from html import escape
from pathlib import Path

from edgetl.console import warn
from edgetl.reporting import plots
from edgetl.reporting.records import VERSIONED, RunFiles, Section
from edgetl.runfolder.folder import read_record
from edgetl.runfolder.records import CheckpointHeader
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.inputs import INPUT_KINDS, parse_modality
from edgetl_runtime.modality import Modality
from edgetl_runtime.timing import installed_versions

# ------------------------------------------------------------------------------------------ helpers


def pct(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.{digits}f}%" if abs(value) <= 1 else f"{value:.{digits}f}%"


def img(fig, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img class="plot" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def table(headers: list[str], rows: list[list], numeric_from: int = 1, cls: str = "") -> str:
    head = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts(items: list[tuple[str, str]]) -> str:
    return (
        '<dl class="facts">'
        + "".join(f"<div><dt>{escape(k)}</dt><dd>{v}</dd></div>" for k, v in items)
        + "</dl>"
    )


def missing(name: str, title: str, command: str, what: str) -> Section:
    body = f'<p class="missing">No {escape(what)} yet: run <code>{escape(command)}</code>, then this report again.</p>'
    return Section(name, title, body, command)


def mib(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 2**20:.2f} MiB" if size >= 2**17 else f"{size / 1024:.1f} KiB"


# ----------------------------------------------------------------------------------------- sections


# the run summary's "input" line, per modality (from the checkpoint header's spec)
INPUT_LINES = {
    Modality.IMAGE: lambda spec: f"{spec.get('crop', '–')} px ({escape(str(spec.get('interpolation', '')))})",
    Modality.TEXT: lambda spec: (
        f"up to {spec.get('max_length', '–')} tokens ({escape(str(spec.get('pooling', '')))} pooling)"
    ),
}


def section_summary(f: RunFiles) -> Section:
    s, header, splits = f.summary, f.checkpoint_header, f.splits
    if s is None and header is None:
        return missing("summary", "Run", f"edgetl train --data DATA --out {f.run}", "training summary")
    header, history = header or CheckpointHeader(), f.metrics or []
    spec = header.preprocess
    modality = parse_modality(header.modality, "checkpoint")
    labels = (s.labels if s else ()) or header.labels
    num_train = s.num_train if s else (len(splits.train) if splits else "–")
    num_val = s.num_val if s else (len(splits.val) if splits else "–")
    if s:
        best = f"{pct(s.best_val_accuracy)} at epoch {s.best_epoch}"
        trained = f"{s.train_seconds:.0f} s, {s.epochs} epochs on {escape(s.device)}"
    else:  # training still running or interrupted: what metrics.json has so far
        top = max(history, key=lambda r: r["val_accuracy"], default=None)
        best = f"{pct(top['val_accuracy'])} at epoch {top['epoch']} (so far)" if top else "–"
        trained = f"{sum(r.get('seconds', 0) for r in history):.0f} s in {len(history)} epochs (not finished)"
    items = [
        ("backbone", escape((s.backbone if s else "") or header.backbone or "–")),
        ("input", INPUT_LINES[modality](spec)),
        ("classes", str(len(labels))),
        (f"{INPUT_KINDS[modality].noun}s", f"{num_train} train / {num_val} val"),
        ("unreadable skipped", str(s.skipped if s else splits.skipped if splits else "–")),
        ("best val accuracy", best),
        ("training", trained),
    ]
    q = f.quantize
    if q:
        g = q.verdict()
        items.append(
            (
                "INT8 accuracy",
                f"{pct(g.int8)} ({g.drop:+.2f} points drop)" if g.drop is not None else pct(g.int8),
            )
        )
    rows = f.benchmark.rows if f.benchmark else ()
    fastest = min((r for r in rows if r.ok and r.batch == 1), key=lambda r: r.p50_ms, default=None)
    if fastest:
        items.append(("fastest, batch 1", f"{fastest.p50_ms:.2f} ms p50 ({escape(fastest.backend)} {escape(fastest.precision.upper())})"))  # fmt: skip
    if splits and splits.data_root:
        items.append(("data", f"<code>{escape(splits.data_root)}</code>"))
    return Section("summary", "Run", facts(items))


def section_details(f: RunFiles) -> Section:
    """Recipe, package versions and the hashes that tie the artifacts to their inputs."""
    header, s = f.checkpoint_header or CheckpointHeader(), f.summary
    recipe = header.recipe
    stages = recipe.get("stages", [])
    stage_rows = [
        [str(i + 1), str(st.get("epochs")), "frozen" if not st.get("unfreeze") else f"last {st['unfreeze']} stages",
         str(st.get("lr")), str(st.get("lr_backbone", "–"))]
        for i, st in enumerate(stages)
    ]  # fmt: skip
    run_stages = {st.index: st for st in (s.stages if s else ())}
    for row in stage_rows:
        done = run_stages.get(int(row[0]))
        row.append(f"{done.epochs_run}{' (early stop)' if done.stopped_early else ''}" if done else "–")
    keys = (
        "batch_size",
        "label_smoothing",
        "balance",
        "hflip",
        "weight_decay",
        "dropout",
        "patience",
        "seed",
    )
    recipe_line = ", ".join(f"{k} {escape(str(recipe[k]))}" for k in keys if k in recipe)
    body = ""
    if stage_rows:
        body += "<h3>Recipe</h3>" + table(
            ["stage", "epochs", "trains", "lr", "lr backbone", "epochs run"], stage_rows
        )
        body += f'<p class="note">{recipe_line}</p>'
    body += "<h3>Versions and lineage</h3>" + _lineage(f)
    return Section("details", "Recipe, versions and lineage", body)


def _lineage(f: RunFiles) -> str:
    rows = []
    bundle = f.bundle
    provenance = bundle[1].provenance if bundle else {}
    versions = provenance.get("versions") or {}
    now = {k: v for k, v in installed_versions(VERSIONED).items() if v}
    recorded = {k: v for k, v in versions.items() if v}
    out = '<p class="note">Making this report: ' + " · ".join(
        f"{escape(k)} {escape(v)}" for k, v in now.items()
    )
    if recorded:
        out += "<br>Recorded in the bundle: " + " · ".join(
            f"{escape(k)} {escape(str(v))}" for k, v in recorded.items()
        )
    out += "</p>"
    if provenance.get("git_commit"):
        rows.append(["git commit", provenance["git_commit"], "bundle manifest"])
    dataset = provenance.get("dataset") or {}
    if dataset.get("fingerprint"):
        rows.append(["dataset split", dataset["fingerprint"], "bundle manifest (paths, labels, contents)"])
    if provenance.get("checkpoint_sha256"):
        rows.append(["checkpoint", provenance["checkpoint_sha256"], "bundle manifest"])
    calibration = f.quantize.calibration_manifest if f.quantize else ""
    if calibration and Path(calibration).is_file():
        recorded = read_record(Path(calibration)) or {}
        rows.append(
            [
                "calibration set",
                sha256_file(calibration),
                f"{Path(calibration).name} ({len(recorded.get('files', []))} images)",
            ]
        )
        if recorded.get("model_sha256"):
            rows.append(["FP32 model calibrated", recorded["model_sha256"], "calibration manifest"])
    for path in (f.folder.best, f.folder.model, f.folder.int8):
        if path.is_file():
            rows.append([path.name, sha256_file(path), "sha256 of the file now"])
    if rows:
        out += table(["what", "sha256", "recorded in"], [[escape(a), f"<code>{escape(b)}</code>", escape(c)] for a, b, c in rows], numeric_from=9, cls="hashes")  # fmt: skip
    return out


def section_curves(f: RunFiles) -> Section:
    if not f.metrics:
        return missing(
            "curves",
            "Learning curves",
            f"edgetl train --data DATA --out {f.run}",
            "per-epoch metrics (metrics.json)",
        )
    best = f.summary.best_epoch if f.summary else None
    figure = plots.curves_figure(f.metrics, best, stacked=True)
    return Section("curves", "Learning curves", img(figure, "loss and accuracy per epoch"), half=True)


def section_confusion(f: RunFiles) -> Section:
    c = f.confusion
    if c is None:
        return missing(
            "confusion",
            "Confusion matrix",
            f"edgetl train --data DATA --out {f.run}",
            "confusion matrix (confusion.json)",
        )
    note = "Rows: true class (number of validation images in brackets); each row sums to 100%. Best checkpoint, PyTorch."
    if len(c.labels) > plots.MAX_MATRIX_CLASSES:
        note = f"{len(c.labels)} classes are too many for a readable matrix: the most confused pairs instead."
    return Section("confusion", "Confusion matrix", f'<p class="note">{note}</p>' + img(plots.confusion_figure(list(c.labels), [list(r) for r in c.matrix], compact=len(c.labels) <= 16), "confusion matrix"), half=len(c.labels) <= 16)  # fmt: skip


def section_per_class(f: RunFiles) -> Section:
    c = f.confusion
    if c is None:
        return missing(
            "per_class", "Per class", f"edgetl train --data DATA --out {f.run}", "per-class results"
        )
    labels, m = c.labels, c.matrix
    n = len(labels)
    train_counts = [0] * n
    for _, i in f.splits.train if f.splits else ():
        train_counts[i] += 1
    quant = f.quantize.per_class if f.quantize else {}
    rows = []
    for i, name in enumerate(labels):
        support, predicted = sum(m[i]), sum(row[i] for row in m)
        recall = m[i][i] / support if support else None
        precision = m[i][i] / predicted if predicted else None
        q = quant.get(name) or {}
        delta = (q["int8"] - q["fp32"]) if q.get("int8") is not None and q.get("fp32") is not None else None
        bar = f'<span class="track"><span class="bar" style="width:{round(100 * (recall or 0))}%"></span></span>'
        rows.append([
            escape(name), str(train_counts[i]) if f.splits else "–", str(support), pct(precision),
            f'<span class="barcell">{bar}<span>{pct(recall)}</span></span>', pct(q.get("fp32")), pct(q.get("int8")),
            f'<span class="{"bad" if delta and delta < 0 else ""}">{"–" if delta is None else f"{100 * delta:+.1f}"}</span>',
        ])  # fmt: skip
    note = (
        "Precision and recall of the best checkpoint on the validation images. FP32/INT8: accuracy of the "
        "exported models on the quantization gate's images, per class; Δ in points. A class with few validation images moves by 100/val points per image."
        if quant
        else "FP32 vs INT8 per class appears after <code>edgetl quantize " + escape(str(f.run)) + "</code>."
    )
    headers = ["class", "train", "val", "precision", "recall", "FP32", "INT8", "Δ INT8"]
    return Section(
        "per_class", "Per class", f'<p class="note">{note}</p>' + table(headers, rows, cls="perclass")
    )


def section_quantization(f: RunFiles) -> Section:
    q = f.quantize
    if q is None:
        return missing(
            "quantization", "FP32 vs INT8", f"edgetl quantize {f.run}", "INT8 model (quantize.json)"
        )
    g = q.verdict()
    ci = g.drop_ci95
    ci_text = f"95% interval {ci[0]:+.2f} to {ci[1]:+.2f}" if ci else "no interval recorded"
    verdict = g.verdict or ("passed" if g.passed else "failed")
    calibration_images = "–" if g.calibration_images is None else str(g.calibration_images)
    items = [
        ("verdict", f'<span class="{"ok" if g.passed else "bad"}">{escape(verdict)}</span>'),
        ((g.metric or "accuracy") + " FP32 → INT8", f"{pct(g.fp32)} → {pct(g.int8)}"),
        ("drop", f"{g.drop:.2f} points ({ci_text}), allowed {g.max_drop}" if g.drop is not None else "–"),
        ("gate images", f"{g.images} (one image = {100 / g.images:.2f} points)" if g.images else "none (gate off)"),
        ("calibration images", calibration_images),
        ("cross-fit", f"{g.cross_fit['folds']} fold models judged the images; the model shipped is refit on all, agreeing with them on {pct(g.cross_fit['shipped_vs_fold_models_agreement'], 2)}" if g.cross_fit else "–"),
        ("top-1 agreement with FP32", pct(q.agreement, 2)),
        ("method", escape(f"{q.backend} {q.method}" + (f" ({q.settings['scheme']})" if "scheme" in q.settings else ""))),
        ("size", f"{mib(q.fp32_bytes or 0)} → {mib(q.int8_bytes)}" if q.int8_bytes else "–"),
    ]  # fmt: skip
    body = facts(items)
    if g.reason:
        body += f'<p class="note">{escape(g.reason)}</p>'
    attempts = q.attempts
    if len(attempts) > 1:
        rows = [[escape(a.method), str(len(a.exclude)), "–" if a.drop is None else f"{a.drop:.2f}",
                 pct(a.agreement, 2), f"{a.size_ratio:.2f}×", "yes" if a.passed else "no"] for a in attempts]  # fmt: skip
        body += "<h3>Gate attempts</h3>" + table(
            ["method", "float nodes", "drop (points)", "agreement", "size", "passed"], rows
        )
    return Section("quantization", "FP32 vs INT8", body)


def section_gallery(f: RunFiles) -> Section:
    from edgetl.data.modality import source_modality
    from edgetl.reporting.gallery import VIEWS, find_misses

    splits = f.splits
    if splits is None or (not f.folder.model.is_file() and f.checkpoint_header is None):
        return missing(
            "gallery",
            "Misclassified validation images",
            f"edgetl train --data DATA --out {f.run}",
            "validation split and model",
        )
    found = find_misses(f.run, list(splits.labels), list(splits.val))
    view = VIEWS[source_modality(f.run)]
    shown = found.misses[: f.gallery_limit]
    cards = [
        view.card(
            m,
            f"<figcaption><b>{escape(m.predicted)}</b> {m.score:.0%}"
            f'<br><span class="true">true: {escape(m.true)} ({m.true_score:.0%})</span></figcaption>',
        )
        for m in shown
    ]
    sample = f", a seeded sample of {found.evaluated}" if found.sampled else ""
    lead = (
        f"{len(found.misses)} of {found.evaluated} validation {view.noun} misclassified{sample} "
        f"({escape(found.source)}); most confident mistakes first"
        + (f", first {len(shown)} shown" if len(shown) < len(found.misses) else "")
        + (f"; {found.unreadable} unreadable skipped" if found.unreadable else "")
        + ". Caption: predicted label and its probability; the true label and its probability."
    )
    body = f'<p class="note">{lead}</p>' + (
        f'<div class="gallery">{"".join(cards)}</div>' if cards else "<p>No mistakes.</p>"
    )
    return Section("gallery", f"Misclassified validation {view.noun}", body)


def section_latency(f: RunFiles) -> Section:
    b = f.benchmark
    if b is None:
        return missing("latency", "Latency", f"edgetl benchmark {f.run}", "benchmark (benchmark.json)")
    ok = [r for r in b.rows if r.ok]
    env = b.environment
    threads = sorted({str(r.threads) for r in ok if r.threads})
    body = f'<p class="note">{escape(str(env.get("cpu", "")))}; threads {", ".join(threads) or "–"}; {escape(str(env.get("date", "")))}. Noisy rows (coefficient of variation too high after re-measuring) are marked.</p>'  # fmt: skip
    for batch in sorted({r.batch for r in ok}):
        body += img(plots.latency_figure([r.to_dict() for r in b.rows], batch), f"latency at batch {batch}")
    table_rows = [
        [escape(r.backend), escape(r.precision.upper()), str(r.batch), f"{r.p50_ms:.2f}",
         f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput:.0f}", f"{r.cv:.2f}" + (" noisy" if r.noisy else ""),
         f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "–"]
        for r in ok
    ]  # fmt: skip
    body += table(["backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "cv", "peak RSS MB"], table_rows, numeric_from=2)  # fmt: skip
    others = [r for r in b.rows if not r.ok]
    if others:
        body += "<h3>Not measured</h3><ul class='reasons'>" + "".join(
            f"<li><b>{escape(r.backend)}</b> {escape(r.precision)}: {escape(r.status)}, {escape(r.reason)}</li>" for r in others
        ) + "</ul>"  # fmt: skip
    return Section("latency", "Latency", body)


def section_bundle(f: RunFiles) -> Section:
    found = f.bundle
    if found is None:
        return missing(
            "bundle",
            "Bundle",
            f"edgetl package {f.run} --out {f.run}/bundle.tar.gz",
            "bundle in the run folder (or pass --bundle)",
        )
    path, manifest = found
    entries = [*manifest.models, *manifest.files]
    rows = [[f"<code>{escape(e.path)}</code>", escape(e.precision.value.upper() if e.precision else ""), mib(e.size),
             f"<code>{escape(e.sha256[:16])}…</code>"] for e in entries]  # fmt: skip
    rows.append(["<code>manifest.json</code>", "", "", "pins every file above"])
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
    lead = f"<code>{escape(str(path))}</code>: {mib(size)} on disk, created {escape(manifest.created)}; verified on load by <code>edgetl-run</code>."  # fmt: skip
    packaged_from = manifest.provenance.get("checkpoint_sha256")
    checkpoint = next(
        (p for p in (f.run / "best.safetensors", f.run / "last.safetensors") if p.is_file()), None
    )
    if packaged_from and checkpoint is not None and packaged_from != sha256_file(checkpoint):
        # a bundle left from an older training: it does not ship this run's model
        warn(
            f"{path}: stale bundle, packaged from another checkpoint than {checkpoint}; rebuild it with `edgetl package {f.run} --out {path} --overwrite`"
        )
        lead += (
            f' <span class="bad">Stale: packaged from another checkpoint ({escape(packaged_from[:16])}…) than '
            f"this run's {escape(checkpoint.name)}; rebuild it with <code>edgetl package {escape(str(f.run))} "
            f"--out {escape(str(path))} --overwrite</code>.</span>"
        )
    return Section("bundle", "Bundle", f'<p class="note">{lead}</p>' + table(["file", "precision", "size", "sha256"], rows, numeric_from=2))  # fmt: skip


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
