"""Text benchmarks: rows at several sequence lengths, tokenization timed apart, and `edgetl-run bench`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_benchmark_at_sequence_lengths_with_tokenization_apart(text_run):
    import edgetl
    from edgetl_runtime.cli import main

    report = edgetl.benchmark(text_run, backends=["onnxruntime-cpu"], warmup_s=0, min_s=0, min_runs=2)
    ok = [r for r in report.rows if r.status == "ok"]
    assert {(r.precision, r.batch, r.seq_len) for r in ok} == {
        (p, b, n) for p in ("fp32", "int8") for b in (1, 8) for n in (16, 64, 128, 256)
    }
    assert all(r.tokens_per_s == pytest.approx(r.batch * r.seq_len * 1000 / r.p50_ms) for r in ok)
    assert len(report.tokenization) == 8 and all(t.p50_ms > 0 for t in report.tokenization)
    assert json.loads((text_run / "benchmark_text.json").read_text())["rows"]
    bundle = str(text_run.parent / "bundle.tar.gz")
    assert main(["bench", bundle, "--min-s", "0", "--warmup-s", "0", "--min-runs", "2"]) == 0
