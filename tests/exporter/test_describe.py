"""A model edgetl did not export: plain torch.onnx.export (no metadata) -> describe -> quantize ->
package -> the runtime, as a bundle and as a single model file."""

from __future__ import annotations

import json
import traceback

import pytest
import torch
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl.exporter.describe import describe_model
from edgetl_runtime.cli import main as run_main
from edgetl_runtime.fileio import sha256_file
from edgetl_runtime.modelfile import read_model_info

LABELS = ("0", "1", "2")  # the digit folders, in the model's output order


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory):
    """torchvision resnet18 with a 3-class fc, random weights, exported with nothing but torch."""
    from torchvision.models import resnet18

    folder = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    model = resnet18(num_classes=len(LABELS)).eval()
    path = folder / "resnet18.onnx"
    torch.onnx.export(
        model, torch.zeros(1, 3, 32, 32), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return path, folder / "labels.txt"


def invoke(*args) -> dict:
    result = CliRunner().invoke(main, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output + "".join(traceback.format_exception(*result.exc_info))
    return json.loads(result.stdout)


def test_plain_export_is_refused_until_described(plain_onnx, digits_dir, tmp_path):
    path, _ = plain_onnx
    args = [
        "quantize",
        str(path),
        "--calibration",
        str(digits_dir / "train"),
        "--out",
        str(tmp_path / "q.onnx"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "no edgetl metadata" in result.output


def test_describe_quantize_package_run(plain_onnx, digits_dir, tmp_path, capsys):
    path, labels = plain_onnx
    before = sha256_file(path)
    described = tmp_path / "described.onnx"
    d = invoke("describe", path, "--labels", labels, "--preprocess", "imagenet", "--out", described)
    assert sha256_file(path) == before  # the user's file is never written
    info = read_model_info(described)
    assert info.labels == LABELS and (info.input_name, info.output_name) == ("x", "y")
    assert (info.preprocess.crop, info.preprocess.resize, info.preprocess.interpolation.value) == (
        32,
        36,
        "bilinear",
    )
    assert d["input"]["shape"] == ["batch", 3, 32, 32] and info.source_sha256 == before

    int8 = tmp_path / "described.int8.onnx"
    q = invoke(
        "quantize", described, "--calibration", digits_dir / "train", "--eval", digits_dir / "val",
        "--out", int8, "--method", "minmax", "--num-calibration", 12, "--allow-drop",
    )  # fmt: skip
    assert int8.is_file() and read_model_info(int8).precision == "int8", q

    bundle = tmp_path / "bundle.tar.gz"
    p = invoke("package", described, int8, "--out", bundle)
    assert sorted(m["precision"] for m in p["models"]) == ["fp32", "int8"] and p["name"] == "described"

    images = sorted((digits_dir / "val").rglob("*.png"))
    for target in (bundle, int8, described):
        assert run_main(["predict", str(target), *map(str, images), "--json", "--top-k", "1"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["images"] == len(images) and out["failed"] == 0
        assert {r["label"] for r in out["predictions"]} <= set(LABELS)
    assert run_main(["info", str(int8), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["labels"] == list(LABELS)
    assert (
        run_main(["bench", str(described), "--min-s", "0", "--min-runs", "3", "--warmup-s", "0", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["runs"] >= 3


def test_describe_refuses_wrong_labels_and_own_path(plain_onnx, tmp_path):
    path, _ = plain_onnx
    four = tmp_path / "four.txt"
    four.write_text("a\nb\nc\nd\n")
    with pytest.raises(EdgetlError, match="4 labels but the model outputs 3"):
        describe_model(path, tmp_path / "x.onnx", labels=four, preprocess="imagenet")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(EdgetlError, match="own input"):
        describe_model(path, path, labels=four, preprocess="imagenet")
    with pytest.raises(EdgetlError, match="neither a preset"):
        describe_model(path, tmp_path / "y.onnx", labels=four, preprocess="caffe")


def test_describe_takes_a_json_spec(plain_onnx, tmp_path):
    path, labels = plain_onnx
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {"crop": 32, "resize": 40, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
        )
    )
    result = describe_model(path, tmp_path / "d.onnx", labels=labels, preprocess=spec)
    assert result.info.preprocess.resize == 40 and result.info.preprocess.mean == (0.5, 0.5, 0.5)
    spec.write_text(json.dumps({"crop": 40}))
    with pytest.raises(EdgetlError, match="lacks key"):
        describe_model(path, tmp_path / "e.onnx", labels=labels, preprocess=spec)
    spec.write_text(
        json.dumps(
            {"crop": 64, "resize": 72, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
        )
    )
    with pytest.raises(EdgetlError, match="crop 64 but the model's input is 32x32"):
        describe_model(path, tmp_path / "e.onnx", labels=labels, preprocess=spec)
