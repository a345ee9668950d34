"""Latency and throughput of models on every backend, with the method stated so a figure can be checked.

Method (also recorded in every report):
- each (backend, model) runs in its own spawned worker process, so the peak resident memory is that
  backend's alone and one backend's threads or allocator state cannot slow another;
- session creation is timed on its own; inputs are a pool of distinct preprocessed images (the run's
  validation images, a folder, or seeded synthetic images), prepared before any timing;
- the parent interleaves timing rounds across workers (round-robin, order rotated every round) so
  drift on a shared machine does not favour one backend; each round re-warms by time, then times
  single calls with ``time.perf_counter_ns`` (``edgetl_runtime.timing``, the device runtime's method);
- samples of all rounds are pooled; a row whose coefficient of variation exceeds ``NOISY_CV`` is
  measured again and the steadier attempt kept, with a warning if it stays noisy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgetl.bench.results import BenchReport, BenchRow, Status
from edgetl.bench.timed_models import describe_checkpoint, describe_model
from edgetl.bench.worker import (
    BENCH_BACKENDS,
    BenchBackend,
    Failed,
    Job,
    Ready,
    Round,
    Samples,
    Source,
    TimedModel,
    Worker,
)
from edgetl.console import log, track, warn
from edgetl.data.images import preprocess_readable
from edgetl.data.modality import source_modality
from edgetl.errors import EdgetlError
from edgetl.options import MAX_ROW_S, MIN_RUNS, MIN_S, ROUNDS, WARMUP_S
from edgetl.runfolder.folder import BenchmarkRecord, RunFolder, Step
from edgetl_runtime.modality import Modality
from edgetl_runtime.modelfile import LITERT
from edgetl_runtime.modelinfo import Precision
from edgetl_runtime.preprocess import PreprocessSpec, list_images, preprocess_image
from edgetl_runtime.timing import (
    NOISY_CV,
    available_memory_bytes,
    describe_environment,
    stats_from_samples,
)

POOL_BATCHES = 8  # distinct input batches per batch size that the timed calls cycle through
# Activations and runtime arenas of one call, in multiples of the input batch: efficientnet_lite0
# at 32 px took ~17x (20 GB for --batch 100000, issue 23); an estimate to refuse what cannot fit.
ACTIVATION_FACTOR = 16
SYNTHETIC_SEED = 0


def _input_pools(
    spec: PreprocessSpec, dtype: str, batches: Sequence[int], images: Sequence[Path], required: bool
) -> tuple[dict[int, list[np.ndarray]], str]:
    """Distinct preprocessed batches per batch size, made once before any timing.

    Without readable images the pool is seeded synthetic input, unless the user asked for images.
    """
    needed = POOL_BATCHES * max(batches)
    arrays, _, skipped = preprocess_readable(images, spec, "benchmark", limit=needed)
    if not arrays and required:
        raise EdgetlError(f"--images: none of the {len(images)} images is readable; give readable images")
    if arrays:
        source = f"{len(arrays)} real images" + (f" ({skipped} unreadable skipped)" if skipped else "")
    else:
        rng = np.random.default_rng(SYNTHETIC_SEED)
        arrays = [
            preprocess_image(rng.integers(0, 256, (spec.crop, spec.crop, 3), dtype=np.uint8), spec)
            for _ in range(needed)
        ]
        source = f"{needed} synthetic images (seed {SYNTHETIC_SEED})"
    n = len(arrays)
    pools = {
        b: [np.stack([arrays[(k * b + j) % n] for j in range(b)]).astype(dtype) for k in range(POOL_BATCHES)]
        for b in batches
    }
    return pools, source


def _resolve_run(run: Path) -> tuple[list[Path], Path | None, list[Path]]:
    folder = RunFolder(run)
    models, checkpoint = folder.onnx_models(), folder.checkpoint()
    # a run exported with --format litert is timed in that format too, beside its ONNX models
    models += [p for p in map(folder.model_file, ("fp32", "int8"), [LITERT.suffix] * 2) if p.is_file()]
    if not models and checkpoint is None:
        raise EdgetlError(
            f"{run}: no model.onnx, model.int8.onnx or checkpoint; run `edgetl export {run}` first"
        )
    images: list[Path] = []
    if folder.splits.is_file():
        images = [Path(p) for p, _ in folder.load_splits().val]
    return models, checkpoint, images


def benchmark(models: Sequence[str | Path] | str | Path, **options):
    """Time a run's models (or model files) with the benchmark of their modality (see `_benchmark_images`
    for images, `edgetl.bench.text` for text)."""
    first = models if isinstance(models, (str, Path)) else (models[0] if models else None)
    return BENCHMARKS[source_modality(first)](models, **options)


def _benchmark_text(
    models, *, backends=None, batches=None, threads=None, warmup_s=None, min_s=None, min_runs=None,
    seq_lengths=None, **rest,
):  # fmt: skip
    from edgetl.bench.text import BATCHES, SEQ_LENGTHS, benchmark_text
    from edgetl.data.texts import read_recorded
    from edgetl.exporter.text import EXAMPLE_TEXTS
    from edgetl.runfolder.splits import Splits

    if rest.get("images") or rest.get("checkpoint"):
        raise EdgetlError(
            "--images and --checkpoint are for image models; a text model is timed on token batches"
        )
    run = Path(models) if isinstance(models, (str, Path)) and Path(models).is_dir() else None
    if run is not None:
        folder = RunFolder(run)
        paths = [p for p in (folder.model, folder.int8) if p.is_file()]
        val = Splits.load(run).val[:32]
        texts = read_recorded([p for p, _ in val]) or list(EXAMPLE_TEXTS)
    else:
        paths = [Path(m) for m in ([models] if isinstance(models, (str, Path)) else models)]
        texts = list(EXAMPLE_TEXTS)
    timing = {
        k: v for k, v in (("warmup_s", warmup_s), ("min_s", min_s), ("min_runs", min_runs)) if v is not None
    }
    return benchmark_text(
        paths, run=run, texts=texts, backends=backends, batches=tuple(batches) if batches and tuple(batches) != (1,) else BATCHES,
        threads=threads, seq_lengths=tuple(seq_lengths or SEQ_LENGTHS), **timing,
    )  # fmt: skip


def _benchmark_images(
    models: Sequence[str | Path] | str | Path,
    *,
    backends: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    warmup_s: float = WARMUP_S,
    min_s: float = MIN_S,
    min_runs: int = MIN_RUNS,
    rounds: int = ROUNDS,
    repeats: int = 1,
    checkpoint: str | Path | None = None,
    images: str | Path | Sequence[str | Path] | None = None,
) -> BenchReport:
    """Time every model on every backend (all of BENCH_BACKENDS when ``backends`` is None).

    ``models`` is a list of ONNX (or OpenVINO .xml) files, or a run folder: then its model.onnx and
    model.int8.onnx, its checkpoint for the ``pytorch`` baseline and its validation images are used,
    and the report is also written to RUN/benchmark.json. ``threads`` None keeps each library's
    default (the effective count is reported); ``images`` a folder or list of images for the input
    pool (default: the run's validation images, else seeded synthetic images). Each row gets at least
    ``min_s`` seconds and ``min_runs`` timed calls, split over ``rounds`` interleaved rounds; a noisy
    row is measured up to ``repeats`` more times.
    """
    run = None
    image_paths: list[Path] = []
    if isinstance(models, (str, Path)) and Path(models).is_dir():
        run = Path(models)
        model_paths, found_checkpoint, image_paths = _resolve_run(run)
        checkpoint = checkpoint or found_checkpoint
    else:
        model_paths = [Path(m) for m in ([models] if isinstance(models, (str, Path)) else models)]
    if images is not None:
        image_paths = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
        if not image_paths:
            # an explicit pool that silently became synthetic input would misreport what was measured
            problem = "no such folder" if not Path(str(images)).is_dir() else "no images found in it"
            raise EdgetlError(f"--images {images}: {problem}; give a folder of images, or drop --images")
    _check_arguments(backends, batches, threads, warmup_s, min_s, min_runs, rounds)
    with contextlib.ExitStack() as stack:
        if run is not None:
            # held while timing too, so the models cannot be replaced under the measurement
            folder = stack.enter_context(RunFolder(run).lock("benchmark"))
            folder.check_for(Step.BENCHMARK)
        names = list(backends) if backends else list(BENCH_BACKENDS)
        described = [describe_model(p) for p in model_paths]
        _check_memory(batches, described)
        checkpoint_model = describe_checkpoint(Path(checkpoint), described) if checkpoint else None

        rows, workers, pool_source = _plan(
            names,
            described,
            checkpoint_model,
            batches,
            threads,
            image_paths,
            images_required=images is not None,
        )
        try:
            _measure(workers, batches, warmup_s, min_s, min_runs, rounds, repeats, rows)
        finally:
            for w in workers:
                rss = w.close()
                for key in [k for k in rows if k[:2] == (w.backend.name, str(w.model.path))]:
                    rows[key] = replace(rows[key], peak_rss_mb=rss)
        report = BenchReport(
            rows=tuple(rows.values()),
            method={
                "timer": "time.perf_counter_ns around one call (+ device synchronisation on GPU)",
                "process": "one spawned worker process per (backend, model); peak RSS is that process's",
                "warmup_s": warmup_s,
                "min_s": min_s,
                "min_runs": min_runs,
                "rounds": rounds,
                "interleaved": "round-robin across workers, order rotated each round, re-warm before each round",
                "repeats_when_noisy": repeats,
                "noisy_cv": NOISY_CV,
                "inputs": pool_source,
                "pool_batches": POOL_BATCHES,
                "threads_requested": threads,
                "batches": list(batches),
            },
            environment=describe_environment(("numpy", "onnxruntime", "openvino", "torch", "edgetl")),
        )
        for r in report.rows:
            if r.noisy:
                warn(
                    f"{r.backend} {r.model} batch {r.batch}: noisy (cv {r.cv:.2f} > {NOISY_CV}) after {r.attempts} attempts; treat its figures with care"
                )
        if run is not None:
            measured = [*model_paths, *([Path(checkpoint)] if checkpoint else [])]
            folder.save_benchmark(
                BenchmarkRecord.from_dict({**report.to_dict(), "sources": folder.sources(measured)})
            )
    return report


# one benchmark per modality, chosen by the model (edgetl/data/modality.py)
BENCHMARKS = {Modality.IMAGE: _benchmark_images, Modality.TEXT: _benchmark_text}


def _check_arguments(backends, batches, threads, warmup_s, min_s, min_runs, rounds) -> None:
    unknown = [b for b in backends or () if b not in BENCH_BACKENDS]
    if unknown:
        raise EdgetlError(f"unknown backend {', '.join(unknown)}; choose from: {', '.join(BENCH_BACKENDS)}")
    if not batches or any(int(b) < 1 for b in batches):
        raise EdgetlError(f"batch sizes must be positive integers, got {list(batches)}")
    if threads is not None and threads < 1:
        raise EdgetlError(f"--threads must be at least 1, got {threads}")
    # written so that NaN fails too: it compares false with everything
    if not (0 <= warmup_s <= MAX_ROW_S and 0 <= min_s <= MAX_ROW_S) or min_runs < 1 or rounds < 1:
        raise EdgetlError(
            f"warm-up and minimum times must be between 0 and {MAX_ROW_S:.0f} s, minimum runs and rounds >= 1"
        )


def _check_memory(batches: Sequence[int], models: list[TimedModel]) -> None:
    """Refuse a batch that cannot fit in memory before starting it (the kernel would kill it)."""
    available = available_memory_bytes()
    if available is None or not models:
        return
    batch = max(batches)
    image = max(4 * int(np.prod(m.preprocess.input_shape(1))) for m in models)
    # the pool lives in this process and again in the worker, plus one call's activations
    needed = batch * image * (2 * POOL_BATCHES + ACTIVATION_FACTOR)
    if needed > available:
        gib = 1 << 30
        raise EdgetlError(
            f"--batch {batch}: needs about {needed / gib:.1f} GiB of memory ({2 * POOL_BATCHES + ACTIVATION_FACTOR} x "
            f"the {image / 1024:.0f} KiB input of each image), but {available / gib:.1f} GiB is available; "
            "use a smaller batch"
        )


def _plan(names, models, checkpoint, batches, threads, image_paths, images_required):
    """A row for every (backend, model, batch); a worker for every pair that can run."""
    rows: dict = {}
    workers: list[Worker] = []
    pools_by_spec: dict = {}
    pool_source = ""
    for name in names:
        backend = BENCH_BACKENDS[name]
        targets = [checkpoint] if backend.source == Source.CHECKPOINT else models
        if backend.source == Source.CHECKPOINT and checkpoint is None:
            for b in batches:
                rows[(name, "", b)] = BenchRow(
                    backend=name,
                    model="-",
                    precision=Precision.FP32,
                    batch=b,
                    status=Status.SKIPPED,
                    reason="no checkpoint: give a run folder or checkpoint=",
                )
            continue
        reason = backend.check()
        for model in targets:
            status, why = _applicability(backend, model, reason)
            for b in batches:
                rows[(name, str(model.path), b)] = BenchRow(
                    backend=name,
                    model=model.path.name,
                    precision=model.precision,
                    batch=b,
                    status=status,
                    reason=why,
                    model_path=str(model.path),
                    device=backend.device,
                    macs=model.macs,
                    model_size_mb=model.size_mb,
                )
            if status != Status.OK:
                continue
            pool_key = (model.preprocess, model.input_dtype)
            if pool_key not in pools_by_spec:
                pools_by_spec[pool_key] = _input_pools(*pool_key, batches, image_paths, images_required)
            pools, pool_source = pools_by_spec[pool_key]
            log(f"loading {name} {model.path.name}")
            worker = Worker(backend, model, Job(name, str(model.path), threads, pools))
            reply = worker.receive()
            if not isinstance(reply, Ready):
                worker.error = reply.reason if isinstance(reply, Failed) else f"unexpected reply {reply!r}"
                for b in batches:
                    rows[(name, str(model.path), b)] = replace(
                        rows[(name, str(model.path), b)], status=Status.FAILED, reason=worker.error
                    )
            else:
                for b in batches:
                    key = (name, str(model.path), b)
                    rows[key] = replace(
                        rows[key],
                        threads=reply.threads,
                        execution_precision=reply.execution_precision,
                        load_s=reply.load_s,
                        rss_before_load_mb=reply.rss_before_load_mb,
                        status=Status.FAILED if b in reply.errors else Status.OK,
                        reason=reply.errors.get(b, ""),
                    )
            workers.append(worker)
    return rows, workers, pool_source


def _applicability(backend: BenchBackend, model: TimedModel, reason: str | None) -> tuple[Status, str]:
    if reason:
        return Status.UNAVAILABLE, reason
    if model.path.suffix not in backend.formats:
        return Status.SKIPPED, f"{backend.name} reads {', '.join(backend.formats)} files"
    if model.precision == Precision.FP16 and backend.device != "gpu":
        # CPUs without native FP16 arithmetic convert every layer back to FP32: the figure would
        # measure the conversion, not the model
        return Status.SKIPPED, "FP16 models are benchmarked on GPU backends only"
    return Status.OK, ""


def _measure(workers, batches, warmup_s, min_s, min_runs, rounds, repeats, rows) -> None:
    """Interleaved rounds over all runnable (worker, batch) pairs; noisy rows measured again."""
    pending = [
        (w, b) for w in workers if not w.error for b in batches if rows[_key(w, b)].status == Status.OK
    ]
    for attempt in range(1 + repeats):
        if not pending:
            return
        if attempt:
            log(f"measuring {len(pending)} noisy row(s) again (attempt {attempt + 1})")
        samples = _rounds(pending, warmup_s, min_s, min_runs, rounds, rows)
        for pair, values in samples.items():
            key = _key(*pair)
            if rows[key].status != Status.OK:
                continue
            stats = stats_from_samples(values, pair[1])
            row = rows[key]
            if not row.attempts or stats.cv < row.cv:
                row = replace(
                    row,
                    **{k: v for k, v in stats.to_dict().items() if k != "batch"},
                    gops=2 * row.macs * stats.throughput / 1e9 if row.macs else None,
                    noisy=stats.noisy,
                )
            rows[key] = replace(
                row, attempts=row.attempts + 1, attempt_p50_ms=(*row.attempt_p50_ms, stats.p50_ms)
            )
        pending = [
            pair for pair in pending if rows[_key(*pair)].status == Status.OK and rows[_key(*pair)].noisy
        ]


def _key(worker: Worker, batch: int) -> tuple:
    return (worker.backend.name, str(worker.model.path), batch)


def _rounds(pairs, warmup_s, min_s, min_runs, rounds, rows) -> dict:
    samples: dict = {pair: [] for pair in pairs}
    per_round_runs = math.ceil(min_runs / rounds)
    for r in track(range(rounds), "benchmark rounds"):
        # the first round warms up fully; later ones re-warm what another worker's run pushed out of cache
        warm = warmup_s if r == 0 else warmup_s / rounds
        shift = r % len(pairs)
        for worker, batch in pairs[shift:] + pairs[:shift]:
            if rows[_key(worker, batch)].status != Status.OK:
                continue
            reply = worker.ask(
                Round(batch, warm, min_s / rounds, per_round_runs, len(samples[(worker, batch)]))
            )
            if isinstance(reply, Samples):
                samples[(worker, batch)].extend(reply.durations_ns)
            else:
                reason = reply.reason if isinstance(reply, Failed) else f"unexpected reply {reply!r}"
                rows[_key(worker, batch)] = replace(
                    rows[_key(worker, batch)], status=Status.FAILED, reason=reason
                )
        log(f"round {r + 1}/{rounds} done")
    return {pair: v for pair, v in samples.items() if v}
