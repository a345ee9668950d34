"""The model-file table (ONNX and OpenVINO IR metadata) and bundles that carry OpenVINO IRs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tinyrun import copy_exported_as

from edgetl.bundler.package import build_bundle
from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl_runtime.backends import load_session
from edgetl_runtime.bundle import open_bundle
from edgetl_runtime.cli import EXIT_ERROR
from edgetl_runtime.cli import main as run_main
from edgetl_runtime.errors import BundleError
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelfile import (
    FORMATS,
    is_int8,
    model_format,
    read_metadata,
    read_model_info,
    write_metadata,
)
from edgetl_runtime.modelinfo import MetadataMissing
from edgetl_runtime.preprocess import preprocess_image


def test_onnx_metadata_round_trip_keeps_foreign_keys(tiny_run, tmp_path):
    import onnx

    src = tiny_run / "model.onnx"
    proto = onnx.load(str(src))
    proto.metadata_props.add(key="author", value="someone")
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    info = read_model_info(src).with_(backbone="renamed")
    out = tmp_path / "copy.onnx"
    write_metadata(foreign, out, info.to_metadata())
    assert read_model_info(out) == info
    keys = [p.key for p in onnx.load(str(out)).metadata_props]
    # the foreign key first, then exactly the keys ModelInfo writes, in its order
    assert keys == ["author", *info.to_metadata()]
    assert read_metadata(out) == info.to_metadata()


def test_missing_and_unknown_model_files(tiny_run, tmp_path):
    import onnx

    bare = onnx.load(str(tiny_run / "model.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert read_metadata(tmp_path / "bare.onnx") == {}
    with pytest.raises(MetadataMissing):
        read_model_info(tmp_path / "bare.onnx")
    with pytest.raises(BundleError, match=r"give \.onnx or \.xml or \.tflite"):
        model_format(tmp_path / "model.pb")
    with pytest.raises(BundleError, match="no such model file"):
        read_model_info(tmp_path / "none.xml")
    (tmp_path / "junk.xml").write_text("<not-an-ir/>")
    with pytest.raises(BundleError, match="not a loadable OpenVINO IR"):
        read_model_info(tmp_path / "junk.xml")


def test_format_table_knows_companions_and_backends():
    ir, onnx_format = FORMATS[".xml"], FORMATS[".onnx"]
    assert ir.files("a/model.xml") == (Path("a/model.xml"), Path("a/model.bin"))
    assert onnx_format.files("m.onnx") == (Path("m.onnx"),)
    assert set(ir.backends) == {"openvino-cpu", "openvino-gpu"}
    assert "onnxruntime-cpu" in onnx_format.backends and "onnxruntime-cpu" not in ir.backends


@pytest.fixture(scope="module")
def ir_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run with its FP32 IR (edgetl export --format openvino) and INT8 IR (quantize --backend nncf)."""
    run = copy_exported_as(tiny_run, tmp_path_factory.mktemp("ir") / "run", "openvino")
    args = ["quantize", str(run), "--backend", "nncf", "--num-calibration", "12", "--allow-drop", "--json"]
    quantized = CliRunner().invoke(main, args)
    assert quantized.exit_code == 0, quantized.output
    assert (run / "model.int8.xml").is_file() and (run / "model.int8.bin").is_file()
    return run


def _top1(bundle: Path, images: Path, capsys, *extra: str) -> tuple[dict, list[str]]:
    capsys.readouterr()
    assert run_main(["predict", str(bundle), str(images), "--json", *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    return out, [(p["source"], p["label"]) for p in out["predictions"]]


def test_openvino_bundle_runs_like_the_onnx_bundle(ir_run, digits_dir, tmp_path, capsys):
    ir = tmp_path / "ir"
    result = CliRunner().invoke(
        main, ["package", str(ir_run), "--out", str(ir), "--format", "openvino", "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((ir / "manifest.json").read_text())
    models = {m["path"]: m for m in manifest["models"]}
    assert list(models) == ["model.int8.xml", "model.xml"]
    assert models["model.int8.xml"]["backends"] == ["openvino-cpu"]
    assert models["model.xml"]["backends"] == ["openvino-cpu", "openvino-gpu"]
    files = {f["path"]: f["sha256"] for f in manifest["files"]}
    for name in ("model.xml", "model.int8.xml"):
        bin_name = name.replace(".xml", ".bin")
        assert models[name]["sha256"] == sha256_file(ir_run / name)
        assert files[bin_name] == sha256_file(ir_run / bin_name)  # the weights are pinned too
    int8_ir = read_model_info(ir_run / "model.int8.xml")
    assert manifest["provenance"]["models"]["model.int8.xml"]["source_sha256"] == int8_ir.source_sha256
    assert manifest["quantization"]["backend"] == "nncf"
    assert "edgetl-runtime[openvino]" in (ir / "README.md").read_text()

    onnx_bundle = build_bundle(ir_run, tmp_path / "onnx", precision="fp32").path
    val = digits_dir / "val"
    onnx_out, onnx_top1 = _top1(onnx_bundle, val, capsys, "--top-k", "2")
    ir_out, ir_top1 = _top1(ir, val, capsys, "--precision", "fp32")
    assert onnx_out["backend"] == "onnxruntime-cpu" and ir_out["backend"] == "openvino-cpu"
    assert len(ir_top1) == len(onnx_top1) == 12
    # OpenVINO runs FP32 in bf16 by default on CPUs with AMX/avx512_bf16, and this untrained head's
    # scores are near-ties, so the default device path is compared where ONNX's top-1 leads by 0.01;
    # the bundle's IR in FP32 (exact) must give ONNX's top-1 on every image
    clear = [
        (p["source"], p["label"])
        for p in onnx_out["predictions"]
        if p["top_k"][0]["score"] - p["top_k"][1]["score"] >= 0.01
    ]
    assert set(clear) <= set(ir_top1)
    with open_bundle(ir) as opened:
        exact = load_session(opened.file("model.xml"), "openvino-cpu", exact=True)
        batch = np.stack([preprocess_image(Path(s), opened.manifest.preprocess) for s, _ in onnx_top1])
        labels = opened.manifest.labels
        assert [labels[i] for i in exact.run(batch).argmax(1)] == [label for _, label in onnx_top1]
    auto, _ = _top1(ir, val, capsys)  # auto: the INT8 IR on OpenVINO
    assert (auto["model"], auto["precision"], auto["backend"]) == ("model.int8.xml", "int8", "openvino-cpu")

    assert run_main(["info", str(ir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"]
    bench = ["bench", str(ir), "--json", "--warmup-s", "0", "--min-s", "0.05", "--min-runs", "3"]
    assert run_main(bench) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "openvino-cpu"
    # a single IR file runs too (no manifest), on OpenVINO by default
    single, _ = _top1(ir_run / "model.xml", val, capsys)
    assert single["backend"] == "openvino-cpu" and single["precision"] == "fp32"


def test_bundle_with_a_changed_ir_bin_is_refused(ir_run, digits_dir, tmp_path, capsys):
    bundle = build_bundle(ir_run, tmp_path / "ir", format="openvino", precision="fp32").path
    weights = bundle / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_main(["predict", str(bundle), str(digits_dir / "val"), "--json"]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert "model.bin was modified" in json.loads(captured.out)["error"]["message"]


def test_openvino_package_checks_lineage_and_missing_irs(ir_run, tiny_run, tmp_path):
    with pytest.raises(EdgetlError, match=r"model\.xml: missing .*edgetl export .* --format openvino"):
        build_bundle(tiny_run, tmp_path / "a", format="openvino")
    with pytest.raises(EdgetlError, match="--format 'tflite'"):
        build_bundle(ir_run, tmp_path / "b", format="tflite")
    stale = Path(shutil.copytree(ir_run, tmp_path / "stale"))
    # an IR whose recorded source is another checkpoint: refused like a stale model.onnx
    info = read_model_info(stale / "model.xml").with_(source_sha256="0" * 64)
    write_metadata(ir_run / "model.xml", stale / "model.xml", info.to_metadata())
    with pytest.raises(EdgetlError, match=r"model\.xml: exported from an older checkpoint"):
        build_bundle(stale, tmp_path / "c", format="openvino")


def test_benchmark_reads_the_ir_metadata(ir_run):
    from edgetl.bench.timed_models import describe_model

    timed = describe_model(ir_run / "model.int8.xml")
    info = read_model_info(ir_run / "model.int8.xml")
    assert (timed.precision, timed.preprocess) == ("int8", info.preprocess)
    bin_mb = (ir_run / "model.int8.bin").stat().st_size / 2**20
    assert timed.size_mb > bin_mb


def test_a_device_without_the_onnx_package_reads_the_same_metadata(tiny_run, monkeypatch):
    expected = read_metadata(tiny_run / "model.int8.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert read_metadata(tiny_run / "model.int8.onnx") == expected
    assert read_model_info(tiny_run / "model.int8.onnx").precision == "int8"
    assert is_int8(tiny_run / "model.int8.onnx") and not is_int8(tiny_run / "model.onnx")


def test_the_format_table_tells_int8_from_the_graph(ir_run, tmp_path):
    """What the graph holds decides, not the metadata: a described INT8 model from elsewhere is INT8."""
    import onnx

    assert is_int8(ir_run / "model.int8.xml") and not is_int8(ir_run / "model.xml")
    bare = onnx.load(str(ir_run / "model.int8.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.int8.onnx"))
    assert is_int8(tmp_path / "bare.int8.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(BundleError, match=r"junk\.onnx: not a readable ONNX model"):
        is_int8(tmp_path / "junk.onnx")
