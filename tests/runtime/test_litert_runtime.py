"""LiteRT on the device: the table rows, the metadata inside a .tflite, quantized input and output
handled by the session, and a .tflite bundle predicting like the run's ONNX bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cliprobe import invoke

from edgetl.bundler.package import build_bundle
from edgetl_runtime import litert
from edgetl_runtime.backends import BACKENDS, load_session
from edgetl_runtime.errors import BundleError
from edgetl_runtime.modelfile import BY_NAME, FORMATS, LITERT, read_metadata, read_model_info, write_metadata


def test_the_tables_have_litert_rows():
    assert FORMATS[".tflite"] is LITERT is BY_NAME["litert"]
    assert LITERT.backends == ("litert-cpu",) and LITERT.files("a/m.tflite") == (Path("a/m.tflite"),)
    assert BACKENDS["litert-cpu"].formats == (".tflite",) and BACKENDS["litert-cpu"].device == "cpu"
    assert "litert-cpu" not in FORMATS[".onnx"].backends
    assert "edgetl-runtime[litert]" in LITERT.install


def test_tflite_metadata_round_trip_keeps_foreign_entries(litert_run, tmp_path):
    src = litert_run / "model.int8.tflite"
    meta = read_metadata(src)
    changed = {**meta, "edgetl.backbone": "renamed"}
    write_metadata(src, tmp_path / "m.tflite", changed)
    assert read_metadata(tmp_path / "m.tflite") == changed
    # the model still runs (weights stored after the flatbuffer were brought inline) and agrees
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    a = load_session(src, "litert-cpu").run(x)
    b = load_session(tmp_path / "m.tflite", "litert-cpu").run(x)
    assert np.array_equal(a, b)


def test_a_file_that_is_not_a_tflite_is_one_clear_error(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(BundleError, match="not a LiteRT"):
        read_model_info(tmp_path / "junk.tflite")


def test_quantized_input_and_output_are_converted_by_the_session():
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    q = litert.quantize_tensor(np.array([-100.0, 0.0, 1.0, 100.0], np.float32), detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, -3, -1, 127]
    assert litert._dequantize(q, detail).tolist() == [-62.5, 0.0, 1.0, 65.0]
    floats = {"dtype": np.float32, "quantization": (0.0, 0)}
    x = np.ones(3, np.float32)
    assert litert.quantize_tensor(x, floats) is x


def test_litert_bundle_predicts_like_the_onnx_bundle(litert_run, digits_dir, tmp_path):
    bundle = tmp_path / "litert"
    built = invoke(
        "edgetl", ["package", str(litert_run), "--out", str(bundle), "--format", "litert", "--json"]
    )
    assert built.code == 0, built.err
    manifest = json.loads((bundle / "manifest.json").read_text())
    models = {m["path"]: m for m in manifest["models"]}
    assert list(models) == ["model.int8.tflite", "model.tflite"]
    assert all(m["backends"] == ["litert-cpu"] for m in models.values())
    assert manifest["preprocess"]["layout"] == "NHWC" and manifest["input"]["dtype"] == "float32"
    assert "edgetl-runtime[litert]" in (bundle / "README.md").read_text()
    onnx_bundle = build_bundle(litert_run, tmp_path / "onnx", precision="fp32").path
    val = str(digits_dir / "val")

    def labels(path: Path, *extra: str) -> tuple[dict, list]:
        outcome = invoke("edgetl-run", ["predict", str(path), val, "--json", *extra])
        assert outcome.code == 0, outcome.err
        out = json.loads(outcome.out)
        return out, [(p["source"], p["label"]) for p in out["predictions"]]

    _, onnx_labels = labels(onnx_bundle)
    fp32_out, fp32_labels = labels(bundle, "--precision", "fp32")
    assert (fp32_out["backend"], fp32_out["model"]) == ("litert-cpu", "model.tflite")
    assert len(fp32_labels) == 12 and fp32_labels == onnx_labels
    auto, _ = labels(bundle)
    assert (auto["model"], auto["precision"], auto["backend"]) == ("model.int8.tflite", "int8", "litert-cpu")
    info = invoke("edgetl-run", ["info", str(bundle), "--json"])
    assert info.code == 0 and json.loads(info.out)["verified"]
    bench = invoke(
        "edgetl-run",
        ["bench", str(bundle), "--json", "--warmup-s", "0", "--min-s", "0.05", "--min-runs", "3"],
    )
    assert bench.code == 0 and json.loads(bench.out)["backend"] == "litert-cpu"


def test_benchmark_times_the_runs_tflite_models(litert_run):
    from edgetl.bench.benchmark import benchmark

    report = benchmark(
        litert_run, backends=["litert-cpu"], batches=[1], threads=1, warmup_s=0, min_s=0.05, min_runs=3
    )
    rows = {r.model: r for r in report.rows if r.status.value == "ok"}
    assert set(rows) == {"model.tflite", "model.int8.tflite"}
    assert rows["model.int8.tflite"].precision == "int8" and rows["model.tflite"].p50_ms > 0
