from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.backbones.checkpoint import read_checkpoint_info
from edgetl.bundler.package import build_bundle
from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import dataset_fingerprint
from edgetl.runfolder.splits import Splits
from edgetl_runtime.bundle import verify_bundle
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.manifest import SCHEMA_VERSION, Manifest


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_folder_bundle_manifest(tiny_run, tmp_path):
    bundle = build_bundle(tiny_run, tmp_path / "bundle")
    assert not bundle.archive
    manifest = verify_bundle(bundle.path)
    assert manifest == bundle.manifest
    info = read_checkpoint_info(tiny_run / "best.safetensors")
    quant = json.loads((tiny_run / "quantize.json").read_text())

    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.name == "run"
    assert manifest.labels == info.labels
    assert manifest.preprocess == info.preprocess
    assert (manifest.input.name, manifest.input.shape[1:], manifest.input.dtype) == (
        "input",
        (3, 32, 32),
        "float32",
    )
    assert manifest.output.shape[1:] == (len(info.labels),)
    assert [m.precision.value for m in manifest.models] == ["int8", "fp32"]
    for entry in manifest.models:
        assert entry.sha256 == sha256_file(bundle.path / entry.path) == sha256_file(tiny_run / entry.path)
        assert "onnxruntime-cpu" in entry.backends
    assert "onnxruntime-cuda" not in manifest.models[0].backends  # QDQ INT8 is meant for CPUs
    assert (bundle.path / "labels.txt").read_text().splitlines() == list(info.labels)
    assert "edgetl-run predict" in (bundle.path / "README.md").read_text()

    assert manifest.metrics["fp32_accuracy"] == quant["fp32_accuracy"]
    assert manifest.metrics["int8_accuracy"] == quant["int8_accuracy"]
    assert manifest.quantization["method"] == quant["method"]
    assert manifest.quantization["calibration_manifest_sha256"] == sha256_file(tiny_run / "calibration.json")
    assert manifest.benchmark is None  # the run has no benchmark.json
    prov = manifest.provenance
    assert prov["versions"]["torch"] and prov["versions"]["onnxruntime"] and prov["versions"]["edgetl"]
    assert prov["recipe"] == info.recipe
    assert prov["dataset"]["fingerprint"] == dataset_fingerprint(Splits.load(tiny_run))
    assert prov["dataset"]["train_images"] == 36 and prov["dataset"]["missing_images"] == 0
    assert bundle.to_dict()["dataset_fingerprint"] == prov["dataset"]["fingerprint"]
    assert prov["checkpoint_sha256"] == sha256_file(tiny_run / "best.safetensors")


def test_archive_is_byte_reproducible(tiny_run, tmp_path, monkeypatch):
    a = build_bundle(tiny_run, tmp_path / "a.tar.gz")
    b = build_bundle(tiny_run, tmp_path / "b.tgz")
    assert a.archive and a.path.read_bytes() == b.path.read_bytes()
    assert a.sha256 == b.sha256 == sha256_file(a.path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    c = build_bundle(tiny_run, tmp_path / "c.tar.gz")
    assert c.manifest.created == "2023-11-14T22:13:20Z"
    assert c.path.read_bytes() != a.path.read_bytes()


def test_source_date_epoch_up_to_tars_limit_is_taken_and_past_it_refused(tiny_run, tmp_path, monkeypatch):
    import tarfile

    last = 8**11 - 1  # tar's 11 octal digits of mtime
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(last))
    bundle = build_bundle(tiny_run, tmp_path / "last.tar.gz")
    with tarfile.open(bundle.path) as archive:
        assert {m.mtime for m in archive.getmembers()} == {last}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(last + 1))
    with pytest.raises(EdgetlError, match=f"SOURCE_DATE_EPOCH='{last + 1}': not a Unix time"):
        build_bundle(tiny_run, tmp_path / "past.tar.gz")
    assert not (tmp_path / "past.tar.gz").exists()


def test_a_bundle_result_names_what_it_wrote_for_the_next_step(tiny_run, tmp_path):
    from edgetl import api

    bundle = build_bundle(tiny_run, tmp_path / "b.tar.gz")
    assert bundle.artifact == tmp_path / "b.tar.gz" == api.resolve_source(bundle)


def test_precision_choice_and_missing_int8(run_copy, tmp_path):
    fp32 = build_bundle(run_copy, tmp_path / "fp32", precision="fp32")
    assert [m.path for m in fp32.manifest.models] == ["model.onnx"]
    (run_copy / "model.int8.onnx").unlink()
    default = build_bundle(run_copy, tmp_path / "default")
    assert default.manifest.precisions() == ("fp32",)
    assert default.manifest.quantization == {}
    with pytest.raises(EdgetlError, match="edgetl quantize"):
        build_bundle(run_copy, tmp_path / "int8.tar.gz", precision="int8")
    assert not (tmp_path / "int8.tar.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_benchmark_summary_keeps_measured_rows(run_copy, tmp_path):
    rows = [
        {"backend": "onnxruntime-cpu", "model": "model.int8.onnx", "precision": "int8", "batch": 1,
         "status": "ok", "p50_ms": 1.5, "attempt_p50_ms": [1.5, 1.6]},
        {"backend": "onnxruntime-cuda", "model": "model.onnx", "precision": "fp32", "batch": 1,
         "status": "unavailable", "reason": "no CUDA"},
    ]  # fmt: skip
    (run_copy / "benchmark.json").write_text(json.dumps({"rows": rows, "environment": {"cpu": "x"}}))
    bench = build_bundle(run_copy, tmp_path / "b").manifest.benchmark
    assert bench == {
        "rows": [{"backend": "onnxruntime-cpu", "model": "model.int8.onnx", "precision": "int8", "batch": 1,
                  "p50_ms": 1.5}],
        "environment": {"cpu": "x"},
    }  # fmt: skip


def test_folder_output_is_safe(tiny_run, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(EdgetlError, match="not a bundle"):
        build_bundle(tiny_run, precious)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    # an older bundle is kept unless --overwrite, then replaced in full
    out = tmp_path / "bundle"
    build_bundle(tiny_run, out)
    (out / "stale.txt").write_text("x")
    with pytest.raises(EdgetlError, match="holds a bundle already; pass --overwrite"):
        build_bundle(tiny_run, out, precision="fp32")
    archive = build_bundle(tiny_run, tmp_path / "b.tar.gz").path
    with pytest.raises(EdgetlError, match="holds a bundle already"):
        build_bundle(tiny_run, archive)
    (tmp_path / "notes.tar.gz").write_text("not an archive")
    with pytest.raises(EdgetlError, match="not a bundle"):
        build_bundle(tiny_run, tmp_path / "notes.tar.gz", overwrite=True)
    # destructive if it regressed: checked on a copy, never on the shared run
    copy = Path(shutil.copytree(tiny_run, tmp_path / "run-copy"))
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(EdgetlError, match="the run folder itself"):
        build_bundle(copy, copy, overwrite=True)
    assert sorted(p.name for p in copy.iterdir()) == before
    build_bundle(tiny_run, out, precision="fp32", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "labels.txt", "manifest.json", "model.onnx"]
    with pytest.raises(EdgetlError, match="no such run folder"):
        build_bundle(tmp_path / "nope", tmp_path / "x")


def test_manifest_round_trip(tiny_run, tmp_path):
    bundle = build_bundle(tiny_run, tmp_path / "b", precision="fp32")
    text = (bundle.path / "manifest.json").read_text()
    assert Manifest.from_json(text) == bundle.manifest
    assert json.loads(text)["digest"]


def test_cli_package_json(tiny_run, tmp_path):
    out = tmp_path / "cli.tar.gz"
    result = CliRunner().invoke(main, ["package", str(tiny_run), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["path"] == str(out) and summary["format"] == "tar.gz"
    assert summary["sha256"] == sha256_file(out)
    assert [m["precision"] for m in summary["models"]] == ["int8", "fp32"]

    bad = CliRunner().invoke(main, ["package", str(tiny_run), "--out", str(out), "--precision", "fp16"])
    assert bad.exit_code == 2
    missing = CliRunner().invoke(main, ["package", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "no such run folder" in missing.output
