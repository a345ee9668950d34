"""edgetl benchmark: rows for every backend, failures kept per row, sane statistics, exact MAC counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from badfiles import write_corrupt_image
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgetl.bench.benchmark import benchmark
from edgetl.bench.macs import count_macs
from edgetl.bench.results import BenchReport, Status, plot_report
from edgetl.bench.worker import BENCH_BACKENDS
from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl_runtime.backends import _cuda_reason
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelinfo import ModelInfo
from edgetl_runtime.preprocess import PreprocessSpec
from edgetl_runtime.timing import measure_latency

SIZE = 32
FAST = {"warmup_s": 0.05, "min_s": 0.1, "min_runs": 12, "rounds": 2, "repeats": 0}


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name: str, shape, seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)


def _tiny_graph(extra_nodes=(), size: int = SIZE) -> onnx.ModelProto:
    """Conv 3->8 (3x3) -> ReLU -> depthwise 3x3 stride 2 -> global pool -> Gemm 8->3, dynamic batch."""
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
        *extra_nodes,
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [_value("input", ["N", 3, size, size])],
        [_value("logits", ["N", 3])],
        [_init("w1", (8, 3, 3, 3)), _init("w2", (8, 1, 3, 3), 1), _init("w3", (3, 8), 2)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# conv1: 8 out channels * 32*32 * 3*3*3; depthwise: 8 * 16*16 * 1*3*3; gemm: 3 outputs * 8
TINY_MACS = 8 * 32 * 32 * 27 + 8 * 16 * 16 * 9 + 3 * 8


def _save(model: onnx.ModelProto, path, precision: str = "fp32"):
    info = ModelInfo(
        labels=("a", "b", "c"),
        preprocess=PreprocessSpec(crop=SIZE, resize=SIZE + 4, mean=(0.5,) * 3, std=(0.5,) * 3),
        backbone="tiny",
        precision=precision,
    )
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_models")
    fp32 = _save(_tiny_graph(), d / "model.onnx")
    # a valid ONNX file no backend can run: an operator from a domain nobody implements
    broken = _tiny_graph()
    broken.graph.node.insert(2, helper.make_node("Nope", ["r1"], ["r1b"], domain="example.nope"))
    broken.graph.node[3].input[0] = "r1b"
    broken.opset_import.append(helper.make_opsetid("example.nope", 1))
    return fp32, _save(broken, d / "broken.onnx")


@pytest.fixture(scope="session")
def report(tiny_models) -> BenchReport:
    return benchmark(list(tiny_models), **FAST)


def test_count_macs_single_conv_exact():
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [_value("x", ["batch", 3, 8, 8])],
        [_value("y", None)],
        [_init("w", (4, 3, 3, 3))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert count_macs(model) == 4 * 8 * 8 * 3 * 3 * 3


def test_count_macs_grouped_conv_and_gemm(tiny_models):
    assert count_macs(tiny_models[0]) == TINY_MACS


def test_every_backend_has_a_row_with_a_status(report):
    assert {r.backend for r in report.rows} == set(BENCH_BACKENDS)
    cuda = [r for r in report.rows if r.backend == "onnxruntime-cuda"]
    # machine-independent: unavailable with its reason where onnxruntime or the GPU lacks CUDA, else timed
    if _cuda_reason() is not None:
        assert cuda and all(r.status == Status.UNAVAILABLE and r.reason for r in cuda)
    else:
        assert {r.model: r.status for r in cuda} == {"model.onnx": Status.OK, "broken.onnx": Status.FAILED}
    torch_rows = [r for r in report.rows if r.backend == "pytorch"]
    assert all(r.status == Status.SKIPPED and "checkpoint" in r.reason for r in torch_rows)


def test_a_broken_model_fails_its_rows_and_the_others_go_on(report):
    rows = {(r.backend, r.model): r for r in report.rows}
    for backend in ("onnxruntime-cpu", "openvino-cpu"):
        assert rows[(backend, "broken.onnx")].status == Status.FAILED
        assert rows[(backend, "broken.onnx")].reason
        assert rows[(backend, "model.onnx")].status == Status.OK


def test_measured_rows_have_sane_statistics(report):
    measured = [r for r in report.rows if r.status == Status.OK]
    assert {r.backend for r in measured} >= {"onnxruntime-cpu", "openvino-cpu"}
    for r in measured:
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.runs >= FAST["min_runs"]
        assert r.throughput == pytest.approx(1000 / r.mean_ms)
        assert r.macs == TINY_MACS
        assert r.gops == pytest.approx(2 * TINY_MACS * r.throughput / 1e9)
        assert r.threads and r.threads >= 1
        assert r.peak_rss_mb and r.peak_rss_mb >= r.rss_before_load_mb > 0
        assert r.load_s > 0 and r.model_size_mb > 0
        assert r.precision == "fp32" and len(r.attempt_p50_ms) == r.attempts >= 1
    assert report.method["inputs"] == "8 synthetic images (seed 0)"
    assert report.environment["physical_cores"] >= 1


def test_run_folder_measures_its_models_and_checkpoint_on_its_images(tiny_run, tmp_path):
    # A copy: the shared run must stay without benchmark.json for the package tests.
    run = shutil.copytree(tiny_run, tmp_path / "run")
    report = benchmark(run, backends=["pytorch", "onnxruntime-cpu"], **FAST)
    rows = {(r.backend, r.model): r for r in report.rows}
    assert set(rows) == {
        ("pytorch", "best.safetensors"),
        ("onnxruntime-cpu", "model.onnx"),
        ("onnxruntime-cpu", "model.int8.onnx"),
    }
    assert all(r.status == Status.OK for r in rows.values()), [r.reason for r in rows.values()]
    assert rows[("onnxruntime-cpu", "model.int8.onnx")].precision == "int8"
    assert rows[("pytorch", "best.safetensors")].macs == rows[("onnxruntime-cpu", "model.onnx")].macs
    assert report.method["inputs"] == "8 real images"
    assert {r.precision for r in report.rows if r.backend == "onnxruntime-cpu"} == {"fp32", "int8"}
    assert report.fastest("int8") == rows[("onnxruntime-cpu", "model.int8.onnx")]
    saved = json.loads((run / "benchmark.json").read_text())
    assert len(saved["rows"]) == 3 and saved["environment"]["cpu"]
    # lineage: the record pins every file it timed
    assert saved["sources"] == {
        n: sha256_file(Path(run) / n) for n in ("best.safetensors", "model.onnx", "model.int8.onnx")
    }


def test_measure_latency_meets_minimums_and_cycles_the_pool():
    seen = []
    pool = [np.full((2, 1), i, np.float32) for i in range(5)]
    stats = measure_latency(lambda x: seen.append(int(x[0, 0])), pool, warmup_s=0.01, min_s=0.05, min_runs=40)
    assert stats.runs >= 40 and stats.batch == 2
    assert stats.p50_ms <= stats.p90_ms <= stats.p99_ms and stats.min_ms <= stats.p50_ms
    assert set(seen) == set(range(5))
    assert stats.to_dict()["throughput"] == pytest.approx(2000 / stats.mean_ms)


def test_unknown_backend_is_a_clear_error(tiny_models):
    with pytest.raises(EdgetlError, match="unknown backend"):
        benchmark([tiny_models[0]], backends=["tensorrt"], **FAST)


def test_cli_json_and_plot(tiny_models, tmp_path):
    plot = tmp_path / "latency.png"
    result = CliRunner().invoke(
        main,
        [
            "benchmark",
            str(tiny_models[0]),
            "--backend",
            "onnxruntime-cpu",
            "--backend",
            "onnxruntime-cuda",
            "--batch",
            "1,2",
            "--warmup-s",
            "0.05",
            "--min-s",
            "0.1",
            "--min-runs",
            "10",
            "--rounds",
            "2",
            "--plot",
            str(plot),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    keys = {
        "backend",
        "model",
        "precision",
        "batch",
        "status",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "throughput",
        "peak_rss_mb",
    }
    assert all(keys <= row.keys() for row in summary["rows"])
    ok = [r for r in summary["rows"] if r["status"] == "ok"]
    assert sorted(r["batch"] for r in ok) == [1, 2]
    assert {r["status"] for r in summary["rows"] if r["backend"] == "onnxruntime-cuda"} == {
        "unavailable" if _cuda_reason() else "ok"
    }
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_batch_is_one_line_error(tiny_models):
    result = CliRunner().invoke(main, ["benchmark", str(tiny_models[0]), "--batch", "1,x"])
    assert result.exit_code == 1 and "--batch" in result.output


def test_cli_bad_images_or_plot_fail_before_measuring(tiny_models, tmp_path):
    model = str(tiny_models[0])
    result = CliRunner().invoke(main, ["benchmark", model, "--images", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "--images" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["benchmark", model, "--plot", str(tmp_path)])
    assert result.exit_code == 1 and "--plot" in result.output and "is a folder" in result.output
    corrupt = tmp_path / "corrupt"
    write_corrupt_image(corrupt / "a.png")
    result = CliRunner().invoke(
        main, ["benchmark", model, "--images", str(corrupt), "--backend", "onnxruntime-cpu"]
    )
    assert result.exit_code == 1 and "none of the 1 images is readable" in result.output


def test_plot_needs_a_measurement(tmp_path):
    with pytest.raises(EdgetlError, match="nothing to plot"):
        plot_report(BenchReport(rows=()), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
