"""ImageFolder loading: splits, skipped corrupt files, and one-line errors for broken layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from badfiles import write_corrupt_image

from edgetl.data.imagefolder import eval_tensor, load_imagefolder, scan_imagefolder
from edgetl.errors import DataError
from edgetl_runtime.preprocess import PreprocessSpec, preprocess_image

SPEC = PreprocessSpec(crop=32, resize=36, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture
def data(digits_dir, tmp_path):
    return shutil.copytree(digits_dir, tmp_path / "data")


def test_corrupt_images_are_skipped_and_counted(data):
    write_corrupt_image(data / "train" / "1" / "broken.png")
    write_corrupt_image(data / "val" / "2" / "broken.jpg")
    loaded = load_imagefolder(data, SPEC)
    assert loaded.splits.skipped == 2
    assert sorted(Path(p).name for p in loaded.skipped) == ["broken.jpg", "broken.png"]
    all_paths = [p for p, _ in loaded.splits.train + loaded.splits.val]
    assert not any("broken" in p for p in all_paths)
    assert len(loaded.train_images) == 36 and len(loaded.val_pixels) == 12


def test_validation_pixels_match_the_runtime_preprocessing(data):
    loaded = load_imagefolder(data, SPEC)
    path, _ = loaded.splits.val[5]
    expected = preprocess_image(path, SPEC)
    assert np.array_equal(eval_tensor(loaded.val_pixels[5:6], SPEC)[0].numpy(), expected)
    assert min(loaded.train_images[0].size) == SPEC.resize


def test_split_without_val_folder_is_stratified_and_seeded(data):
    shutil.rmtree(data / "val")
    labels, train, val = scan_imagefolder(data, val_fraction=0.25, seed=3)
    assert labels == ("0", "1", "2")
    assert sorted({y for _, y in val}) == [0, 1, 2]
    assert len(val) == 9 and len(train) == 27
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert scan_imagefolder(data, val_fraction=0.25, seed=3)[2] == val
    assert scan_imagefolder(data, val_fraction=0.25, seed=4)[2] != val


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: shutil.rmtree(d), r"no such folder"),
        (lambda d: shutil.rmtree(d / "train"), r"no train/ folder"),
        (
            lambda d: [shutil.rmtree(d / s / c) for s in ("train", "val") for c in ("1", "2")],
            r"need at least 2",
        ),
        (
            lambda d: [p.unlink() for p in (d / "train" / "1").iterdir()],
            r"train/1: class folder has no images",
        ),
        (lambda d: shutil.rmtree(d / "val" / "2"), r"class folders differ from train/ \(missing: 2"),
        (
            lambda d: [write_corrupt_image(p) for p in (d / "val" / "0").iterdir()],
            r"val/0: no readable images",
        ),
    ],
    ids=["missing", "no-train", "one-class", "empty-class", "val-mismatch", "all-corrupt"],
)
def test_data_errors_are_one_clear_line(data, breakage, message):
    breakage(data)
    with pytest.raises(DataError, match=message) as info:
        load_imagefolder(data, SPEC)
    assert "\n" not in str(info.value)
