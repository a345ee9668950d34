"""Hostile outputs: every command's output path that is one of its inputs, inside its image folder,
another output, or an artifact of another kind is refused before any work (exit 1, one line), and the
file it named is left byte for byte as it was. Each row once replaced the user's file with exit 0.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from cliprobe import assert_json_error, assert_one_line, invoke

from edgetl.runfolder.folder import RunFolder
from edgetl_runtime.errors import EXIT_ERROR


@dataclass(frozen=True)
class Setup:
    run: Path  # a copy of the tiny run
    data: Path  # the digits ImageFolder (train/, val/)
    tmp: Path

    @property
    def model(self) -> Path:
        """An FP32 model file outside any run folder."""
        path = self.tmp / "M.onnx"
        if not path.exists():
            shutil.copyfile(self.run / "model.onnx", path)
        return path

    @property
    def foreign(self) -> Path:
        """model.onnx without edgetl metadata: a model from elsewhere, for `describe`."""
        path = self.tmp / "clf.onnx"
        if not path.exists():
            proto = onnx.load(str(self.run / "model.onnx"))
            del proto.metadata_props[:]
            onnx.save(proto, str(path))
        return path

    @property
    def key(self) -> Path:
        path = self.tmp / "release.key"
        if not path.exists():
            from edgetl_runtime.signing import generate_keypair

            generate_keypair(path)
        return path

    @property
    def labels(self) -> Path:
        path = self.tmp / "L.txt"
        if not path.exists():
            path.write_text("0\n1\n2\n")
        return path


def digest(path: Path) -> str:
    if path.is_dir():
        return ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# row -> (args, the path that must survive unchanged, message)
Row = tuple[Callable[[Setup], list[str]], Callable[[Setup], Path], str]
ROWS: dict[str, Row] = {
    "quantize --manifest onto its input model": (
        lambda s: ["quantize", str(s.model), "--calibration", str(s.data / "train"),
                   "--out", str(s.tmp / "Q.onnx"), "--manifest", str(s.model)],
        lambda s: s.model,
        "--manifest",
    ),
    "quantize RUN --manifest onto the checkpoint": (
        lambda s: ["quantize", str(s.run), "--manifest", str(s.run / "best.safetensors")],
        lambda s: s.run / "best.safetensors",
        "holds a checkpoint, not a calibration manifest",
    ),
    "quantize --manifest same as --out": (
        lambda s: ["quantize", str(s.model), "--calibration", str(s.data / "train"),
                   "--out", str(s.tmp / "Q.onnx"), "--manifest", str(s.tmp / "Q.onnx")],
        lambda s: s.model,
        "is also --out",
    ),
    "quantize --manifest inside the calibration images": (
        lambda s: ["quantize", str(s.model), "--calibration", str(s.data / "train"),
                   "--out", str(s.tmp / "Q.onnx"), "--manifest", str(s.data / "train" / "0" / "m.json")],
        lambda s: s.data / "train" / "0",
        "inside the image folder",
    ),
    "report --out onto the checkpoint": (
        lambda s: ["report", str(s.run), "--out", str(s.run / "best.safetensors")],
        lambda s: s.run / "best.safetensors",
        "holds a checkpoint, not a run report",
    ),
    "report --out onto a checkpoint outside a run": (
        lambda s: ["report", str(s.run), "--out", str(shutil.copyfile(s.run / "best.safetensors", s.tmp / "c.bin"))],
        lambda s: s.tmp / "c.bin",
        "holds a checkpoint, not a run report",
    ),
    "report --out onto the INT8 model": (
        lambda s: ["report", str(s.run), "--out", str(s.run / "model.int8.onnx")],
        lambda s: s.run / "model.int8.onnx",
        "INT8 model",
    ),
    "benchmark --plot onto its model": (
        lambda s: ["benchmark", str(s.model), "--backend", "onnxruntime-cpu", "--plot", str(s.model)],
        lambda s: s.model,
        "own input",
    ),
    "benchmark RUN --plot onto the run's INT8 model": (
        lambda s: ["benchmark", str(s.run), "--backend", "onnxruntime-cpu", "--plot", str(s.run / "model.int8.onnx")],
        lambda s: s.run / "model.int8.onnx",
        "holds a INT8 model, not a plot image",
    ),
    "benchmark --plot inside --images": (
        lambda s: ["benchmark", str(s.model), "--backend", "onnxruntime-cpu", "--images", str(s.data / "val"),
                   "--plot", str(s.data / "val" / "0" / "latency.png")],
        lambda s: s.data / "val" / "0",
        "inside the image folder",
    ),
    "describe --out onto its labels file": (
        lambda s: ["describe", str(s.foreign), "--labels", str(s.labels), "--preprocess", "imagenet",
                   "--out", str(s.labels)],
        lambda s: s.labels,
        "own input",
    ),
    "describe --out onto its model": (
        lambda s: ["describe", str(s.foreign), "--labels", str(s.labels), "--preprocess", "imagenet",
                   "--out", str(s.foreign)],
        lambda s: s.foreign,
        "own input",
    ),
    "export --out onto the INT8 model": (
        lambda s: ["export", str(s.run), "--out", str(s.run / "model.int8.onnx")],
        lambda s: s.run / "model.int8.onnx",
        "holds a INT8 model",
    ),
    "export --out inside --check-images": (
        lambda s: ["export", str(s.run), "--check-images", str(s.data / "val"),
                   "--out", str(s.data / "val" / "m.onnx")],
        lambda s: s.data / "val",
        "inside the image folder",
    ),
    "package --out onto the signing key": (
        lambda s: ["package", str(s.run), "--out", str(s.key), "--sign", str(s.key)],
        lambda s: s.key,
        "own input",
    ),
    "package --out a run file name": (
        lambda s: ["package", str(s.run), "--out", str(s.run / "report.html")],
        lambda s: s.run,
        "holds the run's run report",
    ),
    "train --out inside --data": (
        lambda s: ["train", "--data", str(s.data), "--out", str(s.data / "train" / "0"), "--device", "cpu"],
        lambda s: s.data / "train" / "0",
        "is inside --data",
    ),
    "train --data inside --out": (
        lambda s: ["train", "--data", str(shutil.copytree(s.data, s.tmp / "runx" / "data")),
                   "--out", str(s.tmp / "runx"), "--device", "cpu", "--overwrite"],
        lambda s: s.tmp / "runx",
        "is inside --out",
    ),
}  # fmt: skip


@pytest.fixture
def setup(tiny_run, digits_dir, tmp_path) -> Setup:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    data = Path(shutil.copytree(digits_dir, tmp_path / "data"))
    return Setup(run, data, tmp_path)


@pytest.mark.parametrize("row", list(ROWS))
def test_an_output_is_never_an_input_or_another_artifact(row, setup):
    args, victim, message = ROWS[row]
    argv = args(setup)
    before = digest(victim(setup))
    outcome = invoke("edgetl", [*argv, "--json"])
    assert_one_line(outcome, EXIT_ERROR, message)
    assert_json_error(outcome, message)
    assert digest(victim(setup)) == before
    assert not (setup.tmp / "Q.onnx").exists()


def test_overwrite_never_removes_a_users_own_files(tmp_path, digits_dir):
    """A folder with the user's model.onnx and report.html but no run: train refuses it, with or
    without --overwrite, and `clear` removes nothing from it."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.onnx").write_text("my model")
    (folder / "report.html").write_text("<p>my notes</p>")
    for extra in ([], ["--overwrite"]):
        outcome = invoke(
            "edgetl",
            ["train", "--data", str(digits_dir), "--out", str(folder), "--device", "cpu", "--json", *extra],
        )
        assert_one_line(outcome, EXIT_ERROR, "but no edgetl run; --overwrite removes only what a run wrote")
        assert_json_error(outcome, "no edgetl run", option="--out")
    assert RunFolder(folder).clear() == []
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "report.html"]


def test_overwrite_removes_an_old_bundle_with_the_run(tiny_run, tmp_path):
    """--overwrite clears the run's bundle.tar.gz (and bundle/ folder) too: no bundle of the old
    training survives next to the new one."""
    from edgetl.bundler.package import build_bundle

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    build_bundle(run, run / "bundle.tar.gz")
    build_bundle(run, run / "bundle")
    (run / "bundle-notes.txt").write_text("mine")
    removed = RunFolder(run).clear()
    assert {"bundle.tar.gz", "bundle", "best.safetensors", "splits.json"} <= set(removed)
    assert sorted(p.name for p in run.iterdir() if p.name != ".edgetl.lock") == ["bundle-notes.txt"]
