"""Run plots and the HTML report: files exist, the page is self-contained, sections say what is missing."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.bundler.package import build_bundle
from edgetl.cli import main
from edgetl.reporting import plots
from edgetl.reporting.report import build_report
from edgetl.runfolder.folder import RunFolder
from edgetl.trainer.recipe import PhasePlan, Recipe
from edgetl.trainer.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY = Recipe(
    stages=(PhasePlan(epochs=2, unfreeze=0, lr=1e-2),),
    image_size=32,
    hflip=False,
    batch_size=16,
    cache_views=1,
)
BENCH_ROWS = [
    {"backend": "onnxruntime-cpu", "model": m, "precision": p, "batch": 1, "status": "ok", "p50_ms": ms,
     "p90_ms": ms * 1.1, "p99_ms": ms * 1.3, "throughput": 1000 / ms, "cv": 0.02, "threads": 2, "peak_rss_mb": 90.0}
    for m, p, ms in (("model.onnx", "fp32", 4.0), ("model.int8.onnx", "int8", 2.5))
] + [{"backend": "onnxruntime-cuda", "model": "model.onnx", "precision": "fp32", "batch": 1, "status": "unavailable",
      "reason": "no GPU"}]  # fmt: skip


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "trained"
    train(digits_dir, run, recipe=TINY, device="cpu")
    return run


@pytest.fixture(scope="module")
def full_run(trained, tiny_run, tmp_path_factory):
    """tiny_run's exported and quantized models with a training record, a benchmark and a bundle."""
    run = shutil.copytree(tiny_run, tmp_path_factory.mktemp("report") / "full")
    for name in ("metrics.json", "confusion.json", "summary.json"):
        shutil.copy(trained / name, run / name)
    (run / "benchmark.json").write_text(json.dumps({"rows": BENCH_ROWS, "environment": {"cpu": "test cpu"}}))
    build_bundle(run, run / "bundle.tar.gz")
    return run


def test_train_writes_curves_and_confusion_png(trained):
    for path in (RunFolder(trained).curves_png, RunFolder(trained).confusion_png):
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 300


def test_broken_metrics_warn_and_do_not_raise(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("not json")
    assert plots.write_training_plots(tmp_path) == []
    assert "could not draw the training plots" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("n", [2, 10, 40, 41, 100])
def test_confusion_figure_adapts_to_class_count(n, tmp_path):
    labels = [f"class_{i}_with_a_rather_long_name" for i in range(n)]
    matrix = [[10 if t == p else (3 if p == (t + 1) % n else 0) for p in range(n)] for t in range(n)]
    fig = plots.confusion_figure(labels, matrix)
    ax = fig.axes[0]
    if n <= plots.MAX_MATRIX_CLASSES:
        assert len(ax.get_xticklabels()) == n and ax.images  # a matrix with every class named
    else:
        assert not ax.images and len(ax.get_yticklabels()) == plots.TOP_PAIRS  # the worst pairs
    plots.save_png(fig, tmp_path / "c.png")


def test_confused_pairs_are_most_frequent_first():
    matrix = [[5, 1, 0], [4, 5, 0], [0, 2, 5]]
    pairs = plots.confused_pairs(["a", "b", "c"], matrix)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("b", "a", 4),
        ("c", "b", 2),
        ("a", "b", 1),
    ]


def test_report_is_self_contained_with_every_section(full_run):
    report = build_report(full_run)
    html = report.path.read_text()
    assert not re.search(r"https?://|src=\"/", html)
    assert report.to_dict()["missing"] == {}
    assert html.count("data:image/png;base64,") >= 3  # curves, confusion, latency
    for text in ("onnxruntime-cuda", "bundle.tar.gz", "model.int8.onnx", "Misclassified", "no GPU"):
        assert text in html


def test_missing_artifacts_name_the_command(trained, tmp_path):
    result = CliRunner().invoke(main, ["report", str(trained), "--out", str(tmp_path / "r.html"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["report"] == str(tmp_path / "r.html")
    assert {"summary", "curves", "confusion", "gallery"} <= set(summary["sections"])
    assert summary["missing"]["latency"] == f"edgetl benchmark {trained}"
    assert "edgetl quantize" in summary["missing"]["quantization"]


def test_report_of_a_non_run_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--json"])
    assert result.exit_code == 1 and "not a run folder" in json.loads(result.stdout)["error"]["message"]


def test_report_renders_in_chromium(full_run, tmp_path):
    spec = importlib.util.spec_from_file_location("render_report", ROOT / "benchmarks" / "render_report.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    if render.find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    shot = render.screenshot(build_report(full_run).path, tmp_path / "shot.png", height=1600)
    assert render.blank_share(shot) < 0.97
