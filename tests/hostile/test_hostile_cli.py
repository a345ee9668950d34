"""Hostile inputs against both command-line tools, one table row each.

Every row asserts the exit code, that stderr holds exactly one line and no traceback, that --json
printed one error object of the shared shape (or, for partial results, the per-file errors), and that
no artifact was left behind. Images are tiny; the decompression bomb is a 64x64 PNG under a lowered
--max-pixels, and the oversized archive member is a few MiB of zeros under a lowered cap.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cliprobe import (
    SMALL,
    Zeros,
    assert_json_error,
    assert_one_line,
    dataset,
    invoke,
    member,
    rewrite_manifest,
    rewrite_manifest_dict,
    symlink_loop,
    tar_gz,
    text_as_jpg,
    truncated_jpeg,
    write_png,
)
from PIL import Image

from edgetl.bundler.package import build_bundle
from edgetl.data.imagefolder import decode_for_training, load_imagefolder
from edgetl.data.images import preprocess_readable
from edgetl_runtime import BundleError
from edgetl_runtime.bundle import MAX_BUNDLE_BYTES, extract_to, write_gzip
from edgetl_runtime.errors import EXIT_CRASH, EXIT_ERROR, EXIT_PARTIAL, EXIT_USAGE
from edgetl_runtime.manifest import MANIFEST, Manifest
from edgetl_runtime.modelinfo import ModelInfo
from edgetl_runtime.preprocess import load_image, set_max_pixels

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tiny_run, tmp_path_factory) -> Path:
    return build_bundle(tiny_run, tmp_path_factory.mktemp("hostile") / "bundle.tar.gz").path


@pytest.fixture
def scratch(tmp_path) -> Path:
    return tmp_path


# --- the table: edgetl train ------------------------------------------------------------------

TRAIN = ["train", "--image-size", "32", "--device", "cpu", "--json"]


def _recipe(text: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "r.toml").write_text(text)
        return ["--recipe", str(tmp / "r.toml")]

    return make


TRAIN_ROWS = {
    "empty class": ({"a": 3, "b": 0}, None, lambda t: [], "class folder has no images"),
    "one class": ({"a": 4}, None, lambda t: [], "need at least 2"),
    "class mismatch": ({"a": 3, "b": 3}, {"a": 1, "c": 1}, lambda t: [], "class folders differ"),
    "recipe scale ab": ({"a": 3, "b": 3}, None, _recipe('scale = "ab"\n'), "recipe key 'scale'"),
    "recipe crop big": (
        {"a": 3, "b": 3},
        None,
        _recipe('[preprocess]\ncrop = "big"\n'),
        "recipe key 'preprocess.crop'",
    ),
    "recipe 2-value mean": (
        {"a": 3, "b": 3},
        None,
        _recipe("[preprocess]\nmean = [0.5, 0.5]\n"),
        "recipe key 'preprocess.mean'",
    ),
    "recipe lr_decay half": ({"a": 3, "b": 3}, None, _recipe('lr_decay = "half"\n'), "recipe key 'lr_decay'"),
    "recipe epochs true": (
        {"a": 3, "b": 3},
        None,
        _recipe("[[stages]]\nepochs = true\n"),
        "recipe key 'stages[0].epochs' must be an integer >= 1, got True",
    ),
    "no training stage": (
        {"a": 3, "b": 3},
        None,
        lambda t: ["--epochs", "0", "--frozen-epochs", "0"],
        "--epochs 0 with --frozen-epochs 0",
    ),
}


@pytest.mark.parametrize("row", list(TRAIN_ROWS))
def test_hostile_train_inputs(row, scratch):
    classes, val, extra, message = TRAIN_ROWS[row]
    data = dataset(scratch / "data", classes, val)
    out = scratch / "run"
    outcome = invoke("edgetl", [*TRAIN, "--data", str(data), "--out", str(out), *extra(scratch)])
    assert_one_line(outcome, EXIT_ERROR, message)
    assert_json_error(outcome, message)
    assert not out.exists()  # no splits.json, no half-made run


def test_malicious_pickle_weights_is_one_line(scratch):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(scratch / "pwned"),))

    weights = scratch / "evil.pth"
    torch.save({"model": Payload()}, weights)
    data = dataset(scratch / "data", {"a": 3, "b": 3})
    outcome = invoke(
        "edgetl", [*TRAIN, "--data", str(data), "--out", str(scratch / "run"), "--weights", str(weights)]
    )
    assert_one_line(outcome, EXIT_ERROR, "not a plain state_dict")
    assert "torch.save(model.state_dict()" in outcome.err and "weights_only" not in outcome.err
    assert_json_error(outcome, "not a plain state_dict", option="--weights")
    assert not (scratch / "pwned").exists() and not (scratch / "run").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_demo_on_a_read_only_folder(scratch):
    folder = scratch / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        outcome = invoke("edgetl", ["demo", "--out", str(folder), "--json"])
    finally:
        folder.chmod(0o700)
    assert_one_line(outcome, EXIT_ERROR, "--out")
    assert list(folder.iterdir()) == []


def test_demo_under_a_file_is_one_line(scratch):
    # the read-only case as root: a folder that cannot be created
    blocker = scratch / "file"
    blocker.write_text("x")
    outcome = invoke("edgetl", ["demo", "--out", str(blocker / "demo"), "--json"])
    assert_one_line(outcome, EXIT_ERROR, "--out")
    assert_json_error(outcome, "cannot write there", option="--out")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["quantize", "x.onnx", "--out", "y.onnx", "--max-drop", "-1", "--json"], "--max-drop"),
        (["train", "--bogus", "--json"], None),
        (["--max-pixels", "0", "backbones", "--json"], "--max-pixels"),
    ],
)
def test_usage_errors_share_the_shape(args, option, scratch):
    outcome = invoke("edgetl", args)
    assert outcome.code == EXIT_USAGE and "Traceback" not in outcome.err
    assert outcome.error["kind"] == "usage"
    assert_json_error(outcome, "", option=option)
    assert not (scratch / "y.onnx").exists()


# --- the table: edgetl-run --------------------------------------------------------------------


def _bad_image(make: Callable[[Path], Path], name: str):
    return lambda tmp: [str(make(tmp / name))]


PREDICT_ROWS = {
    "truncated jpeg": (_bad_image(truncated_jpeg, "cut.jpg"), [], "not a readable image"),
    "text renamed jpg": (_bad_image(text_as_jpg, "notes.jpg"), [], "not a readable image"),
    "symlink loop": (_bad_image(symlink_loop, "loop.jpg"), [], "not a readable image"),
    "bomb under a lowered limit": (
        _bad_image(lambda p: write_png(p, (64, 64)), "big.png"),
        ["--max-pixels", "2000"],
        "over the limit of 2000 pixels",
    ),
}


@pytest.mark.parametrize("row", list(PREDICT_ROWS))
def test_hostile_predict_inputs_are_per_file_errors(row, bundle, scratch):
    make, extra, message = PREDICT_ROWS[row]
    good = write_png(scratch / "good.png", (40, 40))  # 1600 px: under every limit used here
    bad = make(scratch)
    outcome = invoke("edgetl-run", ["predict", str(bundle), str(good), *bad, *extra, "--json"])
    assert outcome.code == EXIT_PARTIAL, outcome.err
    result = json.loads(outcome.out)
    assert [p.get("label") is not None for p in result["predictions"]] == [True, False]
    assert result["failed"] == 1 and "\n" not in result["errors"][0]["error"]
    assert message in result["errors"][0]["error"]
    assert "Traceback" not in outcome.err


def _folder_with_extra(folder: Path) -> None:
    (folder / "extra.txt").write_text("smuggled")


def _folder_with_symlink(folder: Path) -> None:
    target = folder.parent / "labels-elsewhere.txt"
    shutil.move(folder / "labels.txt", target)
    (folder / "labels.txt").symlink_to(target)


def _more_labels(folder: Path) -> None:
    manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
    rewrite_manifest(folder, labels=(*manifest.labels, "extra"))


def _bad_crop(folder: Path) -> None:
    rewrite_manifest_dict(folder, lambda d: d["preprocess"].update(crop="x"))


def _non_dict_preprocess(folder: Path) -> None:
    rewrite_manifest_dict(folder, lambda d: d.update(preprocess="imagenet"))


BUNDLE_ROWS = {
    "folder with an extra file": (_folder_with_extra, "info", "files not in the manifest (extra.txt)"),
    "folder with a symlink": (_folder_with_symlink, "info", "labels.txt is a symbolic link"),
    "label count != outputs": (_more_labels, "predict", "outputs but 4 labels"),
    "manifest crop x": (_bad_crop, "info", "preprocess 'crop' must be an integer"),
    "manifest preprocess not a table": (_non_dict_preprocess, "info", "preprocess must be a table"),
}


@pytest.mark.parametrize("row", list(BUNDLE_ROWS))
def test_hostile_bundle_folders(row, bundle, scratch):
    edit, command, message = BUNDLE_ROWS[row]
    folder = Path(shutil.copytree(bundle, scratch / "b"))
    edit(folder)
    args = [command, str(folder), "--json"] + (
        [str(write_png(scratch / "x.png"))] if command == "predict" else []
    )
    outcome = invoke("edgetl-run", args)
    assert_one_line(outcome, EXIT_ERROR, message)
    assert_json_error(outcome, message)


ARCHIVE_ROWS = {
    "dot-dot member": (member("../evil.txt", 5), "unsafe"),
    "absolute member": (member("/tmp/evil.txt", 5), "unsafe"),
    "symlink member": (member("evil.txt", kind=tarfile.SYMTYPE, link="/etc/passwd"), "is a link"),
    "hard link member": (member("evil.txt", kind=tarfile.LNKTYPE, link=MANIFEST), "is a link"),
    "device member": (member("evil.txt", kind=tarfile.CHRTYPE), "non-file entry"),
    "member not in the manifest": (member("evil.txt", 5), "not in the manifest"),
    "model larger than the manifest says": (member("model.onnx", 8 << 20), "the manifest says"),
}


@pytest.mark.parametrize("row", list(ARCHIVE_ROWS))
def test_hostile_archives(row, bundle, scratch):
    info, message = ARCHIVE_ROWS[row]
    manifest = (bundle / MANIFEST).read_bytes()
    data = Zeros(info.size) if info.isreg() else None
    evil = tar_gz(
        scratch / "evil.tar.gz", [(member(MANIFEST, len(manifest)), io.BytesIO(manifest)), (info, data)]
    )
    outcome = invoke("edgetl-run", ["info", str(evil), "--json"])
    assert_one_line(outcome, EXIT_ERROR, message)
    assert_json_error(outcome, message)
    assert sorted(p.name for p in scratch.iterdir()) == ["evil.tar.gz"]
    assert not Path("/tmp/evil.txt").exists()


def test_oversized_member_is_refused_before_writing_past_the_cap(bundle, scratch):
    """The 2 GiB-of-zeros archive in miniature: 64 MiB of zeros named like the model, a 1 MiB cap."""
    manifest = (bundle / MANIFEST).read_bytes()
    members = [
        (member(MANIFEST, len(manifest)), io.BytesIO(manifest)),
        (member("model.int8.onnx", 64 << 20), None),
    ]
    members[1] = (members[1][0], Zeros(64 << 20))
    evil = tar_gz(scratch / "zeros.tar.gz", members)
    assert evil.stat().st_size < 1 << 20  # compresses to almost nothing, like the 17 MB original
    dest = scratch / "dest"
    dest.mkdir()
    with pytest.raises(BundleError, match="refusing"):
        extract_to(evil, dest, max_bytes=1 << 20)
    written = sum(p.stat().st_size for p in dest.iterdir())
    assert written <= 1 << 20 and not (dest / "model.int8.onnx").exists()
    assert MAX_BUNDLE_BYTES >= 1 << 30  # the default leaves room for real models


def test_bundle_over_the_cap_is_refused_by_the_cli(archive):
    # the real bundle's 3.9 MB model is listed with its true size, but more than a 1 MiB cap
    outcome = invoke("edgetl-run", ["info", str(archive), "--max-bundle-mb", "1", "--json"])
    assert_one_line(outcome, EXIT_ERROR, "past the cap of 1048576 bytes")
    assert_json_error(outcome, "refusing it before writing")


def test_gzip_bomb_after_the_tar_end_is_bounded(bundle, scratch):
    archive = scratch / "tail.tar.gz"
    manifest = (bundle / MANIFEST).read_bytes()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(member(MANIFEST, len(manifest)), io.BytesIO(manifest))
    raw.seek(0, io.SEEK_END)
    raw.write(bytes(8 << 20))  # zeros after the end-of-archive marker
    raw.seek(0)
    write_gzip(raw, archive)
    dest = scratch / "d"
    dest.mkdir()
    with pytest.raises(BundleError, match="expands beyond the size cap; refusing the bundle"):
        extract_to(archive, dest, max_bytes=1 << 20)


def test_a_crash_is_not_a_handled_error(bundle, monkeypatch):
    import edgetl_runtime.cli as cli

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_info", broken)
    outcome = invoke("edgetl-run", ["info", str(bundle), "--json"])
    assert_one_line(outcome, EXIT_CRASH, "internal error in edgetl-run (ZeroDivisionError")
    assert outcome.error["kind"] == "crash"


def test_run_usage_error_is_json(bundle):
    outcome = invoke("edgetl-run", ["predict", str(bundle), "x.png", "--top-k", "x", "--json"])
    assert outcome.code == EXIT_USAGE
    assert_json_error(outcome, "invalid int value", option="--top-k")
    assert outcome.error["kind"] == "usage"


# --- decoding: one helper for training, calibration, evaluation and the device ------------------


def test_bomb_is_skipped_and_counted_in_training_and_calibration(scratch):
    data = dataset(scratch / "data", {"a": 3, "b": 3})
    write_png(data / "train" / "a" / "huge.png", (64, 64))
    set_max_pixels(2000)  # the 40x40 images pass, the 64x64 one is a "bomb"
    images = load_imagefolder(data, SMALL, val_fraction=0.3)
    assert images.splits.skipped == 1 and any("huge.png" in s for s in images.skipped)
    arrays, kept, skipped = preprocess_readable(
        [data / "train" / "a" / "0.png", data / "train" / "a" / "huge.png"], SMALL, "calibration"
    )
    assert (len(arrays), kept, skipped) == (1, [0], 1)


def test_pillow_bomb_error_is_an_image_error(scratch):
    from edgetl_runtime.errors import ImageError

    path = write_png(scratch / "big.png", (64, 64))
    Image.MAX_IMAGE_PIXELS = 1000  # 4096 > 2 x 1000: Pillow itself raises DecompressionBombError
    with pytest.raises(ImageError, match="--max-pixels"):
        load_image(path)


def test_sixteen_bit_png_is_scaled_identically_in_training_and_on_device(scratch):
    ramp = (np.arange(36 * 40).reshape(36, 40) * 45).astype(np.uint16)  # 0 .. 64755
    path = scratch / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    device = np.asarray(load_image(path))
    training = np.asarray(decode_for_training(path, 36, SMALL.interpolation))
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.array_equal(device[..., 0], expected) and np.array_equal(device, training)
    assert device.mean() < 200  # not the 99% white of a clipping convert


def test_exif_orientation_is_applied_identically(scratch):
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 24:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = scratch / "rotated.jpg"
    image.save(path, "JPEG", exif=exif, quality=95)
    device = np.asarray(load_image(path))
    training = np.asarray(decode_for_training(path, 32, SMALL.interpolation))
    assert device.shape == (48, 32, 3)  # portrait once the orientation is applied
    assert device[2, 16, 0] > 200 and device[-3, 16, 2] > 200  # red on top, blue below
    assert np.array_equal(device, training)
    assert np.array_equal(np.asarray(load_image(Image.open(path))), device)


# --- malformed model metadata: one line naming the key, no silent defaults ---------------------


def _meta(**changes) -> dict[str, str]:
    info = ModelInfo(labels=("a", "b"), preprocess=SMALL, backbone="x")
    return {**info.to_metadata(), **{f"edgetl.{k}": v for k, v in changes.items()}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"preprocess": "{not json"}, "edgetl.preprocess is not valid JSON"),
        (
            {"preprocess": json.dumps({**SMALL.to_dict(), "crop": "x"})},
            "preprocess 'crop' must be an integer",
        ),
        (
            {"preprocess": json.dumps({**SMALL.to_dict(), "mean": [0.5, 0.5]})},
            "preprocess 'mean' must be a list of 3",
        ),
        ({"preprocess": json.dumps([1, 2, 3])}, "preprocess must be a table"),
        ({"preprocess": json.dumps({"crop": 32})}, "preprocess lacks key(s)"),
        ({"labels": "a,b"}, "edgetl.labels is not valid JSON"),
        ({"labels": json.dumps({"a": 1})}, "edgetl.labels must be a JSON list"),
        ({"quantization": "[]"}, "edgetl.quantization must be a JSON object"),
    ],
)
def test_malformed_model_metadata_names_the_key(changes, message):
    with pytest.raises(BundleError) as error:
        ModelInfo.from_metadata(_meta(**changes), source="m.onnx")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("m.onnx: metadata edgetl.")


def test_malformed_metadata_in_an_onnx_file_stops_quantize_in_one_line(tiny_run, digits_dir, scratch):
    import onnx

    model = onnx.load(str(tiny_run / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "edgetl.preprocess":
            prop.value = json.dumps({**json.loads(prop.value), "crop": "x"})
    bad = scratch / "model.onnx"
    onnx.save(model, str(bad))
    out = scratch / "model.int8.onnx"
    args = ["quantize", str(bad), "--out", str(out), "--calibration", str(digits_dir / "val"), "--json"]
    outcome = invoke("edgetl", args)
    assert_one_line(outcome, EXIT_ERROR, "metadata edgetl.preprocess: preprocess 'crop' must be an integer")
    assert not out.exists()
