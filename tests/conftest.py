"""Shared fixtures: tiny real datasets (32-64 px) so the whole suite runs on 2 CPU cores in minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgetl.data.samples import write_digits_imagefolder

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """3 classes of real handwritten digits, 12 train + 4 val images each, 32 px."""
    return write_digits_imagefolder(
        tmp_path_factory.mktemp("data") / "digits", size=32, classes=3, per_class=16, val_fraction=0.25
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_dir) -> Path:
    """A run folder with checkpoint, splits, model.onnx and model.int8.onnx (package/runtime tests)."""
    from tinyrun import make_run

    return make_run(tmp_path_factory.mktemp("tiny") / "run", digits_dir)
