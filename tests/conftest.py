"""Shared fixtures: tiny real datasets (32-64 px) so the whole suite runs on 2 CPU cores in minutes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from edgetl.data.samples import write_digits_imagefolder

torch.set_num_threads(2)


def _built(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """A session fixture's files, built in pytest's temp folder; with EDGETL_TEST_FIXTURES set, built
    once under that folder and reused by every later pytest process (benchmarks/mutation.py starts
    one per mutant, and the tiny runs take minutes to make). Built in place, as the runs record
    absolute paths; `.built` marks a finished build."""
    shared = os.environ.get("EDGETL_TEST_FIXTURES")
    if not shared:
        return build(tmp_path_factory.mktemp(name))
    folder = Path(shared) / name
    marker = folder / ".built"
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        marker.write_text(str(build(folder).relative_to(folder)))
    return folder / marker.read_text()


@pytest.fixture(scope="session", autouse=True)
def bundle_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """The runtime's extracted-archive cache in pytest's temp folder, for every test and every process
    it starts: never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("bundle-cache")
    before = os.environ.get("EDGETL_RUNTIME_CACHE")
    os.environ["EDGETL_RUNTIME_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["EDGETL_RUNTIME_CACHE"]
    else:
        os.environ["EDGETL_RUNTIME_CACHE"] = before


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """3 classes of real handwritten digits, 12 train + 4 val images each, 32 px."""
    return _built(
        tmp_path_factory,
        "data",
        lambda root: write_digits_imagefolder(
            root / "digits", size=32, classes=3, per_class=16, val_fraction=0.25
        ),
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_dir) -> Path:
    """A run folder with checkpoint, splits, model.onnx and model.int8.onnx (package/runtime tests)."""
    from tinyrun import make_run

    return _built(tmp_path_factory, "tiny", lambda root: make_run(root / "run", digits_dir))


@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> Path:
    from tinytext import write_tiny_bert

    return _built(tmp_path_factory, "bert", lambda root: write_tiny_bert(root / "tiny-bert"))


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, bert) -> Path:
    """A trained, exported, quantized and packaged tiny text run."""
    from tinytext import write_text_folder

    import edgetl

    def build(root: Path) -> Path:
        data = write_text_folder(root / "data", per_class=14)
        run = root / "run"
        edgetl.train(
            data, run, backbone="all-minilm-l6-v2", weights=str(bert), frozen_epochs=8, epochs=1, seed=0
        )
        edgetl.export(run)
        # a named method: INT8 of a model this small is barely faster than FP32 (about 0.9x), so auto
        # would ship FP32 on a quiet machine and INT8 on a lucky timing; tests/quantizer/test_text_*.py
        # run auto with the timings fixed
        edgetl.quantize(run, method="dynamic", allow_drop=True)
        edgetl.package(run, root / "bundle.tar.gz")
        return run

    return _built(tmp_path_factory, "textrun", build)


@pytest.fixture(scope="session")
def litert_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run also as LiteRT, by the CLI: `export --format litert` (onnx2tf in its own uv
    environment), `quantize --backend litert`; skipped where that environment cannot be made."""
    from click.testing import CliRunner
    from tinyrun import copy_exported_as

    from edgetl.cli import main
    from edgetl.exporter.litert import converter_reason

    reason = converter_reason()
    if reason:
        pytest.skip(reason)
    run = copy_exported_as(tiny_run, tmp_path_factory.mktemp("litert") / "run", "litert")
    quantized = CliRunner().invoke(
        main, ["quantize", str(run), "--backend", "litert", "--allow-drop", "--json"]
    )
    assert quantized.exit_code == 0, quantized.output
    return run
