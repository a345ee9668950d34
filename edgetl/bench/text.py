"""Latency of a text model where the time goes: the model at sequence lengths 16, 64, 128 and 256
with batch 1 and 8 on every backend (unavailable ones with their reason), tokens per second, and the
tokenizer's own time at the same sizes, measured separately.

Timing is in-process with the runtime's method (`edgetl_runtime.timing`: warm-up, then at least
`min_s` seconds and `min_runs` calls over a pool of distinct inputs). The report is written to
RUN/benchmark_text.json when a run folder is given.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.console import log
from edgetl_runtime.backends import BACKENDS, load_session
from edgetl_runtime.fileio import write_text_atomic
from edgetl_runtime.modelfile import read_model_info
from edgetl_runtime.textinput import TextSpec, encode_texts, example_feed
from edgetl_runtime.timing import describe_environment, measure_latency

SEQ_LENGTHS = (16, 64, 128, 256)
BATCHES = (1, 8)
REPORT = "benchmark_text.json"
TOKENIZE_RUNS = 50


@dataclass(frozen=True)
class TextBenchRow:
    backend: str
    model: str
    precision: str
    batch: int
    seq_len: int
    status: str  # ok | unavailable | failed
    reason: str = ""
    p50_ms: float | None = None
    p90_ms: float | None = None
    tokens_per_s: float | None = None
    texts_per_s: float | None = None
    threads: int | None = None
    runs: int = 0


@dataclass(frozen=True)
class TokenizeRow:
    batch: int
    seq_len: int
    p50_ms: float  # tokenizing `batch` real texts, truncated at seq_len, padded to the longest


@dataclass(frozen=True)
class TextBenchReport:
    rows: tuple[TextBenchRow, ...]
    tokenization: tuple[TokenizeRow, ...]
    method: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def artifact(self) -> Path | None:
        return self.path

    def to_dict(self) -> dict:
        return {
            "rows": [asdict(r) for r in self.rows],
            "tokenization": [asdict(t) for t in self.tokenization],
            "method": self.method,
            "environment": self.environment,
        }


def _tokenize_rows(spec: TextSpec, texts: list[str], sizes) -> list[TokenizeRow]:
    rows = []
    for batch, length in sizes:
        at = TextSpec(spec.tokenizer, length, spec.pooling, spec.inputs)
        chunk = (texts * (batch // max(1, len(texts)) + 1))[:batch]
        encode_texts(chunk, at)  # the tokenizer is built once per spec: not part of the figure
        times = []
        for _ in range(TOKENIZE_RUNS):
            t = time.perf_counter()
            encode_texts(chunk, at)
            times.append(time.perf_counter() - t)
        rows.append(TokenizeRow(batch, length, 1000 * float(np.median(times))))
    return rows


def benchmark_text(
    models: list[Path], *, run: Path | None, texts: list[str], backends=None, batches=BATCHES,
    seq_lengths=SEQ_LENGTHS, threads: int | None = None, warmup_s: float = 1.0, min_s: float = 3.0,
    min_runs: int = 30,
) -> TextBenchReport:  # fmt: skip
    names = list(backends) if backends else [n for n in BACKENDS if BACKENDS[n].device == "cpu"]
    rows = []
    spec = None
    rng = np.random.default_rng(0)
    for path in models:
        info = read_model_info(path)
        spec = info.preprocess
        for name in names:
            backend = BACKENDS[name]
            reason = backend.check() or (
                "" if path.suffix in backend.formats else f"reads {', '.join(backend.formats)}"
            )
            if reason:
                rows += [TextBenchRow(name, path.name, info.precision, b, n, "unavailable", reason) for b in batches for n in seq_lengths]  # fmt: skip
                continue
            try:
                session = load_session(path, name, threads)
            except Exception as e:
                rows += [TextBenchRow(name, path.name, info.precision, b, n, "failed", str(e).splitlines()[0]) for b in batches for n in seq_lengths]  # fmt: skip
                continue
            for b in batches:
                for n in seq_lengths:
                    pool = [example_feed(spec, b, n, rng) for _ in range(4)]
                    try:
                        stats = measure_latency(
                            session.run, pool, warmup_s=warmup_s, min_s=min_s, min_runs=min_runs
                        )
                    except Exception as e:
                        rows.append(
                            TextBenchRow(
                                name, path.name, info.precision, b, n, "failed", str(e).splitlines()[0]
                            )
                        )
                        continue
                    row = TextBenchRow(
                        name, path.name, info.precision, b, n, "ok", p50_ms=stats.p50_ms, p90_ms=stats.p90_ms,
                        tokens_per_s=b * n * 1000 / stats.p50_ms, texts_per_s=b * 1000 / stats.p50_ms,
                        threads=getattr(session, "threads", None), runs=stats.runs,
                    )  # fmt: skip
                    rows.append(row)
                    log(
                        f"  {name} {info.precision} batch {b} x {n} tokens: p50 {stats.p50_ms:.2f} ms, {row.tokens_per_s:.0f} tokens/s"
                    )
    tokenization = _tokenize_rows(spec, texts, [(b, n) for b in batches for n in seq_lengths]) if spec else []
    report = TextBenchReport(
        tuple(rows), tuple(tokenization),
        method={"timing": "in-process, warm-up then >= min_s and >= min_runs over 4 distinct random-token inputs",
                "warmup_s": warmup_s, "min_s": min_s, "min_runs": min_runs, "threads": threads,
                "tokenization": f"median of {TOKENIZE_RUNS} calls on real texts"},
        environment=describe_environment(("numpy", "onnxruntime", "openvino", "tokenizers")),
    )  # fmt: skip
    if run is not None:
        path = write_text_atomic(run / REPORT, json.dumps(report.to_dict(), indent=1))
        report = TextBenchReport(report.rows, report.tokenization, report.method, report.environment, path)
    return report
