"""Hostile images and models: an aspect-ratio bomb (a 1-pixel-wide PNG of a few hundred bytes that
resizing would make millions of pixels long), 32-bit float TIFFs, class folders with control
characters, and a model that is not a classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cliprobe import SMALL, assert_json_error, assert_one_line, dataset, invoke, write_png
from onnx import TensorProto, helper
from PIL import Image

from edgetl.data.imagefolder import decode_for_training
from edgetl.errors import ImageError
from edgetl_runtime.errors import EXIT_ERROR, EXIT_PARTIAL
from edgetl_runtime.preprocess import load_image, preprocess_image, set_max_pixels


def long_strip(path: Path, length: int = 20000) -> Path:
    Image.fromarray(np.full((length, 1), 128, np.uint8)).save(path)
    return path


def test_an_aspect_ratio_bomb_is_refused_after_resizing_too(bundle, tmp_path):
    """1 x 20000 pixels pass a 1 M pixel limit on decode; resized to the model's short side they
    would be 36 x 720000 = 26 M pixels. The size after resizing is bounded like the decoded one."""
    strip = long_strip(tmp_path / "strip.png")
    assert strip.stat().st_size < 2000
    good = write_png(tmp_path / "good.png")
    args = ["predict", str(bundle), str(good), str(strip), "--max-pixels", "1000000", "--json"]
    outcome = invoke("edgetl-run", args)
    assert outcome.code == EXIT_PARTIAL, outcome.err
    result = json.loads(outcome.out)
    assert [p.get("label") is not None for p in result["predictions"]] == [True, False]
    error = result["errors"][0]["error"]
    assert "resized to" in error and "over the limit of 1000000 pixels" in error and "strip.png" in error


def test_training_skips_an_aspect_ratio_bomb(tmp_path):
    set_max_pixels(1_000_000)
    with pytest.raises(ImageError, match="resized to 36x720000"):
        decode_for_training(long_strip(tmp_path / "strip.png"), 36, SMALL.interpolation)
    with pytest.raises(ImageError, match="over the limit"):
        preprocess_image(tmp_path / "strip.png", SMALL)


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), "F").save(path)
    assert Image.open(path).mode == "F"
    return path


def test_a_float_tiff_in_0_to_1_is_scaled_not_black(tmp_path):
    ramp = np.linspace(0, 1, 36 * 40, dtype=np.float32).reshape(36, 40)
    image = np.asarray(load_image(_float_tiff(tmp_path / "f.tif", ramp)))
    assert np.array_equal(image[..., 0], np.round(ramp.astype(np.float64) * 255).astype(np.uint8))
    assert 120 < image.mean() < 135  # the all-black decode gave 0.4
    wide = np.asarray(load_image(_float_tiff(tmp_path / "g.tif", ramp * 255)))
    assert np.array_equal(wide, image)
    training = np.asarray(decode_for_training(tmp_path / "f.tif", 36, SMALL.interpolation))
    assert np.array_equal(training, image)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((8, 8), -3.0), "values -3..-3"),
        (np.full((8, 8), 1e6), "values 1e+06"),
        (np.full((8, 8), np.nan), "NaN"),
    ],
)
def test_a_float_tiff_of_unknown_range_is_refused_per_file(values, message, tmp_path):
    with pytest.raises(ImageError, match="32-bit float image") as raised:
        load_image(_float_tiff(tmp_path / "odd.tif", values))
    assert message in str(raised.value) and str(tmp_path / "odd.tif") in str(raised.value)


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "bell\x07", "line\u2028sep"])
def test_a_class_folder_with_control_characters_is_refused_at_train(name, tmp_path):
    data = dataset(tmp_path / "data", {"a": 3, name: 3})
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--json",
    ]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, f"class folder {name!r} has control characters")
    assert_json_error(outcome, "rename it")
    assert not out.exists()


def _image_to_image(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "i2i", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_describe_requires_a_classifier_output(tmp_path):
    model = _image_to_image(tmp_path / "i2i.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(32)))
    out = tmp_path / "described.onnx"
    args = [
        "describe",
        str(model),
        "--labels",
        str(labels),
        "--preprocess",
        "imagenet",
        "--out",
        str(out),
        "--json",
    ]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, "has shape ['N', 3, 32, 32]")
    assert_json_error(outcome, "[N, classes]")
    assert not out.exists()
