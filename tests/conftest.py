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


@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> Path:
    from tinytext import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, bert) -> Path:
    """A trained, exported, quantized and packaged tiny text run."""
    from tinytext import write_text_folder

    import edgetl

    root = tmp_path_factory.mktemp("textrun")
    data = write_text_folder(root / "data", per_class=14)
    run = root / "run"
    edgetl.train(data, run, backbone="all-minilm-l6-v2", weights=str(bert), frozen_epochs=8, epochs=1, seed=0)
    edgetl.export(run)
    edgetl.quantize(run, allow_drop=True)
    edgetl.package(run, root / "bundle.tar.gz")
    return run
